"""The Hugging Face Trainer callback: three steps within a budget, the losses
of the run without it, the plan memscale.wrap makes, and the model unwrapped afterwards."""
import pytest
import torch

pytest.importorskip("transformers")
from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402

import integration_testlib as lib  # noqa: E402
from memscale.integrations.transformers import MemScaleCallback  # noqa: E402


class _Meter(TrainerCallback):
    """StepMeter driven by the Trainer's step events."""

    def __init__(self, meter: lib.StepMeter) -> None:
        self.meter = meter

    def on_train_begin(self, args, state, control, **kwargs):
        self.meter.start()

    def on_step_begin(self, args, state, control, **kwargs):
        self.meter.step_begin()

    def on_step_end(self, args, state, control, **kwargs):
        self.meter.step_end()

    def on_train_end(self, args, state, control, **kwargs):
        self.meter.stop()


def _train(tmp_path, callback=None):
    torch.manual_seed(lib.SEED)
    model = lib.llama()
    patched = {name for name, m in model.named_modules() if "forward" in vars(m)}
    meter = lib.StepMeter(model)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=lib.STEPS, per_device_train_batch_size=lib.BATCH,
                             learning_rate=1e-3, save_strategy="no", logging_strategy="no", report_to="none",
                             use_cpu=True, seed=lib.SEED, dataloader_num_workers=0, disable_tqdm=True)
    callbacks = ([callback] if callback else []) + [_Meter(meter)]  # the meter starts after the wrap
    Trainer(model=model, args=args, train_dataset=lib.samples(), callbacks=callbacks).train()
    return model, meter, patched


def _trainers_adamw(params):
    return torch.optim.AdamW(params, fused=True)  # the Trainer's default optim on torch >= 2.8: adamw_torch_fused


def _trainers_llama():
    model = lib.llama()
    model.config.use_cache = False  # what Trainer(model=...) sets on the model it trains
    return model


def test_trainer_callback_fits_the_budget_with_the_same_run(tmp_path):
    plain, plain_meter, _ = _train(tmp_path / "plain")
    budget = lib.budget_for(max(plain_meter.peaks), _trainers_adamw, _trainers_llama)
    callback = MemScaleCallback(memory_budget=budget)
    wrapped, meter, patched = _train(tmp_path / "wrapped", callback)

    reference = lib.reference_plan(budget, _trainers_adamw, _trainers_llama)
    lib.assert_fitted_run("trainer", callback.plan, reference, budget, meter, plain_meter)
    lib.assert_unwrapped(wrapped, patched)
