"""Out of memory, survived: what counts as one, freeing after it, and failures injected on purpose.

A step that runs out of memory is retried by the recipe with its micro-batches halved and
twice as many of them (the same rows, so the same loss: it is weighted by loss units, not by
micro-batch). Evaluation and previews shrink their batches the same way or skip the round.

`FINETUNED_INJECT_OOM` makes CPU tests prove it: a comma-separated list of `train:STEP=ROWS`
(at optimizer step STEP, 1-based, a forward over more than ROWS rows fails) and `eval=ROWS`
(any forward in evaluation or previews over more than ROWS rows fails). ROWS 0 always fails.
Read once when the worker starts; unset, nothing is hooked.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

INJECT_ENV = "FINETUNED_INJECT_OOM"
TRAIN, EVAL = "train", "eval"
# How allocators word it: CUDA's OutOfMemoryError, and the CPU allocator's RuntimeError.
_MESSAGES = ("out of memory", "can't allocate memory", "not enough memory", "failed to allocate")


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError | torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _MESSAGES)


def free() -> None:
    """Give back what the failed attempt held; call it outside the `except` block (its traceback holds tensors)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class InjectedOutOfMemory(MemoryError):
    """An out-of-memory raised on purpose by FINETUNED_INJECT_OOM."""


class Injector:
    """Raises InjectedOutOfMemory from the model's forward where the spec says the memory would run out."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.limits: dict[tuple[str, int | None], int] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            where, _, rows = part.partition("=")
            phase, _, step = where.partition(":")
            if phase not in (TRAIN, EVAL) or not rows.isdigit() or (phase == TRAIN) != step.isdigit():
                raise ValueError(f"{INJECT_ENV}: cannot read {part!r} (train:STEP=ROWS or eval=ROWS)")
            self.limits[(phase, int(step) if step else None)] = int(rows)
        self.where: tuple[str, int | None] = (TRAIN, None)

    def check(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input", args[0] if args else None)
        limit = self.limits.get(self.where)
        if limit is not None and ids is not None and ids.shape[0] > limit:
            phase, step = self.where
            at = phase if step is None else f"{phase} step {step}"
            raise InjectedOutOfMemory(f"out of memory (injected by {INJECT_ENV}: {ids.shape[0]} rows > {limit} "
                                      f"at {at})")

    @contextmanager
    def at(self, phase: str, step: int | None = None) -> Iterator[None]:
        saved, self.where = self.where, (phase, step)
        try:
            yield
        finally:
            self.where = saved


_injector: Injector | None = None


def injector() -> Injector | None:
    """The process's injector, when FINETUNED_INJECT_OOM asks for one."""
    global _injector
    spec = os.environ.get(INJECT_ENV)
    if not spec:
        return None
    if _injector is None or _injector.spec != spec:
        _injector = Injector(spec)
    return _injector


def hook(model: torch.nn.Module) -> None:
    """Check every forward of `model` against the injector, at its input embeddings: training (through
    peft, which calls `forward` directly and so skips the model's own hooks) and generation both pass there."""
    model.get_input_embeddings().register_forward_pre_hook(_check, with_kwargs=True)


def _check(_module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    found = injector()
    if found is not None:
        found.check(args, kwargs)


@contextmanager
def phase(name: str, step: int | None = None) -> Iterator[None]:
    """Mark what the model's forwards are for, so an injected failure can target it; free without one."""
    found = injector()
    if found is None:
        yield
        return
    with found.at(name, step):
        yield
