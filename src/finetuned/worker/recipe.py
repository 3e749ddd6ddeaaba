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

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finetuned import checkpoints
from finetuned.checkpoints import TrainingProgress
from finetuned.config import Config
from finetuned.data import DataError, JobData, is_current, prepare
from finetuned.data.examples import SFT
from finetuned.fsio import sha256_file
from finetuned.models.loading import ModelError
from finetuned.processes.protocol import (
    Ask,
    Completed,
    Failed,
    FailKind,
    Phase,
    Started,
    Step,
    Train,
    Yield,
    Yielded,
)
from finetuned.worker import tensors
from finetuned.worker.answering import Asks
from finetuned.worker.cache import Loaded, ModelCache
from finetuned.worker.fitting import Fitter
from finetuned.worker.lr_schedule import lr_at
from finetuned.worker.measure import Measurements
from finetuned.worker.metrics import MetricsLog
from finetuned.worker.objectives import Objective, objective_for
from finetuned.worker.objectives.reference import REFERENCE, reference_logps
from finetuned.worker.previews import Previewer
from finetuned.worker.publish import publish, summary
from finetuned.worker.saver import Saver, copy_weights
from finetuned.worker.step import update
from finetuned.worker.stopping import observe
from finetuned.worker.world import World, memory_gb
from finetuned.workspace import Workspace

