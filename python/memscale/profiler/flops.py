"""Forward FLOPs of one aten op, from shapes (works on FakeTensors)."""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import flop_registry, sdpa_flop_count

aten = torch.ops.aten

# CPU's fused attention kernel is not in torch's registry; its cost is the two matmuls.
_EXTRA = {aten._scaled_dot_product_flash_attention_for_cpu}


def op_flops(func: Any, args: tuple, kwargs: dict, out: Any) -> int:
    """FLOPs of ``func`` (matmuls, convolutions, attention); 0 for ops without a formula."""
    packet = getattr(func, "_overloadpacket", None)
    formula = flop_registry.get(packet)
    if formula is not None:
        return int(formula(*args, **kwargs, out_val=out))
    if packet in _EXTRA:
        q, k, v = args[:3]
        return int(sdpa_flop_count(tuple(q.shape), tuple(k.shape), tuple(v.shape)))
    return 0
