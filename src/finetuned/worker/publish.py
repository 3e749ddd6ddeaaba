"""The end of a job: its adapter (or model) and job.json in `models/adapters/JOB_ID/`, whole or not at all.

The only writer of job.json: the record the daemon keeps for the job as it ends
completed (`adapter_record`), and what training says it trained.
"""

from __future__ import annotations

import json
from typing import Any

from finetuned.checkpoints import TrainingProgress
from finetuned.config import Config, redacted
from finetuned.data import JobData, load_meta
from finetuned.fsio import publish_dir, remove_tree
from finetuned.models.loading import save_tokenizer
from finetuned.queue.endings import adapter_record
from finetuned.queue.job import Job
from finetuned.worker.cache import Loaded
from finetuned.workspace import ADAPTER_RECORD, Workspace

# What tokenising did to the file (kept, dropped or cut examples), for the job's record.
DATA_KEYS = ("format", "examples", "tokens", "loss_tokens", "dropped_overlong", "truncated", "dropped_no_loss",
             "special_token_text", "skipped_lines", "longest", "longest_seen", "max_seq_len", "warnings", "notes")


def summary(ws: Workspace, config: Config, loaded: Loaded, data: JobData, progress: TrainingProgress,
            objective: str, first_loss: float | None, val_loss: float | None) -> dict[str, Any]:
    meta = load_meta(ws.tokenized / progress.job_id)
    return {
        "job_id": progress.job_id, "base_model": config.base_model, "base_path": str(loaded.base_path),
        "base_hash": loaded.base_hash, "method": config.method, "objective": objective,
        "mode": config.training.mode, "precision": loaded.precision, "steps": progress.step,
        "total_steps": progress.total_steps,
        "line_step": progress.line_step, "examples_trained": progress.examples, "train_examples": data.n_train,
        "holdout_examples": data.n_holdout, "tokens": progress.tokens, "loss_tokens": progress.loss_tokens,
        "first_loss": first_loss, "final_loss": progress.last_loss, "val_loss": val_loss,
        "config": redacted(config.model_dump(mode="json")),  # what trained it, never the monitor's token
        **({"preference": config.preference.model_dump(mode="json")} if objective != "sft" else {}),
        "data": None if meta is None else {k: meta[k] for k in DATA_KEYS if k in meta},
    }


def publish(ws: Workspace, job: Job, config: Config, loaded: Loaded, result: dict[str, Any],
            weights: dict[str, Any] | None = None) -> None:
    """Write the adapter (a whole model for `full`) and its job.json; a folder already there was published
    before a crash cut the report short, and stays as it is. `weights`: the whole weights, gathered, where
    the model holds only this rank's shards (strategy fsdp)."""
    final = ws.adapter_dir(job.id)
    if final.exists():
        return
    tmp = final.with_name(f".{final.name}.tmp")
    remove_tree(tmp)
    try:
        loaded.model.save_pretrained(tmp, state_dict=weights)
        # Every adapter carries the tokenizer and the chat template it was trained with: exports and
        # versions made from it prompt the model as training did, whatever its base says.
        save_tokenizer(loaded.tokenizer, tmp)
        (tmp / ADAPTER_RECORD).write_text(json.dumps(adapter_record(job, result), indent=2) + "\n")
        publish_dir(tmp, final)
    except BaseException:  # a full disk, say: no half-written adapter stays behind
        remove_tree(tmp)
        raise