log = logging.getLogger(__name__)


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
    warnings: list[str]  # what preparing the data found worth saying, as the daemon's record holds it

    def __init__(self, ws: Workspace, order: Train, cache: ModelCache, world: World) -> None:
        self.ws = ws
        self.order = order
        self.job_id = order.job.id
        self.config = order.config
        self.cache = cache
        self.world = world
        self.job_dir = ws.job_checkpoints(self.job_id)
        self.saver = Saver(ws, self.job_id, world)
        self._dropout: dict[torch.nn.Module, float] = {}  # rates set aside for this job, put back at its end

    # --- setup ----------------------------------------------------------
    def setup(self) -> bool:
        """Build what the job needs; False when it cannot train (the daemon has been told why)."""
        try:
            self.loaded = self.cache.get(self.config, self.world, lambda: self._phase("loading model"))
        except ModelError as exc:  # the settings cannot train: no retry can change that
            self.world.report(Failed(job_id=self.job_id, kind=FailKind.CONFIG, reason=str(exc), step=0))
            return False
        try:
            self.data = self._setup_data()
        except DataError as exc:
            self._refuse(str(exc), exc.report)
            return False
        if self.data.total_steps == 0:
            error = "the data gives no training step"
            self._refuse(error, {"file": self.order.job.file, "error": error, "problems": []})
            return False
        if self.world.sharded and self.data.form != SFT:
            reason = "preference objectives train with distributed.strategy ddp, not fsdp (docs/scaling.md)"
            self.world.report(Failed(job_id=self.job_id, kind=FailKind.CONFIG, reason=reason, step=0))
            return False
        self.optimizer = self._setup_optimizer()
        self.progress, resumed_from = self._setup_state()
        log.info("job %s: precision %s (%s)", self.job_id, self.loaded.precision, self.loaded.precision_reason)
        self.objective = objective_for(self.data.form, self.config.preference, self._reference)
        if self.objective.name != "sft":
            self._quiet_dropout()
        # What a step computes the loss with: the model, or (sharded) its root unit (worker/sharded.py).
        self.step_model, self.step_objective = self.world.runner(self.loaded.model, self.objective)
        self.warnings = [note["message"] for note in self.data.meta.get("notes") or []]
        self.world.report(Started(job_id=self.job_id, step=self.progress.step, total_steps=self.data.total_steps,
                                  examples=self.data.n_train, resumed_from=resumed_from,
                                  warnings=tuple(self.warnings)))
        return True

    def _setup_data(self) -> JobData:
        config, tokenizer = self.config, self.loaded.tokenizer
        out = self.ws.tokenized / self.job_id
        max_len = config.training.max_seq_len
        sha256 = self.order.job.sha256 or sha256_file(self.order.file)
        # The main rank alone writes the token cache; every rank gets its verdict (world.py).
        if self.world.from_main(lambda: not is_current(out, sha256, tokenizer, config.data, max_len)):
            self._phase("tokenising")
            refused = self.world.from_main(lambda: _prepare(self.order.file, out, tokenizer, config, max_len))
            if refused is not None:
                raise DataError(refused)
        t = config.training
        return JobData.open(
            out, batch_size=t.batch_size, grad_accum=t.grad_accum, epochs=t.epochs, max_steps=t.max_steps,
            max_seq_len=t.max_seq_len, packing=config.data.packing, holdout_fraction=config.data.holdout_fraction,
            max_holdout=config.data.max_holdout, seed=t.seed, pad_id=tokenizer.pad_token_id,
        )

    def _reference(self) -> np.ndarray:
        """Reference log-probabilities: the weights the job starts from (kept beside its tokens; the main rank
        computes and writes them, every rank gets them)."""
        folder = self.ws.tokenized / self.job_id
        if self.progress.step and not (folder / REFERENCE).exists():
            log.warning("job %s: its reference log-probabilities are gone (its data was prepared again); "
                        "they are taken from the weights at step %d", self.job_id, self.progress.step)
        self._phase("scoring with the reference")
        return self.world.from_main(lambda: reference_logps(self.loaded.model, self.data, folder,
                                                            self.loaded.precision))

    def _quiet_dropout(self) -> None:
        """Preference losses compare log-probabilities: no dropout for this job, as TRL and LLaMA-Factory do."""
        for module in self.loaded.model.modules():
            if isinstance(module, torch.nn.Dropout) and module.p:
                self._dropout[module] = module.p
                module.p = 0.0

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
                                           set(self.order.line_exclude), config.training.init_adapter)
        progress = TrainingProgress(
            job_id=self.job_id, step=0, total_steps=self.data.total_steps, line_step=0, seed=config.training.seed,
            base_model=config.base_model, base_hash=loaded.base_hash, method=config.method,
            mode=config.training.mode, init_adapter=config.training.init_adapter,
        )
        rank = self.world.rank
        if source is None:
            copy_weights(loaded, loaded.fresh)
            tensors.seed_rank(config.training.seed, rank)
        else:
            self.saver.restore(source[1], loaded, self.optimizer)
            if not tensors.load_rng(source[1], rank):  # saved on fewer ranks than train now
                tensors.seed_rank(config.training.seed, rank, source[0].line_step)
            progress.line_step = source[0].line_step
        if own is not None:
            kept = own[0].model_dump(include={"step", "tokens", "loss_tokens", "examples", "last_loss", "first_loss",
                                              "best_value", "best_step", "stale_measurements", "micro_batch_split"})
            progress = progress.model_copy(update=kept)
        if config.training.mode == "independent":
            progress.line_step = progress.step
        loaded.dirty = True
        return progress, str(own[1]) if own else None

    # --- the loop -------------------------------------------------------
    def train(self) -> None:
        config, t, progress = self.config, self.config.training, self.progress
        model = self.loaded.model
        params = list(self.loaded.trainable().values())
        main = self.world.main  # the one rank that writes the job's files
        metrics = MetricsLog(self.ws.metrics_file(self.job_id), self.ws.tensorboard_dir(self.job_id)) if main else None
        previews = Previewer(config.previews, self.loaded.tokenizer, self.ws.previews_file(self.job_id))
        asks = Asks(self.loaded.tokenizer, previews, self.job_id, self.world.report)
        fitter = Fitter(self.world, self.data, self.step_model, self.step_objective, self.optimizer, self.job_id,
                        self.loaded.tokenizer, self.loaded.precision)
        train_seconds = 0.0  # this run's time in steps: the previews' and evaluations' budgets are shares of it
        record: dict[str, Any] = {}
        stopped: dict[str, Any] | None = None
        measure = Measurements(self.ws, self.job_id, config, self.loaded, self.data, self.step_objective, progress,
                               self.world, self.step_model)
        model.train()
        try:
            while progress.step < progress.total_steps:
                order = self._order(asks, train_seconds)
                self.saver.report_written()
                if order is not None:
                    path = self._save(wait=True)
                    self.world.barrier()  # every rank has stopped at this step and the checkpoint is durable
                    self.world.report(Yielded(job_id=self.job_id, reason=order.reason, step=progress.step,
                                              checkpoint=str(path)))
                    return
                started = time.time()
                fitted = fitter.step(progress)
                if fitted is None:
                    return
                batches, loss_sum = fitted.batches, fitted.loss
                if not math.isfinite(loss_sum):  # fail before the step: memory keeps the last good weights
                    self.optimizer.zero_grad(set_to_none=True)
                    self.world.report(Failed(job_id=self.job_id, kind=FailKind.DIVERGED, step=progress.step + 1,
                                             reason=f"loss became {loss_sum} at step {progress.step + 1}"))
                    return
                self.world.sync_gradients(params)
                lr = lr_at(progress.line_step, t, progress.step, progress.total_steps)
                update(self.optimizer, params, lr, t.max_grad_norm)
                progress.step += 1
                progress.line_step += 1
                progress.tokens += sum(b.n_tokens for b in batches)
                progress.loss_tokens += sum(b.n_loss_tokens for b in batches)
                progress.examples += sum(b.n_examples for b in batches)
                progress.last_loss = loss_sum
                if progress.step == 1:
                    progress.first_loss = loss_sum  # kept in every checkpoint: a resumed run reports it too
                elapsed = time.time() - started
                train_seconds += elapsed
                done = progress.step == progress.total_steps
                record = {
                    "step": progress.step, "line_step": progress.line_step, "loss": loss_sum, "lr": lr,
                    "tokens": progress.tokens, "step_seconds": round(elapsed, 4), "time": time.time(),
                    "tokens_per_second": round(sum(b.n_tokens for b in batches) / max(elapsed, 1e-9), 1),
                    **fitted.metrics,
                }
                # Measure before the checkpoint of this step: the early-stopping state it updates is then in it.
                checkpoint_due = done or progress.step % t.checkpoint_every_steps == 0
                measure(record, checkpoint_due, done, train_seconds)
                verdict = observe(t.early_stopping, progress, record.get(t.early_stopping.key)) \
                    if t.early_stopping else None
                stop = verdict is not None and verdict.stop
                # The step's line before its checkpoint: a checkpoint that becomes durable (and a kill right after)
                # must never leave a step the resumed run will not train again without its line.
                if done or stop or progress.step == 1 or progress.step % t.log_every_steps == 0:
                    self._add_world(record)
                    if metrics is not None:
                        metrics.write(record)
                        log.info("job %s step %d/%d loss %.4f lr %.2e%s", self.job_id, progress.step,
                                 progress.total_steps, loss_sum, lr,
                                 f" val_loss {record['val_loss']:.4f}" if "val_loss" in record else "")
                if checkpoint_due or stop or (verdict is not None and verdict.improved):
                    self._save(wait=done or stop)
                if stop:
                    stopped = {"step": progress.step, "metric": t.early_stopping.metric, "reason": verdict.reason,
                               "best_step": progress.best_step, "best_value": progress.best_value}
                    log.info("job %s: early_stopped at step %d: %s", self.job_id, progress.step, verdict.reason)
                self.world.report(Step(job_id=self.job_id, step=progress.step, total_steps=progress.total_steps,
                                       loss=loss_sum, lr=lr, tokens=progress.tokens, examples=progress.examples,
                                       step_seconds=elapsed))
                # Previews run on the main rank's whole model; a sharded one runs only on every rank at once.
                if main and not self.world.sharded and previews.due(progress.step):
                    previews.run(model, self.data.holdout_examples(config.previews.examples), progress.step,
                                 train_seconds)
                if stop:
                    break
        finally:
            if metrics is not None:
                metrics.close()
        published = self._weights_to_publish()
        weights = None
        if self.world.sharded:  # every rank hands over its shards; the main rank publishes the whole
            from finetuned.worker import sharded

            weights = sharded.full_weights(self.loaded.model, trainable_only=config.method != "full")
        if not main:
            return
        result = summary(self.ws, config, self.loaded, self.data, progress, self.objective.name,
                         progress.first_loss, record.get("val_loss"))
        result["published_step"] = published
        if measure.scores or progress.best_step is not None:
            best = None if progress.best_step is None else {
                "metric": t.early_stopping.metric if t.early_stopping else None, "step": progress.best_step,
                "value": progress.best_value}
            result["evaluation"] = {"scores": measure.scores, "best": best}
        if stopped is not None:
            result["early_stopped"] = stopped
        publish(self.ws, self.order.job.model_copy(update={"warnings": self.warnings}), config, self.loaded, result,
                weights)
        self.world.report(Completed(job_id=self.job_id, summary=result))

    def _order(self, asks: Asks, train_seconds: float) -> Yield | None:
        """The daemon's order at this boundary; the questions that come with it are answered here."""
        while isinstance(order := self.world.order(self.progress.step), Ask):  # on the main rank alone
            asks.take(order)
            if self.world.sharded:  # the main rank holds a part of the weights: it cannot answer alone
                asks.refuse(f"the live model is sharded over {self.world.size} ranks (distributed.strategy fsdp)")
            asks.answer(self.loaded.model, self.progress, train_seconds)
        asks.answer(self.loaded.model, self.progress, train_seconds)  # those that waited for the budget
        return order

    def _weights_to_publish(self) -> int:
        """The step whose weights become the adapter: the last, or the best (`evaluation.publish: best`)."""
        progress, best = self.progress, self.progress.best_step
        if best is None:
            return progress.step

        def mark() -> Path | None:
            self.saver.join()  # the best checkpoint is durable before it is marked or read
            return checkpoints.mark_best(self.job_dir, best)

        marked = self.world.from_main(mark)
        if self.config.evaluation.publish != "best" or best == progress.step or marked is None:
            return progress.step
        self.saver.restore(marked, self.loaded, self.optimizer)
        log.info("job %s: publishing the weights of step %d, its best", self.job_id, best)
        return best

    def cleanup(self) -> None:
        """Nothing in flight when the job hands back control: the last checkpoint is durable and reported;
        the cached model is as the next job expects it."""
        for module, rate in self._dropout.items():
            module.p = rate
        self.saver.join()

    def _add_world(self, record: dict[str, Any]) -> None:
        """On several ranks, a logged step records their number and each one's memory (the monitor shows them)."""
        if self.world.size > 1:
            record["world_size"] = self.world.size
            record["rank_memory_gb"] = self.world.gather(memory_gb(self.world.device))

    # --- checkpoints ----------------------------------------------------
    def _save(self, wait: bool) -> str:
        return self.saver.save(self.progress, self.loaded, self.optimizer, self.config, wait)

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
