"""Real trained adapters on builtin:tiny, finished the way the daemon finishes a job; the CLI; logits."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from helpers import Driver, drop, tiny_config, train_in_process

from finetuned.config import Config
from finetuned.fsio import sha256_file
from finetuned.lifecycle.history import line_exclusions
from finetuned.processes.protocol import Completed, Yielded
from finetuned.queue.endings import Endings
from finetuned.queue.job import Job, JobStatus
from finetuned.queue.store import JobStore
from finetuned.workspace import Workspace


def train_job(ws: Workspace, name: str, records: list[dict[str, Any]], yield_at: int | None = None,
              keep_all: bool = False, fresh_line_after_switch: bool = True) -> Job:
    """Admit a file, train it in-process with the config in config.json, and record the outcome.

    A completed job gets the daemon's ending (record, file moved, checkpoints pruned to the final one
    unless `keep_all`); a yielded one goes back to queued with its checkpoint, as a stop does.
    `fresh_line_after_switch` adds `line_exclusions` to the line's exclusions, as the daemon hook
    proposed for the daemon does.
    """
    config = ws.load_config()  # as the daemon does at each job start
    store = JobStore(ws).load()
    job = store.admit(drop(ws, name, records), "normal")
    job.examples, job.format, job.sha256 = len(records), "chat", sha256_file(store.file_path(job))
    store.save(job)
    job.start_run()
    store.move(job, JobStatus.TRAINING, "started")
    driver = Driver(yield_at)
    exclude = {j.id for j in store.jobs.values() if j.status in (JobStatus.SKIPPED, JobStatus.FAILED)}
    if fresh_line_after_switch:
        exclude |= set(line_exclusions(ws, store.jobs.values()))
    train_in_process(ws, config, job, store.file_path(job), driver, exclude=exclude)
    endings = Endings(store)
    if yield_at is not None:
        job.step = driver.last(Yielded).step
        endings.requeued(job, f"stop at step {job.step}", front=False)
        return job
    kept = ws.root / ".kept-checkpoints"
    if keep_all:  # as if the daemon had stopped before pruning them
        shutil.copytree(ws.job_checkpoints(job.id), kept)
    endings.completed(job, driver.last(Completed).summary)
    if keep_all:
        shutil.rmtree(ws.job_checkpoints(job.id))
        kept.rename(ws.job_checkpoints(job.id))
    return job


def lifecycle_config(**training: Any) -> Config:
    config = tiny_config(**training)
    config.lifecycle.min_free_gb = 0.0
    config.previews.every_steps = 0
    return config


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real entry point, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "finetuned", *args], capture_output=True, text=True,
                          input=stdin, timeout=300)


def logits(model_dir_or_model: Any, tokens: list[int] | None = None):
    """Logits of a fixed prompt, float32 on CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    model = model_dir_or_model
    if isinstance(model, (str, Path)):
        model = AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32)
    model.eval()
    ids = torch.tensor([tokens or [1, 40, 300, 2000, 17, 5, 900, 3]])
    with torch.no_grad():
        return model(input_ids=ids).logits


def base_plus_adapter_logits(base_dir: Path, adapter_dir: Path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    return logits(PeftModel.from_pretrained(model, str(adapter_dir)))
