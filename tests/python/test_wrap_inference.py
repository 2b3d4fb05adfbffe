"""memscale.wrap(..., training=False) pages weights through the inference pager."""
import torch

import memscale
from memscale.testing import models


def test_inference_wrap_pages_weights_with_identical_outputs(tmp_path):
    model = models.build("gpt", seed=0, n_layers=4)
    model.eval()
    ids = models.example_inputs("gpt", model, batch=2, labels=False)[0]
    with torch.no_grad():
        expected = model(ids)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    block = sum(p.numel() * p.element_size() for p in model.blocks[0].parameters())
    cfg = memscale.Config(memory_budget="256MiB", offload={"policy": "budget", "ram_bytes": weights - block,
                                                          "disk_dir": str(tmp_path)})
    assert memscale.wrap(model, cfg, example_inputs=(ids,), training=False) is model
    with torch.no_grad():
        got = model(ids)
    assert torch.equal(got, expected)
    assert any(tmp_path.rglob("*")), "evicted weights were written to the disk tier"
    memscale.unwrap(model)
    assert memscale.plan_of(model) is None
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
    assert not any(f.is_file() for f in tmp_path.rglob("*")), "unwrap removes the offload files"
