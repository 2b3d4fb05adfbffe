"""The CUDA paths, run only where torch sees a GPU: checkpoint and host-tier activation
offload (pinned memory, side stream) against the unwrapped model, wrap() inside a budget
measured by the CUDA allocator, tiled linear-cross-entropy, and the weight pager with
pinned-host and disk homes for device-resident layers."""
from __future__ import annotations

import pytest
import torch

import memscale
from executor_testlib import assert_same_step, build, checkpointable, layer, layer_names, twin
from memscale.testing import models
from memscale.bench.device import fresh_device_state
from memscale.runtime.training import apply_plan

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# cuBLAS may pick another reduction split for a recomputed matmul than for the original
# only across shapes, never for the same shape on the same stream: fp32 results stay close.
RTOL = 1e-5


def _on_cuda(name: str, dropout: float = 0.1):
    model, inputs = build(name, dropout=dropout)
    model = model.cuda()
    inputs = tuple(x.cuda() if isinstance(x, torch.Tensor) else x for x in inputs)
    return model, inputs


@pytest.mark.parametrize("name", ["gpt", "vit", "resnet", "t5"])
def test_checkpoint_every_layer_matches_on_cuda(name: str) -> None:
    model, inputs = _on_cuda(name)
    ref = twin(model)
    plan = {"layers": [layer(n, ["checkpoint"]) for n in checkpointable(model, layer_names(model))]}
    with apply_plan(model, plan):
        assert_same_step(model, ref, inputs, rtol=RTOL)
        assert_same_step(model, ref, inputs, rtol=RTOL)


@pytest.mark.parametrize("name", ["gpt", "vit", "t5", "llama"])
def test_host_offload_every_layer_matches_on_cuda(name: str) -> None:
    model, inputs = _on_cuda(name)
    ref = twin(model)
    plan = {"layers": [layer(n, ["offload_activations"], tier="host") for n in layer_names(model)]}
    with apply_plan(model, plan, min_offload_bytes=0) as handle:
        assert_same_step(model, ref, inputs, rtol=RTOL)
        assert handle.store is not None and handle.store._streams, "the side stream was used"


def _gpt_step_peak(plan_layers: list | None, batch: int = 8, seq: int = 256) -> tuple[int, float]:
    """CUDA allocator peak of one forward+backward (model and inputs allocated before)."""
    model = models.build("gpt", seed=0, d_model=256, n_layers=6, n_heads=8, d_ff=1024, max_seq=seq,
                         vocab=4096).cuda().train()
    ids, labels = (t.cuda() for t in models.example_inputs("gpt", model, batch=batch, seq=seq))
    handle = apply_plan(model, {"layers": plan_layers}, min_offload_bytes=0) if plan_layers else None
    try:
        torch.cuda.synchronize()
        with memscale.track_memory("cuda") as tracker:
            loss = model(ids, labels=labels)
            loss.backward()
        return tracker.peak_bytes, float(loss.detach())
    finally:
        if handle is not None:
            handle.remove()


def test_host_offload_lowers_the_measured_cuda_peak() -> None:
    base_peak, base_loss = _gpt_step_peak(None)
    blocks = [layer(f"blocks.{i}", ["offload_activations"], tier="host") for i in range(6)]
    offload_peak, offload_loss = _gpt_step_peak(blocks)
    assert offload_loss == pytest.approx(base_loss, rel=1e-6)
    # Six blocks' saved activations leave the device; the head's and one block's stay.
    assert offload_peak < 0.75 * base_peak, (offload_peak, base_peak)


def test_wrap_fits_a_cuda_budget_measured_by_the_allocator() -> None:
    def train(budget: int | None) -> tuple[int, list[float]]:
        fresh_device_state(torch.device("cuda"))  # both runs pay the BLAS workspace
        with memscale.track_memory("cuda") as tracker:
            model = models.build("gpt", seed=0, d_model=256, n_layers=6, n_heads=8, d_ff=1024, max_seq=256,
                                 vocab=8192).cuda()
            ids, labels = (t.cuda() for t in models.example_inputs("gpt", model, batch=8, seq=256))
            if budget is not None:
                memscale.wrap(model, memscale.Config(memory_budget=budget), example_inputs=(ids, labels),
                              training=True, optimizer="adamw")
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            losses = []
            for _ in range(3):
                loss = model(ids, labels=labels)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
            peak = tracker.peak_bytes
            if budget is not None:
                memscale.unwrap(model)
        return peak, losses

    base_peak, base_losses = train(None)
    budget = int(0.6 * base_peak)
    try:
        peak, losses = train(budget)
    except memscale.InfeasibleBudgetError as refusal:
        budget = refusal.min_budget_bytes
        peak, losses = train(budget)
    assert peak <= 1.05 * budget, (peak, budget, base_peak)
    assert losses == pytest.approx(base_losses, rel=1e-4)


