"""What the loop measures beside the training loss: the held-out loss, the evaluation suites.

Both run between steps on the loaded model, in eval mode and without gradients, so measuring
never changes a training run. The suites run when due (`evaluation.every_steps`, by default at
each checkpoint) and while their time stays within `evaluation.budget` of the training time (a
round stops where the budget ends, the first one too); they always run at the job's end, for the
scores its record keeps. A round gives way to a control waiting for the loop (pause, stop, skip,
priority work, shutdown): it is abandoned, scores nothing and says so, so evaluation never sits
inside a control's latency. The daemon shows the phase "evaluating" meanwhile.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from finetuned.checkpoints import TrainingProgress
from finetuned.config import Config
from finetuned.data import JobData
from finetuned.evaluation.runner import Evaluator
from finetuned.evaluation.suites import EvalError, Suite, load_suites
from finetuned.models import memory
from finetuned.models.precision import autocast
from finetuned.processes.protocol import Phase
from finetuned.worker.cache import Loaded
from finetuned.worker.objectives import Objective
from finetuned.worker.world import World
from finetuned.workspace import Workspace

log = logging.getLogger(__name__)


class Measurements:
    def __init__(self, ws: Workspace, job_id: str, config: Config, loaded: Loaded, data: JobData,
                 objective: Objective, progress: TrainingProgress, world: World,
                 model: torch.nn.Module | None = None) -> None:
        """`model`, `objective`: what a step computes the loss with (world.runner)."""
        self.config, self.loaded, self.data, self.objective, self.progress = config, loaded, data, objective, progress
        self.world, self.job_id = world, job_id
        self.model = model if model is not None else loaded.model
        self.scores: dict[str, float] = {}  # the last suite scores
        self.spent = 0.0  # seconds evaluation took in this run
        self.split = 1  # holdout batches cut into this many after an out-of-memory
        self.suites: list[Suite] = []
        try:
            self.suites = load_suites(ws.evals)
        except EvalError as exc:  # a broken suite never stops training: it is named in the log
            log.error("job %s: evaluation suites are not run: %s", job_id, exc)
        self.evaluator = Evaluator(loaded.tokenizer, config.evaluation) if self.suites else None
        stopping = config.training.early_stopping
        if stopping is not None and not self._measured(stopping.metric):
            why = "no held-out examples" if stopping.metric == "val_loss" else "no such suite in evals/"
            log.warning("job %s: training.early_stopping.metric %s is never measured (%s): it cannot stop early",
                        job_id, stopping.metric, why)

    def _measured(self, metric: str) -> bool:
        if metric == "val_loss":
            return bool(self.data.n_holdout)
        return any(f"eval:{suite.name}" == metric for suite in self.suites)

    def __call__(self, record: dict[str, Any], checkpoint_due: bool, done: bool, train_seconds: float) -> None:
        """Add to `record` what is due at this step: `val_loss` at checkpoints, `eval/SUITE` when due."""
        if checkpoint_due:
            val_loss = self.val_loss()
            if val_loss is not None:
                record["val_loss"] = val_loss
        if self.evaluator is None:
            return
        every, step = self.config.evaluation.every_steps, self.progress.step
        if not (done or (checkpoint_due if every is None else bool(every) and step % every == 0)):
            return
        if self.world.sharded:  # generation needs the whole model: a rank holds a part of it
            log.info("evaluation at step %d skipped: the model is sharded over the ranks", step)
            return
        # The main rank's clock decides for every rank: they must all take part in its evaluation, or none.
        budget = self.config.evaluation.budget * train_seconds
        if not done and self.world.from_main(lambda: self.spent >= budget):
            log.info("evaluation at step %d skipped: it is ahead of its %.0f%% budget", step,
                     100 * self.config.evaluation.budget)
            return
        started = time.monotonic()
        until = float("inf") if done else started + max(budget - self.spent, 0.0)
        evaluator, suites, world = self.evaluator, self.suites, self.world
        world.report(Phase(job_id=self.job_id, phase="evaluating"))
        scores = world.from_main(lambda: evaluator.run(self.loaded.model, suites, world.yield_waiting, until))
        seconds = time.monotonic() - started
        self.spent += seconds
        if scores is None:
            log.info("evaluation at step %d abandoned after %.1fs: a control is waiting (no score logged)", step,
                     seconds)
            return
        self.scores = scores
        record.update({f"eval/{name}": score for name, score in self.scores.items()})
        record["eval_seconds"] = round(seconds, 3)

    def val_loss(self) -> float | None:
        """The held-out loss, each rank computing its share; its batches are cut in two after an out-of-memory
        on any rank, like training's."""
        ranks = self.world.size
        while True:
            total, units, error = 0.0, 0, ""
            try:
                with memory.phase(memory.EVAL):
                    total, units = self._val_loss()
            except Exception as exc:
                if not memory.is_out_of_memory(exc):
                    raise
                error = str(exc).splitlines()[0][:200]
            shares = [(total, units, error)] if ranks == 1 else self.world.gather((total, units, error))
            errors = [e for _, _, e in shares if e]
            if not errors:
                units = sum(u for _, u, _ in shares)
                return sum(t for t, _, _ in shares) / units if units else None
            memory.free()
            if self.data.rows_per_batch(self.split, ranks) <= 1:
                log.warning("validation loss not measured: out of memory one row at a time (%s)", errors[0])
                return None
            self.split *= 2
            log.warning("validation: out of memory; %d rows a batch from now on (%s)",
                        self.data.rows_per_batch(self.split, ranks), errors[0])

    @torch.no_grad()
    def _val_loss(self) -> tuple[float, int]:
        """This rank's share of the held-out loss sum, and of its units."""
        model, objective = self.model, self.objective
        total, units = 0.0, 0
        model.eval()
        try:
            for batch in self.data.holdout_batches(self.split, (self.world.rank, self.world.size)):
                with autocast(self.world.device, self.loaded.precision):  # as training computes it: comparable
                    loss = objective.loss(model, batch)[0]
                if objective.units(batch):  # an idle pass (data/batches.py) counts nothing
                    total += loss.item()
                    units += objective.units(batch)
        finally:
            model.train()
        return total, units
