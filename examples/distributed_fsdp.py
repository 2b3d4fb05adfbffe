"""Train a small GPT under FSDP2 with memscale on CPU (gloo), one budget per rank.

    torchrun --nproc-per-node 2 examples/distributed_fsdp.py   # under torchrun
    python examples/distributed_fsdp.py                        # spawns 2 ranks itself

Each rank shards the blocks and then the root with ``fully_shard``, wraps the root with
memscale at 70% of its per-rank unoptimized peak and runs a few AdamW steps; rank 0 prints
the plan and each rank its measured peak against the budget. docs/distributed.md.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

import memscale
from memscale.testing import models


def train(rank: int, world: int) -> str:
    torch.manual_seed(0)
    with memscale.track_memory("cpu"):  # FSDP2 re-allocates its storages: count them from the start
        model = models.build("gpt", n_layers=4, d_model=64, d_ff=256, vocab=256, seed=0)
        ids, labels = models.example_inputs("gpt", model, batch=4 * world, seq=64, seed=1)
        batch = (ids.chunk(world)[rank].contiguous(), labels.chunk(world)[rank].contiguous())  # this rank's share
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        unoptimized = memscale.plan(memscale.profile(model, batch), mode="off",
                                    memory_budget=1 << 40).unoptimized_peak_bytes
        memscale.wrap(model, memory_budget=int(0.7 * unoptimized), example_inputs=batch, optimizer=opt)
        plan = memscale.plan_of(model)
        if rank == 0:
            print(plan.summary())
        for _ in range(3):
            with memscale.track_memory("cpu") as tracked:
                opt.zero_grad(set_to_none=True)
                loss = model(*batch)
                loss.backward()
                opt.step()
        return (f"rank {rank}: loss {loss.item():.4f}, step peak above the resident state "
                f"{tracked.peak_bytes / 2**20:.2f} MiB, budget {plan.budget_bytes / 2**20:.2f} MiB")


def main() -> None:
    if "RANK" in os.environ:  # under torchrun
        dist.init_process_group("gloo")
        print(train(dist.get_rank(), dist.get_world_size()))
        dist.destroy_process_group()
        return
    from memscale.testing.distributed import run_ranks

    for line in run_ranks(train, 2, timeout=300):
        print(line)


if __name__ == "__main__":
    main()
