"""The training recipe: one job, step by step, in the spirit of torchtune's recipes.

`setup()` builds what a job needs in dependency order (model, data, start
state, optimizer); `train()` is the whole loop. Controls act at one point, the
optimizer-step boundary: the daemon's `yield` is read there, a checkpoint is
written and the loop returns, with the model still loaded for the next job.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finetuned.config import Config, ConfigError
from finetuned.data import DataError, JobData, is_current, load_meta, prepare
from finetuned.fsio import publish_dir, remove_tree, sha256_file
from finetuned.lifecycle.disk import enough_space, free_gb
from finetuned.models.loading import add_lora, load_model, load_tokenizer, resolve_base, weights_hash
from finetuned.worker import checkpoint
from finetuned.worker.checkpoint import TrainingProgress
from finetuned.worker.loss import token_loss_sum
from finetuned.worker.metrics import MetricsLog
from finetuned.worker.previews import Previewer
from finetuned.worker.protocol import Message, msg
from finetuned.worker.step import accumulate, update
from finetuned.workspace import Workspace

log = logging.getLogger(__name__)

DISK_POLL_SECONDS = 5.0


@dataclass
class Loaded:
    """The base model kept in memory across jobs that share it."""

    key: tuple[Any, ...]
    base_path: Path
    base_hash: str
    model: torch.nn.Module
    tokenizer: Any
    fresh: dict[str, torch.Tensor] = field(default_factory=dict)  # trainable weights at their start
    dirty: bool = False  # weights differ from `fresh`


def lr_at(step: int, config: Config) -> float:
    """Linear warmup, then constant: a function of the step, so resume needs nothing else."""
    warmup = config.training.warmup_steps
    scale = min(1.0, (step + 1) / warmup) if warmup else 1.0
    return config.training.learning_rate * scale


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Recipe:
    def __init__(self, ws: Workspace, send: Callable[[Message], None], poll: Callable[[], Message | None]):
        self.ws = ws
        self.send = send
        self.poll = poll
        self.loaded: Loaded | None = None
        self.writer = checkpoint.Writer()

    # --- setup ----------------------------------------------------------
    def _setup_model(self, config: Config, job_id: str) -> Loaded:
        key = (config.base_model, config.method, config.lora.model_dump_json(), config.training.seed,
               config.training.activation_checkpointing)
        if self.loaded and self.loaded.key == key and not (config.method == "full" and self.loaded.dirty):
            return self.loaded
        self.loaded = None  # drop the old model before loading the next
        self.send(msg("phase", job_id=job_id, phase="loading model"))
        base_path = resolve_base(config.base_model, self.ws.base_models)  # a built-in is written out once
        started = time.time()
        seed_all(config.training.seed)  # LoRA's initial weights depend on it
        model = load_model(base_path, config.method, config.training.activation_checkpointing)
        if config.method in ("lora", "qlora"):
            model = add_lora(model, config.lora)
        fresh = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        self.loaded = Loaded(key, base_path, weights_hash(base_path), model, load_tokenizer(base_path), fresh)
        log.info("loaded %s (%s) in %.1fs", config.base_model, config.method, time.time() - started)
        return self.loaded

    def _setup_data(self, config: Config, job_id: str, file: Path, sha256: str | None, loaded: Loaded) -> JobData:
        out = self.ws.tokenized / job_id
        max_len = config.training.max_seq_len
        if not is_current(out, sha256 or sha256_file(file), loaded.tokenizer, config.data, max_len):
            self.send(msg("phase", job_id=job_id, phase="tokenizing"))
            prepare(file, out, loaded.tokenizer, config.data, max_len)
        t = config.training
        return JobData.open(
            out, batch_size=t.batch_size, grad_accum=t.grad_accum, epochs=t.epochs, max_steps=t.max_steps,
            max_seq_len=t.max_seq_len, packing=config.data.packing, holdout_fraction=config.data.holdout_fraction,
            max_holdout=config.data.max_holdout, seed=t.seed, pad_id=loaded.tokenizer.pad_token_id,
        )

    def _setup_state(
        self, config: Config, job_id: str, loaded: Loaded, exclude: set[str], total: int,
    ) -> tuple[TrainingProgress, torch.optim.Optimizer, str | None]:
        """Weights, optimizer, RNG and progress to start from; returns where they came from."""
        params = {n: p for n, p in loaded.model.named_parameters() if p.requires_grad}
        optimizer = torch.optim.AdamW(
            params.values(), lr=config.training.learning_rate, weight_decay=config.training.weight_decay,
            fused=torch.cuda.is_available(),  # one kernel for every parameter; same state, so checkpoints match
        )
        own = checkpoint.latest(self.ws.job_checkpoints(job_id))
        source = own
        if config.training.mode == "continuous":
            # The line's newest state carries the weights; the job's own checkpoint its data position.
            source = checkpoint.line_head(self.ws.checkpoints, config.base_model, config.method, exclude)
        progress = TrainingProgress(
            job_id=job_id, step=0, total_steps=total, line_step=0, seed=config.training.seed,
            base_model=config.base_model, base_hash=loaded.base_hash, method=config.method,
            mode=config.training.mode,
        )
        if source is None:
            self._copy_weights(params, loaded.fresh)
            seed_all(config.training.seed)
        else:
            self._copy_weights(params, checkpoint.load_weights(source[1]))
            checkpoint.load_optimizer(source[1], optimizer)
            checkpoint.load_rng(source[1])
            progress.line_step = source[0].line_step
        if own is not None:
            kept = own[0].model_dump(include={"step", "tokens", "loss_tokens", "examples", "last_loss"})
            progress = progress.model_copy(update=kept)
        if config.training.mode == "independent":
            progress.line_step = progress.step
        loaded.dirty = True
        return progress, optimizer, str(own[1]) if own else None

    @staticmethod
    def _copy_weights(params: dict[str, torch.nn.Parameter], weights: dict[str, torch.Tensor]) -> None:
        missing = set(params) - set(weights)
        if missing:
            raise checkpoint.CheckpointMismatch(f"checkpoint lacks {len(missing)} weights, e.g. {sorted(missing)[0]}")
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(weights[name])

    # --- the job --------------------------------------------------------
    def run(self, job_id: str, file: Path, config: Config, exclude: set[str], sha256: str | None = None) -> None:
        """Train one job to its end, or until the daemon asks it to yield."""
        try:
            loaded = self._setup_model(config, job_id)
            data = self._setup_data(config, job_id, file, sha256, loaded)
        except DataError as exc:
            self.send(msg("failed", job_id=job_id, reason=str(exc), step=0, data_error=exc.report))
            return
        if data.total_steps == 0:
            report = {"file": file.name, "error": "the data gives no training step", "problems": []}
            self.send(msg("failed", job_id=job_id, reason=report["error"], step=0, data_error=report))
            return
        progress, optimizer, resumed_from = self._setup_state(config, job_id, loaded, exclude, data.total_steps)
        self.send(msg("started", job_id=job_id, step=progress.step, total_steps=data.total_steps,
                      examples=data.n_train, resumed_from=resumed_from))
        self.train(config, loaded, data, progress, optimizer, file)

    def train(
        self, config: Config, loaded: Loaded, data: JobData, progress: TrainingProgress,
        optimizer: torch.optim.Optimizer, file: Path,
    ) -> None:
        t = config.training
        model = loaded.model
        params = [p for p in model.parameters() if p.requires_grad]
        job_dir = self.ws.job_checkpoints(progress.job_id)
        metrics = MetricsLog(self.ws.metrics_file(progress.job_id), self.ws.tensorboard_dir(progress.job_id))
        previews = Previewer(config.monitor, loaded.tokenizer, self.ws.previews_file(progress.job_id))
        train_seconds = 0.0  # this run's time in steps: the previews' budget is a share of it
        first_loss = progress.last_loss
        record: dict[str, Any] = {}
        model.train()
        try:
            while progress.step < progress.total_steps:
                order = self.poll()
                self._report_written(progress.job_id)
                if order is not None and order.get("type") == "yield":
                    path = self._save(config, progress, model, optimizer, job_dir, wait=True)
                    self.send(msg("yielded", job_id=progress.job_id, reason=order["reason"],
                                  step=progress.step, checkpoint=str(path)))
                    return
                started = time.time()
                batches = data.step_batches(progress.step)
                loss_sum = accumulate(model, batches).item()
                if not math.isfinite(loss_sum):  # fail before the step: memory keeps the last good weights
                    optimizer.zero_grad(set_to_none=True)
                    self.send(msg("failed", job_id=progress.job_id, step=progress.step + 1, data_error=None,
                                  reason=f"loss became {loss_sum} at step {progress.step + 1}"))
                    return
                lr = lr_at(progress.line_step, config)
                update(optimizer, params, lr, t.max_grad_norm)
                progress.step += 1
                progress.line_step += 1
                progress.tokens += sum(b.n_tokens for b in batches)
                progress.loss_tokens += sum(b.n_loss_tokens for b in batches)
                progress.examples += sum(b.n_examples for b in batches)
                progress.last_loss = loss_sum
                first_loss = loss_sum if first_loss is None else first_loss
                elapsed = time.time() - started
                train_seconds += elapsed
                done = progress.step == progress.total_steps
                record = {
                    "step": progress.step, "line_step": progress.line_step, "loss": loss_sum, "lr": lr,
                    "tokens": progress.tokens, "step_seconds": round(elapsed, 4), "time": time.time(),
                    "tokens_per_second": round(sum(b.n_tokens for b in batches) / max(elapsed, 1e-9), 1),
                }
                if done or progress.step % t.checkpoint_every_steps == 0:
                    self._save(config, progress, model, optimizer, job_dir, wait=done)
                    val_loss = self._val_loss(model, data)
                    if val_loss is not None:
                        record["val_loss"] = val_loss
                if done or progress.step == 1 or progress.step % t.log_every_steps == 0:
                    metrics.write(record)
                    log.info("job %s step %d/%d loss %.4f lr %.2e%s", progress.job_id, progress.step,
                             progress.total_steps, loss_sum, lr,
                             f" val_loss {record['val_loss']:.4f}" if "val_loss" in record else "")
                self.send(msg("step", job_id=progress.job_id, step=progress.step, total_steps=progress.total_steps,
                              loss=loss_sum, lr=lr, tokens=progress.tokens, examples=progress.examples,
                              step_seconds=elapsed))
                if previews.due(progress.step):
                    previews.run(model, data.holdout_examples(config.monitor.preview_examples), progress.step,
                                 train_seconds)
        finally:
            self.writer.join()  # nothing in flight when the job hands back control
            self._report_written(progress.job_id)
            metrics.close()
        summary = self._publish(config, loaded, data, progress, file, first_loss, record.get("val_loss"))
        self.send(msg("completed", job_id=progress.job_id, summary=summary))

    @torch.no_grad()
    def _val_loss(self, model: torch.nn.Module, data: JobData) -> float | None:
        total, tokens = 0.0, 0
        model.eval()
        try:
            for batch in data.holdout_batches():
                total += token_loss_sum(model, batch).item()
                tokens += batch.n_loss_tokens
        finally:
            model.train()
        return total / tokens if tokens else None

    def _save(self, config: Config, progress: TrainingProgress, model: torch.nn.Module,
              optimizer: torch.optim.Optimizer, job_dir: Path, wait: bool) -> Path:
        """Checkpoint; with `wait` it is durable on return, else it is written beside the next steps."""
        weights = {n: p for n, p in model.named_parameters() if p.requires_grad}
        snap = checkpoint.snapshot(progress, weights, optimizer)
        self._wait_for_space(job_dir, snap, config, progress.job_id)
        path = self.writer.save(job_dir, snap, config.lifecycle.keep_checkpoints, wait)
        self._report_written(progress.job_id)
        return path

    def _report_written(self, job_id: str) -> None:
        for step, path in self.writer.written():
            self.send(msg("checkpoint", job_id=job_id, step=step, path=str(path)))

    def _wait_for_space(self, job_dir: Path, snap: checkpoint.Snapshot, config: Config, job_id: str) -> None:
        """A full disk pauses the line (the daemon shows why) instead of failing a write half-way."""
        need = sum(t.numel() * t.element_size() for t in snap.weights.values()) * 3
        minimum = config.lifecycle.min_free_gb
        while not enough_space(job_dir, need, minimum):
            with contextlib.suppress(ConfigError):  # a user may lower the threshold instead of freeing space
                minimum = self.ws.load_config().lifecycle.min_free_gb
            if enough_space(job_dir, need, minimum):
                break
            reason = (f"waiting for disk space: {free_gb(job_dir):.2f} GB free, a checkpoint needs "
                      f"{need / 2**30:.2f} GB plus lifecycle.min_free_gb {minimum:g} GB")
            log.warning("job %s: %s", job_id, reason)
            self.send(msg("phase", job_id=job_id, phase="waiting for disk space", reason=reason))
            time.sleep(DISK_POLL_SECONDS)

    def _publish(self, config: Config, loaded: Loaded, data: JobData, progress: TrainingProgress,
                 file: Path, first_loss: float | None, val_loss: float | None) -> dict[str, Any]:
        """Write the finished adapter (or model) to models/adapters/JOB_ID/, whole or not at all."""
        final = self.ws.adapter_dir(progress.job_id)
        summary = {
            "job_id": progress.job_id, "base_model": config.base_model, "base_path": str(loaded.base_path),
            "base_hash": loaded.base_hash, "method": config.method, "mode": config.training.mode,
            "steps": progress.step, "total_steps": progress.total_steps, "line_step": progress.line_step,
            "examples_trained": progress.examples, "train_examples": data.n_train, "holdout_examples": data.n_holdout,
            "tokens": progress.tokens, "loss_tokens": progress.loss_tokens, "first_loss": first_loss,
            "final_loss": progress.last_loss, "val_loss": val_loss, "config": config.model_dump(mode="json"),
            "data": _data_summary(load_meta(self.ws.tokenized / progress.job_id)),
        }
        if final.exists():
            return summary  # published before a crash cut the report short
        tmp = final.with_name(f".{final.name}.tmp")
        remove_tree(tmp)
        loaded.model.save_pretrained(tmp)
        if config.method == "full":
            loaded.tokenizer.save_pretrained(tmp)
        (tmp / "job.json").write_text(json.dumps(summary, indent=2) + "\n")
        publish_dir(tmp, final)
        return summary


def _data_summary(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    """What tokenising did to the file: kept, dropped or cut examples, for the job's record."""
    if meta is None:
        return None
    keys = ("format", "examples", "tokens", "loss_tokens", "dropped_overlong", "truncated", "dropped_no_loss",
            "special_token_text", "skipped_lines", "longest", "max_seq_len", "warnings")
    return {k: meta[k] for k in keys if k in meta}
