"""The checkpoint index: what counts as a whole checkpoint, and what pruning keeps."""

from __future__ import annotations

from pathlib import Path

from finetuned import checkpoints
from finetuned.checkpoints import FILES, KEEP, STATE, TrainingProgress
from finetuned.fsio import atomic_write_json


def write(job_dir: Path, step: int, files: tuple[str, ...] = FILES) -> Path:
    """A checkpoint folder as the writer leaves it (the tensors' bytes do not matter to the index)."""
    path = checkpoints.path_for(job_dir, step)
    path.mkdir(parents=True)
    for name in files:
        (path / name).write_bytes(b"tensor bytes")
    progress = TrainingProgress(job_id="j", step=step, total_steps=20, line_step=step, seed=1, base_model="b",
                                base_hash="h", method="lora", mode="continuous")
    atomic_write_json(path / STATE, progress.model_dump())
    return path


def test_a_checkpoint_without_its_weights_is_never_kept_as_if_whole(tmp_path):
    """state.json but no weights (outside damage): not resumable, so pruning removes it instead of keeping it."""
    job_dir = tmp_path / "job"
    write(job_dir, 3)
    broken = write(job_dir, 6, files=tuple(f for f in FILES if f != checkpoints.WEIGHTS))
    empty = write(job_dir, 7)
    (empty / checkpoints.WEIGHTS).write_bytes(b"")  # cut short
    write(job_dir, 9)
    assert [p.step for p, _ in checkpoints.complete(job_dir)] == [3, 9]
    assert not checkpoints.is_whole(broken) and not checkpoints.is_whole(empty)
    checkpoints.prune(job_dir, keep=1)
    assert sorted(p.name for p in job_dir.iterdir()) == ["checkpoint-9"]


def test_pruning_never_removes_a_checkpoint_marked_keep(tmp_path):
    job_dir = tmp_path / "job"
    (write(job_dir, 2) / KEEP).touch()
    (write(job_dir, 4, files=()) / KEEP).touch()
    write(job_dir, 6)
    checkpoints.prune(job_dir, keep=1)
    assert sorted(p.name for p in job_dir.iterdir()) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
