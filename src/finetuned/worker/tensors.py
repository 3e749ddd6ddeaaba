"""Checkpoint tensors: written off the training thread, complete or absent; loaded back on resume.

What a checkpoint folder holds and how a reader finds a whole one is
`finetuned.checkpoints` (no torch); this module writes and reads the tensors.
"""

from __future__ import annotations

import copy
import random
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finetuned.checkpoints import OPTIMIZER, RNG, STATE, WEIGHTS, TrainingProgress, path_for, prune
from finetuned.fsio import atomic_write_json, publish_dir


# Not a FinetunedError: raised in a worker, it reaches the user as the job's FailKind, not at a command.
class CheckpointMismatch(Exception):
    """A checkpoint that does not fit the model it is loaded into."""


# In rng.pt of a job trained on N ranks: the states of ranks 1..N-1 (rank 0's are the file's own keys,
# so a single process resumes from it as from its own).
RANKS = "ranks"


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_rank(seed: int, rank: int, step: int = 0) -> None:
    """Seed a rank that has no saved state: rank 0 of a fresh job exactly as a single process, every other
    rank (or a rank added on resume, at `step`) from a stream of its own, so ranks draw different dropout."""
    if rank == 0 and step == 0:
        seed_all(seed)
    else:
        seed_all(int(np.random.SeedSequence([seed & (2**64 - 1), rank, step]).generate_state(1)[0]))


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

    @property
    def weight_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.weights.values())


def snapshot(progress: TrainingProgress, weights: dict[str, torch.Tensor],
             optimizer: torch.optim.Optimizer, rngs: list[dict[str, Any]] | None = None) -> Snapshot:
    """`rngs`: every rank's random state, rank 0 first, when the job trains on several."""
    # The optimizer updates its state tensors in place: copy them, or the file would get later steps' values.
    state = copy.deepcopy(optimizer.state_dict())
    cpu = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in weights.items()}
    return Snapshot(progress.model_copy(), cpu, state, rng_record(rngs))


def rng_record(rngs: list[dict[str, Any]] | None) -> dict[str, Any]:
    """What rng.pt holds: this process's random state, or rank 0's with the other ranks' beside it."""
    return rng_state() if not rngs else {**rngs[0], RANKS: rngs[1:]}


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
    try:
        save_file(snap.weights, tmp / WEIGHTS)
        torch.save(snap.optimizer, tmp / OPTIMIZER)
        torch.save(snap.rng, tmp / RNG)
        atomic_write_json(tmp / STATE, snap.progress.model_dump())
        publish_dir(tmp, final)
    except BaseException:  # a full disk, say: no half-written folder stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / WEIGHTS)


def load_optimizer(path: Path, optimizer: torch.optim.Optimizer) -> None:
    optimizer.load_state_dict(torch.load(path / OPTIMIZER, weights_only=False))


def load_rng(path: Path, rank: int = 0) -> bool:
    """Restore `rank`'s random state; False when the checkpoint holds none for it (saved on fewer ranks)."""
    state = torch.load(path / RNG, weights_only=False)
    if rank:
        others = state.get(RANKS, [])
        if rank > len(others):
            return False
        state = others[rank - 1]
    set_rng_state(state)
    return True
