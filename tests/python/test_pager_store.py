"""TorchPagerStorage.store (include/memscale/torch/pager_storage.hpp): the training pager
writes a layer's updated weights over its home copy after the optimizer step."""
from __future__ import annotations

import pytest
import torch

import memscale
from memscale import _C


def test_storage_store_writes_the_updated_weights_home(tmp_path):
    """TorchPagerStorage.store: a resident layer's new values replace its home copy (the
    file's data section in place), so the next load reads them; refused while evicted."""
    layer = torch.nn.Linear(8, 8)
    storage = _C.TorchPagerStorage(str(tmp_path))
    index = storage.add_layer("l", ["weight", "bias"], [layer.weight.detach(), layer.bias.detach()], "disk")
    storage.write_home_copies([False])
    with torch.no_grad():
        layer.weight.add_(1.0)
    updated = layer.weight.detach().clone()
    storage.store(index)
    storage.evict(index)
    with pytest.raises(memscale.MemScaleError, match="not resident"):
        storage.store(index)
    storage.load(index)
    assert torch.equal(layer.weight.detach(), updated)
    storage.restore_all()
    assert not list(tmp_path.iterdir())
