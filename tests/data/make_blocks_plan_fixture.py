#!/usr/bin/env python3
"""Writes tests/data/plans/python_gpt_blocks.json: a training plan the Python API makes
for the GPT of examples/cpp/tiny_gpt.hpp (the same module names and shapes, written in
PyTorch), which the C++ test test_blocks_json.cpp applies to the libtorch model.

Run from the repository root: ``PYTHONPATH=python python3 tests/data/make_blocks_plan_fixture.py``.
Only the blocks may carry techniques (the C++ runtime applies plans to memscale::Blocks),
so the layers outside them are switched off; the budget is 85% of the unoptimized peak so
that the engine checkpoints some blocks and not others.
"""
import json
import math
import pathlib

import torch
from torch import nn

import memscale

OUT = pathlib.Path(__file__).parent / "plans" / "python_gpt_blocks.json"
HARDWARE = pathlib.Path(__file__).parent / "hardware" / "cpu_24gib.json"


class Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.qkv, self.proj = nn.LayerNorm(width), nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.ln2, self.fc1, self.fc2 = nn.LayerNorm(width), nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x):
        b, t, c = x.shape
        d = c // self.heads
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d).permute(2, 0, 3, 1, 4)
        future = torch.ones(t, t, dtype=torch.bool).triu(1)
        attention = torch.softmax((q @ k.transpose(-2, -1) / math.sqrt(d)).masked_fill(future, -math.inf), -1)
        h = x + self.proj((attention @ v).transpose(1, 2).reshape(b, t, c))
        return h + self.fc2(nn.functional.gelu(self.fc1(self.ln2(h))))


class Gpt(nn.Module):
    def __init__(self, vocab=128, max_seq=64, width=64, heads=4, blocks=3):
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocab, width), nn.Embedding(max_seq, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(blocks))
        self.ln_f, self.head = nn.LayerNorm(width), nn.Linear(width, vocab, bias=False)

    def forward(self, ids):
        x = self.tokens(ids) + self.positions(torch.arange(ids.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def main() -> None:
    torch.manual_seed(0)
    model = Gpt()
    ids = torch.randint(128, (4, 32))
    graph = memscale.profile(model, ids, training=True, optimizer="adam")
    off = {"checkpoint": "off", "tiling": "off", "offload_activations": "off", "offload_weights": "off"}
    base = {"techniques": {"offload_activations": "off", "offload_weights": "off", "tiling": "off"},
            "layer_overrides": {name: off for name in ("tokens", "positions", "ln_f", "head")}, "force_optimize": True}
    hardware = memscale.Hardware.from_json(HARDWARE.read_text())
    unoptimized = memscale.plan(graph, memscale.Config(**{**base, "memory_budget": "1GiB"}),
                                hardware=hardware).unoptimized_peak_bytes
    plan = memscale.plan(graph, memscale.Config(**{**base, "memory_budget": int(unoptimized * 0.85)}),
                         hardware=hardware)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(json.loads(plan.to_json()), indent=2, sort_keys=True) + "\n")
    print(OUT, [(layer.name, list(layer.techniques)) for layer in plan.layers])


if __name__ == "__main__":
    main()