def test_detected_blas_workspace_is_what_a_first_product_allocates() -> None:
    from memscale.hardware import blas_workspace_bytes

    workspace = blas_workspace_bytes(0)
    assert workspace > 0
    fresh_device_state(torch.device("cuda"))
    with memscale.track_memory("cuda") as tracker:
        a = torch.ones(64, 64, device="cuda")
        outs = [torch.nn.functional.linear(a, a, torch.ones(64, device="cuda")), a @ a, torch.bmm(a[None], a[None])]
        del outs, a
    assert tracker.current_bytes == workspace
    assert memscale.detect_hardware().devices[0].workspace_bytes == workspace


def test_linear_cross_entropy_on_cuda_matches_and_saves_memory() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(2048, 256, device="cuda", requires_grad=True)
    weight = (torch.randn(32_000, 256, device="cuda") / 16).requires_grad_()
    targets = torch.randint(0, 32_000, (2048,), device="cuda")

    def run(fn) -> tuple[int, tuple[torch.Tensor, ...]]:
        torch.cuda.synchronize()
        with memscale.track_memory("cuda") as tracker:
            grads = torch.autograd.grad(fn(), [hidden, weight])
        return tracker.peak_bytes, grads

    plain_peak, plain = run(lambda: torch.nn.functional.cross_entropy(hidden @ weight.t(), targets))
    tiled_peak, tiled = run(lambda: memscale.nn.linear_cross_entropy(hidden, weight, targets, chunks=8))
    for a, b in zip(tiled, plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert tiled_peak < 0.5 * plain_peak, (tiled_peak, plain_peak)


@pytest.mark.parametrize("weights", [{"gpu": 0, "cpu": 100}, {"gpu": 0, "cpu": 50}])
def test_pager_with_device_layers_is_bit_identical(tmp_path, weights) -> None:
    from memscale.runtime.inference import generate, handle_of, unwrap_inference, wrap_for_inference
    from pager_models import build_gpt, prompt

    model = build_gpt(n_layers=6).cuda()
    ids = prompt(model, 2, 16).cuda()
    ref = model(ids)
    ref_gen = generate(model, ids, 5)
    cfg = memscale.Config(offload={"policy": "budget", "ram_bytes": "2.5MB", "disk_dir": str(tmp_path)},
                          tiers={"weights": weights})
    wrap_for_inference(model, cfg, (ids,))
    handle = handle_of(model)
    assert torch.equal(model(ids), ref)
    assert torch.equal(generate(model, ids, 5).tokens, ref_gen.tokens)
    stats = handle.stats()
    assert stats["evictions"] > 0
    assert stats["peak_resident_weight_bytes"] <= 2_500_000
    assert all(p.is_cuda for p in model.parameters())
    unwrap_inference(model)
    assert torch.equal(model(ids), ref)


def test_kv_cache_on_the_plans_host_and_disk_tiers_is_identical_on_cuda(tmp_path) -> None:
    from memscale.runtime.inference import generate, handle_of, unwrap_inference, wrap_for_inference
    from pager_models import build_gpt, prompt

    model = build_gpt(n_layers=6).cuda()
    ids = prompt(model, 2, 16).cuda()
    ref = generate(model, ids, 5, return_logits=True)
    cfg = memscale.Config(offload={"disk_dir": str(tmp_path)}, tiers={"kv_cache": {"gpu": 0, "cpu": 50}})
    wrap_for_inference(model, cfg, (torch.cat([ids, ids[:, :5]], dim=1),))
    planned = [layer.kv_tier for layer in handle_of(model).plan.layers if layer.kv_tier != "none"]
    assert sorted(planned) == ["disk"] * 3 + ["host"] * 3
    out = generate(model, ids, 5, return_logits=True)
    assert out.kv_layer_tiers == planned and out.kv_bytes["host"] > 0 and out.kv_bytes["disk"] > 0
    assert torch.equal(out.tokens, ref.tokens)
    assert all(torch.equal(a, b) for a, b in zip(out.logits, ref.logits))
    unwrap_inference(model)
