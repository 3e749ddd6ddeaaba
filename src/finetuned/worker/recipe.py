"""The training recipe: one job, step by step, in the spirit of torchtune's recipes.

`run_job` builds a `Recipe` for the job it is given and calls `setup()` (model,
data, objective, optimizer, start state, in dependency order), `train()` (the
whole loop, top to bottom) and `cleanup()`. Controls act at one point, the
optimizer-step boundary: the world's order is read there, a checkpoint is
written and the loop returns, with the model still in the cache for the next
job. What is optimised is the objective's business, where the job trains the
world's; the loop is the same for every objective and every world.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from finetuned import checkpoints, disk
from finetuned.checkpoints import TrainingProgress
from finetuned.config import Config, ConfigError
from finetuned.data import DataError, JobData, is_current, prepare
from finetuned.fsio import sha256_file
from finetuned.worker import checkpoint
from finetuned.worker.cache import Loaded, ModelCache
from finetuned.worker.metrics import MetricsLog
from finetuned.worker.objectives import Objective, objective_for
from finetuned.worker.previews import Previewer
from finetuned.worker.protocol import (
    WAITING_FOR_DISK,
    Checkpoint,
    Completed,
    Failed,
    FailKind,
    Phase,
    Started,
    Step,
    Train,
    Yielded,
)
from finetuned.worker.publish import publish, summary
from finetuned.worker.schedule import lr_at
from finetuned.worker.step import accumulate, update
from finetuned.worker.world import World, memory_gb
from finetuned.workspace import Workspace

log = logging.getLogger(__name__)

DISK_POLL_SECONDS = 5.0


def run_job(ws: Workspace, order: Train, cache: ModelCache, world: World) -> None:
    """Train one job to its end, or until the daemon asks it to yield."""
    recipe = Recipe(ws, order, cache, world)
    try:
        if recipe.setup():
            recipe.train()
    finally:
        recipe.cleanup()


class Recipe:
    loaded: Loaded
    data: JobData
    objective: Objective
    optimizer: torch.optim.Optimizer
    progress: TrainingProgress

    def __init__(self, ws: Workspace, order: Train, cache: ModelCache, world: World) -> None:
        self.ws = ws
        self.order = order
        self.job_id = order.job.id
        self.config = order.config
        self.cache = cache
        self.world = world
        self.job_dir = ws.job_checkpoints(self.job_id)
        self.writer = checkpoint.Writer()

    # --- setup ----------------------------------------------------------
    def setup(self) -> bool:
        """Build what the job needs; False when it cannot train (the daemon has been told why)."""
        try:
            self.loaded = self.cache.get(self.config, self.world, lambda: self._phase("loading model"))
            self.data = self._setup_data()
        except DataError as exc:
            self._refuse(str(exc), exc.report)
            return False
        if self.data.total_steps == 0:
            error = "the data gives no training step"
            self._refuse(error, {"file": self.order.job.file, "error": error, "problems": []})
            return False
        self.objective = objective_for(self.data.meta)
        self.step_model, self.step_objective = self.world.runner(self.loaded.model, self.objective)
        self.optimizer = self._setup_optimizer()
        self.progress, resumed_from = self._setup_state()
        self.world.report(Started(job_id=self.job_id, step=self.progress.step, total_steps=self.data.total_steps,
                                  examples=self.data.n_train, resumed_from=resumed_from))
        return True

    def _setup_data(self) -> JobData:
        config, tokenizer = self.config, self.loaded.tokenizer
        out = self.ws.tokenized / self.job_id
        max_len = config.training.max_seq_len
        sha256 = self.order.job.sha256 or sha256_file(self.order.file)
        # The main rank alone writes the token cache; every rank gets its verdict (world.py).
        if self.world.from_main(lambda: not is_current(out, sha256, tokenizer, config.data, max_len)):
            self._phase("tokenizing")
            refused = self.world.from_main(lambda: _prepare(self.order.file, out, tokenizer, config, max_len))
            if refused is not None:
                raise DataError(refused)
        t = config.training
        return JobData.open(
            out, batch_size=t.batch_size, grad_accum=t.grad_accum, epochs=t.epochs, max_steps=t.max_steps,
            max_seq_len=t.max_seq_len, packing=config.data.packing, holdout_fraction=config.data.holdout_fraction,
            max_holdout=config.data.max_holdout, seed=t.seed, pad_id=tokenizer.pad_token_id,
        )

    def _setup_optimizer(self) -> torch.optim.Optimizer:
        t = self.config.training
        return torch.optim.AdamW(
            self.loaded.trainable().values(), lr=t.learning_rate, weight_decay=t.weight_decay,
            fused=self.world.device.type == "cuda",  # one kernel for every parameter; same state, so checkpoints match
        )

    def _setup_state(self) -> tuple[TrainingProgress, str | None]:
        """Weights, optimizer, RNG and progress to start from; returns them and where the job's own came from."""
        config, loaded = self.config, self.loaded
        own = checkpoints.latest(self.job_dir)
        source = own
        if config.training.mode == "continuous":
            # The line's newest state carries the weights; the job's own checkpoint its data position.
            source = checkpoints.line_head(self.ws.checkpoints, config.base_model, config.method,
                                           set(self.order.line_exclude))
        progress = TrainingProgress(
            job_id=self.job_id, step=0, total_steps=self.data.total_steps, line_step=0, seed=config.training.seed,
            base_model=config.base_model, base_hash=loaded.base_hash, method=config.method,
            mode=config.training.mode,
        )
        rank = self.world.rank
        if source is None:
            self._copy_weights(loaded.fresh)
            checkpoint.seed_rank(config.training.seed, rank)
        else:
            self._restore(source[1])
            if not checkpoint.load_rng(source[1], rank):  # saved on fewer ranks than train now
                checkpoint.seed_rank(config.training.seed, rank, source[0].line_step)
            progress.line_step = source[0].line_step
        if own is not None:
            kept = own[0].model_dump(include={"step", "tokens", "loss_tokens", "examples", "last_loss"})
            progress = progress.model_copy(update=kept)
        if config.training.mode == "independent":
            progress.line_step = progress.step
        loaded.dirty = True
        return progress, str(own[1]) if own else None

    def _restore(self, path: Path) -> None:
        """Weights and optimizer state from a checkpoint, whichever world wrote it and however this one holds them."""
        if checkpoints.is_sharded(path) or self.world.sharded:
            from finetuned.worker import sharded

            sharded.restore(path, self.loaded.model, self.optimizer)
            return
        self._copy_weights(checkpoint.load_weights(path))
        checkpoint.load_optimizer(path, self.optimizer)

    def _copy_weights(self, weights: dict[str, torch.Tensor]) -> None:
        params = self.loaded.trainable()
        missing = set(params) - set(weights)
        if missing:
            raise checkpoint.CheckpointMismatch(f"checkpoint lacks {len(missing)} weights, e.g. {sorted(missing)[0]}")
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(weights[name])

    # --- the loop -------------------------------------------------------
    def train(self) -> None:
        config, t, progress = self.config, self.config.training, self.progress
        model = self.loaded.model
        params = list(self.loaded.trainable().values())
        main = self.world.main  # the one rank that writes the job's files
        metrics = MetricsLog(self.ws.metrics_file(self.job_id), self.ws.tensorboard_dir(self.job_id)) if main else None
        previews = Previewer(config.previews, self.loaded.tokenizer, self.ws.previews_file(self.job_id))
        train_seconds = 0.0  # this run's time in steps: the previews' budget is a share of it
        first_loss = progress.last_loss
        record: dict[str, Any] = {}
        model.train()
        try:
            while progress.step < progress.total_steps:
                order = self.world.order(progress.step)
                self._report_written()
                if order is not None:
                    path = self._save(wait=True)
                    self.world.barrier()  # every rank has stopped at this step and the checkpoint is durable
                    self.world.report(Yielded(job_id=self.job_id, reason=order.reason, step=progress.step,
                                              checkpoint=str(path)))
                    return
                started = time.time()
                batches = self.data.step_batches(progress.step)
                units = sum(self.objective.units(b) for b in batches)
                loss, extra = accumulate(self.step_model, self.world.shard(batches), self.step_objective, units)
                self.world.sync_gradients(params)
                loss_sum, extra_values = self._totals(loss, extra)
                if not math.isfinite(loss_sum):  # fail before the step: memory keeps the last good weights
                    self.optimizer.zero_grad(set_to_none=True)
                    self.world.report(Failed(job_id=self.job_id, kind=FailKind.DIVERGED, step=progress.step + 1,
                                             reason=f"loss became {loss_sum} at step {progress.step + 1}"))
                    return
                lr = lr_at(progress.line_step, t)
                update(self.optimizer, params, lr, t.max_grad_norm)
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
                    **extra_values,
                }
                if done or progress.step % t.checkpoint_every_steps == 0:
                    self._save(wait=done)
                    val_loss = self._val_loss()
                    if val_loss is not None:
                        record["val_loss"] = val_loss
                if done or progress.step == 1 or progress.step % t.log_every_steps == 0:
                    self._add_world(record)
                    if metrics is not None:
                        metrics.write(record)
                        log.info("job %s step %d/%d loss %.4f lr %.2e%s", self.job_id, progress.step,
                                 progress.total_steps, loss_sum, lr,
                                 f" val_loss {record['val_loss']:.4f}" if "val_loss" in record else "")
                self.world.report(Step(job_id=self.job_id, step=progress.step, total_steps=progress.total_steps,
                                       loss=loss_sum, lr=lr, tokens=progress.tokens, examples=progress.examples,
                                       step_seconds=elapsed))
                # Previews run on the main rank's whole model; a sharded one runs only on every rank at once.
                if main and not self.world.sharded and previews.due(progress.step):
                    previews.run(model, self.data.holdout_examples(config.previews.examples), progress.step,
                                 train_seconds)
        finally:
            if metrics is not None:
                metrics.close()
        weights = None
        if self.world.sharded:  # every rank hands over its shards; the main rank publishes the whole
            from finetuned.worker import sharded

            weights = sharded.full_weights(self.loaded.model, trainable_only=config.method != "full")
        if not main:
            return
        result = summary(self.ws, config, self.loaded, self.data, progress, self.objective.name, first_loss,
                         record.get("val_loss"))
        publish(self.ws, self.order.job, config, self.loaded, result, weights)
        self.world.report(Completed(job_id=self.job_id, summary=result))

    def cleanup(self) -> None:
        """Nothing in flight when the job hands back control: the last checkpoint is durable and reported."""
        self.writer.join()
        self._report_written()

    def _totals(self, loss: torch.Tensor, extra: dict[str, torch.Tensor]) -> tuple[float, dict[str, float]]:
        """The step's loss and metrics over every rank's part, with one collective and one device sync."""
        values = self.world.total(torch.stack([loss, *extra.values()])).tolist()
        return values[0], dict(zip(extra, values[1:], strict=True))

    def _add_world(self, record: dict[str, Any]) -> None:
        """On several ranks, a logged step records their number and each one's memory (the monitor shows them)."""
        if self.world.size > 1:
            record["world_size"] = self.world.size
            record["rank_memory_gb"] = self.world.gather(memory_gb(self.world.device))

    @torch.no_grad()
    def _val_loss(self) -> float | None:
        model = self.step_model
        batches = list(self.data.holdout_batches())
        units = sum(self.objective.units(b) for b in batches)
        if not units:
            return None
        total = torch.zeros((), dtype=torch.float64, device=self.world.device)
        model.eval()
        try:
            for batch in self.world.shard(batches):
                total += self.step_objective.loss(model, batch)[0].double()
        finally:
            model.train()
        return self.world.total(total).item() / units

    # --- checkpoints ----------------------------------------------------
    def _save(self, wait: bool) -> str:
        """Checkpoint; with `wait` it is durable on return, else it is written beside the next steps.

        Every rank calls it (each one's random state goes into the file); the main rank writes: the weights
        and the optimizer state are the same on every rank.
        """
        rngs = self.world.gather(checkpoint.rng_state()) if self.world.size > 1 else None
        if self.world.sharded:
            return self._save_sharded(rngs)
        if not self.world.main:
            return ""
        snap = checkpoint.snapshot(self.progress, self.loaded.trainable(), self.optimizer, rngs)
        self._wait_for_space(disk.checkpoint_bytes(snap.weight_bytes))
        path = self.writer.save(self.job_dir, snap, self.config.lifecycle.keep_checkpoints, wait)
        self._report_written()
        return str(path)

    def _save_sharded(self, rngs: list[dict[str, Any]] | None) -> str:
        """Every rank writes its shards, at once (the write is a collective: it cannot run beside the steps)."""
        from finetuned.worker import sharded

        rng = checkpoint.rng_record(rngs) if self.world.main else None
        if self.world.main:
            params = self.loaded.trainable().values()
            self._wait_for_space(disk.checkpoint_bytes(sum(p.numel() * p.element_size() for p in params)))
        path = sharded.save(self.job_dir, self.progress.model_copy(), self.loaded.model, self.optimizer, rng,
                            self.config.lifecycle.keep_checkpoints)
        self.world.report(Checkpoint(job_id=self.job_id, step=self.progress.step, path=str(path)))
        return str(path)

    def _report_written(self) -> None:
        for step, path in self.writer.written():
            self.world.report(Checkpoint(job_id=self.job_id, step=step, path=str(path)))

    def _wait_for_space(self, need: int) -> None:
        """A full disk pauses the line (the daemon shows why) instead of failing a write half-way."""
        minimum = self.config.lifecycle.min_free_gb
        while not disk.enough_space(self.job_dir, need, minimum):
            with contextlib.suppress(ConfigError):  # a user may lower the threshold instead of freeing space
                minimum = self.ws.load_config().lifecycle.min_free_gb
            if disk.enough_space(self.job_dir, need, minimum):
                break
            reason = (f"{WAITING_FOR_DISK}: {disk.free_gb(self.job_dir):.2f} GB free, a checkpoint needs "
                      f"{need / 2**30:.2f} GB plus lifecycle.min_free_gb {minimum:g} GB")
            log.warning("job %s: %s", self.job_id, reason)
            self.world.report(Phase(job_id=self.job_id, phase=WAITING_FOR_DISK, reason=reason))
            time.sleep(DISK_POLL_SECONDS)

    # --- reports --------------------------------------------------------
    def _phase(self, phase: str) -> None:
        self.world.report(Phase(job_id=self.job_id, phase=phase))

    def _refuse(self, reason: str, report: dict[str, Any] | None) -> None:
        self.world.report(Failed(job_id=self.job_id, kind=FailKind.DATA, reason=reason, step=0, report=report))


def _prepare(file: Path, out: Path, tokenizer: Any, config: Config, max_len: int) -> dict[str, Any] | None:
    """Tokenise the job's file; the refusal's report, or None (a report crosses to other ranks, an error
    would not)."""
    try:
        prepare(file, out, tokenizer, config.data, max_len)
    except DataError as exc:
        return exc.report
    return None
