"""Reference model zoo (memscale.testing.models): builds, runs a training step, deterministic, validates input."""
import pytest
import torch

from memscale.testing import models

NAMES = sorted(models.MODELS)


@pytest.mark.parametrize("name", NAMES)
def test_training_step_and_logits(name: str) -> None:
    model = models.build(name)
    loss = model(*models.example_inputs(name, model, batch=2))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    logits = model(*models.example_inputs(name, model, batch=3, labels=False))
    assert logits.shape[0] == 3


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_from_seed(name: str) -> None:
    a, b, c = models.build(name, seed=3), models.build(name, seed=3), models.build(name, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    ia = models.example_inputs(name, a, seed=1)
    ib = models.example_inputs(name, a, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(ia, ib))


def test_build_does_not_touch_global_rng() -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    models.build("gpt")
    assert torch.equal(torch.rand(3), expected)


def test_overrides_and_errors() -> None:
    m = models.build("gpt", n_layers=2, d_model=64, n_heads=2)
    assert len(m.blocks) == 2 and m.config.d_model == 64
    with pytest.raises(TypeError, match="n_layerz"):
        models.build("gpt", n_layerz=2)
    with pytest.raises(ValueError, match="unknown_model"):
        models.build("unknown_model")
    with pytest.raises(ValueError, match="d_model"):
        models.build("gpt", d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="batch"):
        models.example_inputs("gpt", m, batch=0)


def test_llama_1b_preset_on_meta() -> None:
    with torch.device("meta"):
        m = models.build("llama", preset="1b")
    n = sum(p.numel() for p in m.parameters())
    assert 1.0e9 < n < 1.2e9
    assert all(p.is_meta for p in m.parameters())
