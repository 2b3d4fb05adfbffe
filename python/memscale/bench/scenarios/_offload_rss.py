"""The resident-set measurement of one offloaded-generation configuration, run in a process
of its own (``run_child``: forked, one per configuration, from a fresh interpreter that has
only imported the libraries) so that nothing another configuration allocated, imported or
left in the heap is counted.

In that process, in order:

1. warm-up: the model is built, generates once unwrapped (the reference tokens), and is
   deleted; the heap's free pages are returned (``malloc_trim``), so the baseline is as low
   as the process can be with the libraries loaded and their kernels' code paged in;
2. baseline: ``VmRSS`` of ``/proc/self/status`` (anonymous + file-backed + shared pages);
3. inside one ``track_memory`` session: the model is built again (same seed, same bytes)
   and wrapped with the budget; ``VmRSS`` after wrap; the kernel's peak (``VmHWM``) is
   reset (``/proc/self/clear_refs`` 5) and the tensor peak too; the model generates; the
   rise is ``VmHWM`` minus the baseline, beside the counted tensor peak.

Linux only (``/proc``).
"""
from __future__ import annotations

import gc
import tempfile
from typing import Any

import torch

_FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")


def proc_status() -> dict[str, int]:
    """The resident-set lines of ``/proc/self/status``, in bytes."""
    out: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in _FIELDS:
                out[key] = int(value.split()[0]) * 1024
    return out


def _malloc_trim() -> None:
    """glibc's ``malloc_trim(0)`` (what ``memscale.runtime.inference.heap`` calls), here
    without importing memscale before the baseline."""
    import ctypes

    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


def reset_peak_rss() -> None:
    """Make the kernel's resident-set peak (``VmHWM``) the current resident set (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def measure(family: str, size: str, fraction: float, page_cache: str, batch: int, prompt_len: int,
            new_tokens: int, threads: int) -> dict[str, Any]:
    from . import _hf_lm

    torch.set_num_threads(threads)
    model = _hf_lm.build(family, size)
    ids = _hf_lm.prompt(model, batch, prompt_len)
    ref = _hf_lm.generate(model, ids, new_tokens)
    weights = _hf_lm.weight_bytes(model)
    del model
    gc.collect()
    _malloc_trim()
    base = proc_status()
    budget = int(weights * fraction)
    # memscale's imports come after the baseline: what they hold counts in the rise.
    from memscale.memory import track_memory
    from memscale.runtime.inference import handle_of, unwrap_inference, wrap_for_inference

    from .offload_inference import engine_config

    with tempfile.TemporaryDirectory(prefix="memscale-rss-") as disk_dir, track_memory("cpu") as tracker:
        model = _hf_lm.build(family, size)
        wrap_for_inference(model, engine_config(budget, batch, prompt_len, disk_dir), (ref,),
                           drop_page_cache=page_cache == "drop")
        gc.collect()
        after_wrap = proc_status()
        tensors_after_wrap = tracker.current_bytes
        reset_peak_rss()
        tracker.reset_peak()
        out = _hf_lm.generate(model, ids, new_tokens)
        peak = proc_status()
        tensor_peak = tracker.peak_bytes
        policy = handle_of(model).policy
        unwrap_inference(model)  # its KV-cache files go before their directory does
        del model
        gc.collect()
    rise = peak["VmHWM"] - base["VmRSS"]
    return {
        "weight_bytes": weights, "budget_bytes": budget,
        "outputs_equal_unwrapped": bool(torch.equal(out, ref)),
        "policy": policy.policy, "ram_bytes": int(policy.ram_bytes),
        "baseline": base, "after_wrap": after_wrap, "after_generate": peak,
        "rss_after_wrap_rise_bytes": after_wrap["VmRSS"] - base["VmRSS"],
        "rss_peak_rise_bytes": rise,
        "anon_rise_bytes": peak["RssAnon"] - base["RssAnon"],
        "file_rise_bytes": peak["RssFile"] - base["RssFile"],
        "tensor_bytes_after_wrap": tensors_after_wrap,
        "tensor_peak_bytes": tensor_peak,
        "rss_above_tensors_after_wrap_bytes": after_wrap["VmRSS"] - base["VmRSS"] - tensors_after_wrap,
        "rss_above_tensor_peak_bytes": rise - tensor_peak,
    }


_CONTEXT: Any = None


def _context() -> Any:
    """The forkserver context: its server is a fresh interpreter that imports torch,
    transformers and memscale once and forks one process per configuration from that clean
    state, so each measurement starts as the first would (and the imports are paid once)."""
    global _CONTEXT
    if _CONTEXT is None:
        import multiprocessing

        _CONTEXT = multiprocessing.get_context("forkserver")
        # The model library only: whatever memscale imports happens after the baseline.
        _CONTEXT.set_forkserver_preload(["torch", "transformers", "transformers.models.llama.modeling_llama",
                                         "transformers.models.gpt2.modeling_gpt2",
                                         "transformers.models.qwen2.modeling_qwen2"])
    return _CONTEXT


def _child(conn: Any, args: tuple) -> None:
    try:
        conn.send(("ok", measure(*args)))
    except BaseException as error:  # noqa: BLE001 - reported to the parent, which raises
        import traceback

        conn.send(("error", f"{error!r}\n{traceback.format_exc()}"))
    finally:
        conn.close()


def run_child(family: str, size: str, fraction: float, page_cache: str, batch: int, prompt_len: int,
              new_tokens: int, threads: int, timeout_s: float = 900.0) -> dict[str, Any]:
    """``measure`` in a process of its own (see ``_context``); returns its result."""
    from ...errors import MemScaleError

    ctx = _context()
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(child, (family, size, fraction, page_cache, batch, prompt_len,
                                                       new_tokens, threads)))
    process.start()
    child.close()
    try:
        if not parent.poll(timeout_s):
            process.kill()
            raise MemScaleError(f"resident-set measurement of {family} at {fraction}: no result in {timeout_s} s")
        status, result = parent.recv()
    except EOFError:
        status, result = "error", "the measuring process died without a result"
    finally:
        process.join()
    if status != "ok":
        raise MemScaleError(f"resident-set measurement of {family} at {fraction} ({page_cache}) failed "
                            f"(exit {process.exitcode}):\n{result[-4000:]}")
    return result
