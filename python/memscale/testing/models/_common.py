"""Helpers shared by the reference models: seeded construction and input makers."""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator, TypeVar

import torch

C = TypeVar("C")


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator for the duration of a model's construction.

    The global RNG state is restored afterwards so that building a model never
    perturbs the caller's random stream (``fork_rng`` saves and restores it).
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def apply_overrides(config: C, overrides: dict[str, Any]) -> C:
    """Return ``config`` with ``overrides`` applied; unknown keys are an error naming them."""
    fields = {f.name for f in dataclasses.fields(config)}  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(
            f"unknown option(s) {unknown} for {type(config).__name__}; allowed: {sorted(fields)}"
        )
    return dataclasses.replace(config, **overrides)  # type: ignore[type-var]


def check_positive(name: str, value: int) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a positive int."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def input_generator(seed: int) -> torch.Generator:
    """A CPU generator for example inputs, independent of the global RNG."""
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


def randint(high: int, shape: tuple[int, ...], seed: int, device: torch.device | str | None) -> torch.Tensor:
    """Random token ids in ``[0, high)`` drawn on CPU (deterministic), then moved to ``device``."""
    t = torch.randint(0, high, shape, generator=input_generator(seed), dtype=torch.long)
    return t if device is None else t.to(device)


def randn(shape: tuple[int, ...], seed: int, device: torch.device | str | None,
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard-normal tensor drawn on CPU (deterministic), then moved to ``device``."""
    t = torch.randn(shape, generator=input_generator(seed), dtype=dtype)
    return t if device is None else t.to(device)


def token_inputs(vocab: int, batch: int, seq: int, labels: bool, seed: int,
                 device: torch.device | str | None) -> tuple[torch.Tensor, ...]:
    """``(input_ids,)`` or ``(input_ids, labels)``, each ``(batch, seq)`` ids below ``vocab``."""
    check_positive("batch", batch)
    check_positive("seq", seq)
    ids = randint(vocab, (batch, seq), seed, device)
    if not labels:
        return (ids,)
    return (ids, randint(vocab, (batch, seq), seed + 1, device))


def image_inputs(model_name: str, in_chans: int, image_size: int, num_classes: int, batch: int,
                 seq: int | None, labels: bool, seed: int,
                 device: torch.device | str | None) -> tuple[torch.Tensor, ...]:
    """``(images,)`` or ``(images, class labels)``; images have no sequence axis, so ``seq`` must be None."""
    if seq is not None:
        raise ValueError(f"seq must be None for {model_name} (image inputs have no sequence axis), got {seq!r}")
    check_positive("batch", batch)
    images = randn((batch, in_chans, image_size, image_size), seed, device)
    if not labels:
        return (images,)
    return (images, randint(num_classes, (batch,), seed + 1, device))
