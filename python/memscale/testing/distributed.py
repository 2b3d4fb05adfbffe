"""Run a function in N gloo processes on this machine and collect what each rank returns.

For tests and benchmarks of memscale under torch.distributed: ``run_ranks(fn, world, args)``
spawns ``world`` processes with ``torch.multiprocessing``, each initialises a gloo process
group, calls ``fn(rank, world, *args)`` and writes its (picklable) result to a file in a
temporary directory (a pipe back to the parent fills and deadlocks once results are large);
the parent joins with a deadline, kills the ranks past it and raises naming what failed.

Example:
    >>> from memscale.testing.distributed import gloo_available
    >>> isinstance(gloo_available(), bool)
    True
"""
from __future__ import annotations

import contextlib
import os
import pickle
import socket
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

import torch


def gloo_available() -> bool:
    """torch.distributed is built with the gloo backend."""
    return torch.distributed.is_available() and torch.distributed.is_gloo_available()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def process_group_of_one() -> Iterator[None]:
    """A gloo process group of this process alone (rank 0 of 1), destroyed on exit: enough to
    build FSDP2 / DDP models in a test without spawning."""
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                                         world_size=1)
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


def _rank_main(rank: int, world: int, port: int, out: str, fn: Callable[..., Any], args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)  # ranks share the machine's cores
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result: Any = ("ok", fn(rank, world, *args))
    except BaseException as error:  # the parent re-raises it with the rank named
        result = ("error", f"{type(error).__name__}: {error}\n{traceback.format_exc()}")
    with open(Path(out) / f"rank{rank}.pkl", "wb") as f:
        pickle.dump(result, f)
    torch.distributed.destroy_process_group()


def run_ranks(fn: Callable[..., Any], world: int, args: tuple = (), timeout: float = 120.0) -> list[Any]:
    """``[fn(rank, world, *args) for each rank]``, each in its own gloo process.

    Raises:
        RuntimeError: a rank raised (its traceback is in the message), died, or the ranks
            did not finish within ``timeout`` seconds (they are killed).
    """
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="memscale-ranks-") as out:
        context = mp.start_processes(_rank_main, args=(world, free_port(), out, fn, args), nprocs=world,
                                     join=False, start_method="spawn")
        deadline = time.monotonic() + timeout
        try:
            while not context.join(timeout=max(0.1, min(1.0, deadline - time.monotonic()))):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"run_ranks: {world} ranks did not finish within {timeout:.0f} s")
        finally:
            for p in context.processes:
                if p.is_alive():
                    p.kill()
        results = []
        for rank in range(world):
            path = Path(out) / f"rank{rank}.pkl"
            if not path.exists():
                raise RuntimeError(f"run_ranks: rank {rank} of {world} wrote no result")
            status, value = pickle.loads(path.read_bytes())
            if status != "ok":
                raise RuntimeError(f"run_ranks: rank {rank} of {world} raised {value}")
            results.append(value)
        return results
