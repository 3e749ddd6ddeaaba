"""Which precision a job computes in (`training.precision`, SPEC section 9).

bf16 means autocast: matmuls and the layers around them run in bfloat16 while the trainable
weights, their gradients and AdamW's state stay float32, so small updates are not rounded away.
`auto` takes it only where the device computes bf16 natively: a GPU that supports it, or a CPU
with AVX512-BF16 or AMX (without them a CPU emulates bf16 and runs slower than fp32).
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import torch

Precision = Literal["fp32", "bf16"]

# Either flag gives the CPU bf16 dot products in hardware (oneDNN uses them).
NATIVE_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags as Linux lists them; empty elsewhere (no native bf16 is assumed there)."""
    if not sys.platform.startswith("linux"):
        return frozenset()
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def native_bf16(device: torch.device, flags: Iterable[str] | None = None) -> str | None:
    """Why `device` computes bf16 natively ("avx512_bf16", "cuda"), or None when it does not.
    `flags` replaces the CPU's own (tests of a CPU without them)."""
    if device.type == "cuda":
        return "cuda" if torch.cuda.is_bf16_supported() else None
    if device.type != "cpu":
        return None
    have = _own_flags() if flags is None else frozenset(flags)
    return next((flag for flag in NATIVE_CPU_FLAGS if flag in have), None)


@functools.cache
def _own_flags() -> frozenset[str]:
    return cpu_flags()  # read once per process: the answer cannot change while the worker lives


def resolve(setting: str, device: torch.device, flags: Iterable[str] | None = None) -> tuple[Precision, str]:
    """The precision `setting` gives on `device`, and why (for the job's log line)."""
    if setting == "fp32":
        return "fp32", "training.precision fp32"
    if setting == "bf16":
        return "bf16", "training.precision bf16"
    reason = native_bf16(device, flags)
    return ("bf16", reason) if reason else ("fp32", "no native bf16")


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager[object]:
    """The forward pass's context: bf16 autocast, or nothing at all in fp32 (not a disabled autocast, which
    would still wrap every op)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
