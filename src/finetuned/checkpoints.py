"""The checkpoint index: which checkpoints exist, which are whole, which one a job resumes from.

`models/checkpoints/JOB_ID/checkpoint-STEP/` holds the trainable weights, the
optimizer state, every RNG state and `state.json` (a `TrainingProgress`),
written last. The folder is built as `checkpoint-STEP.tmp`, fsynced and
renamed, so a folder without `state.json` is never a checkpoint: a reader
passes over it to the one before.

Reading the index needs no torch: the daemon, the lifecycle and `gc` use only
this module; the worker's `worker/tensors.py` writes and loads the tensors.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

from pydantic import BaseModel, ValidationError

from finetuned.fsio import read_json

log = logging.getLogger(__name__)

STATE = "state.json"
WEIGHTS = "weights.safetensors"
OPTIMIZER = "optimizer.pt"
RNG = "rng.pt"
FILES = (WEIGHTS, OPTIMIZER, RNG)
# strategy fsdp: weights and optimizer state as torch.distributed.checkpoint shards, in place of WEIGHTS and OPTIMIZER
SHARDED = "sharded"
KEEP = "KEEP"  # a user's marker: retention never removes this checkpoint
BEST = "BEST"  # the job's best checkpoint by its early-stopping metric: kept too
NAME = re.compile(r"^checkpoint-(\d+)$")
TMP_NAME = re.compile(r"^checkpoint-\d+\.tmp$")


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
    first_loss: float | None = None  # the loss of the job's first step, whatever run took it
    init_adapter: str | None = None  # the adapter the line started from: another adapter starts another line
    # Early stopping (worker/stopping.py): the best measurement of its metric so far, and since.
    best_value: float | None = None
    best_step: int | None = None
    stale_measurements: int = 0
    # After an out-of-memory each micro-batch is cut into this many (worker/memory.py); kept for the job.
    micro_batch_split: int = 1


def path_for(job_dir: Path, step: int) -> Path:
    return job_dir / f"checkpoint-{step}"


def read_progress(path: Path) -> TrainingProgress | None:
    try:
        return TrainingProgress.model_validate(read_json(path / STATE))
    except (OSError, ValueError, ValidationError):
        return None


def is_sharded(path: Path) -> bool:
    """Written by the ranks of strategy fsdp, each its own shards (worker/sharded.py)."""
    return (path / SHARDED).is_dir()


def _files_whole(path: Path) -> bool:
    """Every tensor file present and not empty (an empty one is a write cut short, or outside damage);
    for sharded ones, DCP's metadata (written last) and the random state."""
    try:
        if is_sharded(path):
            return (path / SHARDED / ".metadata").stat().st_size > 0 and (path / RNG).stat().st_size > 0
        return all((path / name).stat().st_size > 0 for name in FILES)
    except OSError:
        return False


def is_whole(path: Path) -> bool:
    """A checkpoint a job can resume from: its state.json readable and every tensor file there."""
    return read_progress(path) is not None and _files_whole(path)


def complete(job_dir: Path) -> list[tuple[TrainingProgress, Path]]:
    """The job's complete checkpoints, oldest first; broken ones are logged and passed over."""
    found: list[tuple[TrainingProgress, Path]] = []
    if not job_dir.is_dir():
        return found
    for path in job_dir.iterdir():
        if not NAME.match(path.name):
            continue
        progress = read_progress(path)
        if progress is None or not _files_whole(path):
            log.warning("passing over incomplete checkpoint %s", path)
            continue
        found.append((progress, path))
    found.sort(key=lambda item: item[0].step)
    return found


def latest(job_dir: Path) -> tuple[TrainingProgress, Path] | None:
    found = complete(job_dir)
    return found[-1] if found else None


def line_head(
    checkpoints: Path, base_model: str, method: str, exclude: set[str], init_adapter: str | None = None,
) -> tuple[TrainingProgress, Path] | None:
    """The newest checkpoint of the continuous model line on this base, method and starting adapter."""
    best: tuple[TrainingProgress, Path] | None = None
    if not checkpoints.is_dir():
        return None
    for job_dir in checkpoints.iterdir():
        if job_dir.name in exclude:
            continue
        for progress, path in complete(job_dir):
            if (progress.mode, progress.base_model, progress.method, progress.init_adapter) != (
                    "continuous", base_model, method, init_adapter):
                continue
            if best is None or progress.line_step > best[0].line_step:
                best = (progress, path)
    return best


def prune(job_dir: Path, keep: int) -> None:
    """Remove all but the newest `keep` whole checkpoints, and every checkpoint folder that is not whole.

    One holding a KEEP or BEST file, or the best so far by early stopping (the newest checkpoint's
    `best_step`), is never removed. A whole checkpoint appears in one rename, so a `checkpoint-STEP`
    that is not whole (state.json without its weights, say) is damage no job can resume from: it goes
    too, unless it holds KEEP or BEST.
    """
    whole = complete(job_dir)
    best = whole[-1][0].best_step if whole else None
    doomed = [path for progress, path in whole[: max(len(whole) - keep, 0)] if progress.step != best]
    kept = {path for _progress, path in whole}
    if job_dir.is_dir():
        broken = [p for p in job_dir.iterdir() if NAME.match(p.name) and p.is_dir() and p not in kept]
        for path in broken:
            log.warning("removing %s: not a whole checkpoint", path)
        doomed += broken
    for path in doomed:
        if not ((path / KEEP).exists() or (path / BEST).exists()):
            shutil.rmtree(path, ignore_errors=True)


def mark_best(job_dir: Path, step: int) -> Path | None:
    """Mark the checkpoint at `step` BEST (and no other); None when it is not on disk."""
    target = path_for(job_dir, step)
    if read_progress(target) is None:
        return None
    for _progress, path in complete(job_dir):
        if path != target:
            (path / BEST).unlink(missing_ok=True)
    (target / BEST).write_text("the best checkpoint of its job by its early-stopping metric\n", encoding="utf-8")
    return target
