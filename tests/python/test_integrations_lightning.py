"""The PyTorch Lightning callback: three steps within a budget, the losses of
the run without it, the plan memscale.wrap makes, and the model unwrapped afterwards."""
import pytest
import torch

pl = pytest.importorskip("pytorch_lightning")

import integration_testlib as lib  # noqa: E402
from memscale.integrations.lightning import MemScaleCallback  # noqa: E402


class _LlamaModule(pl.LightningModule):
    """A LightningModule holding a Hugging Face Llama as ``model``; the loss from labels."""

    def __init__(self) -> None:
        super().__init__()
        self.model = lib.llama()

    def training_step(self, batch, batch_idx):
        return self.model(**batch).loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


class _Meter(pl.Callback):
    """StepMeter driven by Lightning's batch events."""

    def __init__(self, meter: lib.StepMeter) -> None:
        self.meter = meter

    def on_fit_start(self, trainer, pl_module):
        self.meter.start()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.meter.step_begin()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.meter.step_end()

    def on_fit_end(self, trainer, pl_module):
        self.meter.stop()


def _adamw(params):
    return torch.optim.AdamW(params, lr=1e-3)


def _train(callback=None):
    pl.seed_everything(lib.SEED, verbose=False)
    module = _LlamaModule()
    patched = {name for name, m in module.model.named_modules() if "forward" in vars(m)}
    meter = lib.StepMeter(module.model)
    loader = torch.utils.data.DataLoader(lib.samples(), batch_size=lib.BATCH, shuffle=False)
    trainer = pl.Trainer(max_steps=lib.STEPS, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=([callback] if callback else []) + [_Meter(meter)])
    trainer.fit(module, loader)
    return module.model, meter, patched


def test_lightning_callback_fits_the_budget_with_the_same_run():
    plain, plain_meter, _ = _train()
    budget = lib.budget_for(max(plain_meter.peaks), _adamw)
    callback = MemScaleCallback(memory_budget=budget, example_inputs=lib.first_batch(), target="model")
    wrapped, meter, patched = _train(callback)

    lib.assert_fitted_run("lightning", callback.plan, lib.reference_plan(budget, _adamw), budget, meter, plain_meter)
    lib.assert_unwrapped(wrapped, patched)


def test_lightning_callback_names_a_missing_target():
    callback = MemScaleCallback(memory_budget="1GiB", example_inputs=lib.first_batch(), target="encoder")
    with pytest.raises(Exception, match="target='encoder'"):
        _train(callback)
