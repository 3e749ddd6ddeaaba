"""Checkpoints: complete or absent, with a readable record beside the tensors.

`models/checkpoints/JOB_ID/checkpoint-STEP/` holds the trainable weights, the
optimizer state, every RNG state and `state.json` (a `TrainingProgress`),
written last. The folder is built as `checkpoint-STEP.tmp`, fsynced and
renamed, so a folder without `state.json` is never a checkpoint: a loader
passes over it to the one before.
"""

from __future__ import annotations

import copy
import logging
import random
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ValidationError

from finetuned.fsio import atomic_write_json, publish_dir, read_json

log = logging.getLogger(__name__)

STATE = "state.json"
WEIGHTS = "weights.safetensors"
OPTIMIZER = "optimizer.pt"
RNG = "rng.pt"
KEEP = "KEEP"  # a user's marker: retention never removes this checkpoint
_NAME = re.compile(r"^checkpoint-(\d+)$")


class CheckpointMismatch(Exception):
    """A checkpoint that does not fit the model it is loaded into."""


class TrainingProgress(BaseModel):
    """Everything beside the tensors that a resume needs; data position is the step."""

    job_id: str
    step: int  # optimizer steps of this job done
    total_steps: int
    line_step: int  # steps of the model line (continuous mode carries it across jobs)
    seed: int
    base_model: str
    base_hash: str
    method: str
    mode: str
    tokens: int = 0  # real (non-padding) tokens trained in this job
    loss_tokens: int = 0
    examples: int = 0
    last_loss: float | None = None


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Snapshot:
    """A checkpoint's content copied out of the live model: training may go on while it is written."""

    progress: TrainingProgress
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, Any]


def snapshot(progress: TrainingProgress, weights: dict[str, torch.Tensor],
             optimizer: torch.optim.Optimizer) -> Snapshot:
    # The optimizer updates its state tensors in place: copy them, or the file would get later steps' values.
    state = copy.deepcopy(optimizer.state_dict())
    cpu = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in weights.items()}
    return Snapshot(progress.model_copy(), cpu, state, rng_state())


def path_for(job_dir: Path, step: int) -> Path:
    return job_dir / f"checkpoint-{step}"


def write(job_dir: Path, snap: Snapshot, keep: int) -> Path:
    """Write a checkpoint of the state after `snap.progress.step` steps; keep the newest `keep`."""
    from safetensors.torch import save_file

    final = path_for(job_dir, snap.progress.step)
    if (final / STATE).exists():
        return final  # this exact state is already on disk (a pause right after a periodic save)
    job_dir.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)  # a folder without state.json is debris
    tmp.mkdir()
    save_file(snap.weights, tmp / WEIGHTS)
    torch.save(snap.optimizer, tmp / OPTIMIZER)
    torch.save(snap.rng, tmp / RNG)
    atomic_write_json(tmp / STATE, snap.progress.model_dump())
    publish_dir(tmp, final)
    prune(job_dir, keep)
    return final


class Writer:
    """Writes checkpoints off the training thread; at most one write is in flight.

    A control's checkpoint (`wait=True`) is durable before the caller goes on; a periodic one
    overlaps the next steps, and the next save (or `join`) waits for it first.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._written: list[tuple[int, Path]] = []
        self._lock = threading.Lock()

    def save(self, job_dir: Path, snap: Snapshot, keep: int, wait: bool) -> Path:
        self.join()
        self._thread = threading.Thread(target=self._run, args=(job_dir, snap, keep), name="checkpoint")
        self._thread.start()
        if wait:
            self.join()
        return path_for(job_dir, snap.progress.step)

    def _run(self, job_dir: Path, snap: Snapshot, keep: int) -> None:
        try:
            path = write(job_dir, snap, keep)
        except BaseException as exc:  # raised again on the training thread by join()
            self._error = exc
            return
        with self._lock:
            self._written.append((snap.progress.step, path))

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def written(self) -> list[tuple[int, Path]]:
        """Checkpoints made durable since the last call."""
        with self._lock:
            done, self._written = self._written, []
        return done


def read_progress(path: Path) -> TrainingProgress | None:
    try:
        return TrainingProgress.model_validate(read_json(path / STATE))
    except (OSError, ValueError, ValidationError):
        return None


def complete(job_dir: Path) -> list[tuple[TrainingProgress, Path]]:
    """The job's complete checkpoints, oldest first; broken ones are logged and passed over."""
    found = []
    if not job_dir.is_dir():
        return found
    for path in job_dir.iterdir():
        match = _NAME.match(path.name)
        if not match:
            continue
        progress = read_progress(path)
        files_ok = all((path / name).exists() for name in (WEIGHTS, OPTIMIZER, RNG))
        if progress is None or not files_ok:
            log.warning("passing over incomplete checkpoint %s", path)
            continue
        found.append((progress, path))
    found.sort(key=lambda item: item[0].step)
    return found


def latest(job_dir: Path) -> tuple[TrainingProgress, Path] | None:
    found = complete(job_dir)
    return found[-1] if found else None


def line_head(
    checkpoints: Path, base_model: str, method: str, exclude: set[str],
) -> tuple[TrainingProgress, Path] | None:
    """The newest checkpoint of the continuous model line on this base and method."""
    best: tuple[TrainingProgress, Path] | None = None
    if not checkpoints.is_dir():
        return None
    for job_dir in checkpoints.iterdir():
        if job_dir.name in exclude:
            continue
        for progress, path in complete(job_dir):
            if (progress.mode, progress.base_model, progress.method) != ("continuous", base_model, method):
                continue
            if best is None or progress.line_step > best[0].line_step:
                best = (progress, path)
    return best


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / WEIGHTS)


def load_optimizer(path: Path, optimizer: torch.optim.Optimizer) -> None:
    optimizer.load_state_dict(torch.load(path / OPTIMIZER, weights_only=False))


def load_rng(path: Path) -> None:
    set_rng_state(torch.load(path / RNG, weights_only=False))


def prune(job_dir: Path, keep: int) -> None:
    """Remove all but the newest `keep` checkpoints; one holding a KEEP file is never removed."""
    for _progress, path in complete(job_dir)[:-keep]:
        if not (path / KEEP).exists():
            shutil.rmtree(path, ignore_errors=True)
