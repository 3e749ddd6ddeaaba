"""One optimizer step's gradient, on every rank, with micro-batches as small as memory needs.

Each rank computes its share of the step (data/loader.py `part`: whole rows, so a preference pair
never straddles two ranks), each micro-batch's loss divided by the units of the whole step, so the
ranks' losses and gradients sum to what one process computes. Then the ranks exchange, in one
collective, their losses, metric sums and whether they ran out of memory. An out-of-memory on any
rank makes every rank drop the step's gradient, cut its share's micro-batches in two (the ranks
keep making the same passes) and compute the step again: the loss stays the same. When even one row
a micro-batch does not fit, the job fails with the step's longest example named.

With strategy fsdp an out-of-memory inside a pass leaves the other ranks waiting in that pass's
collective: the daemon's step timeout ends the group (docs/scaling.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from finetuned.checkpoints import TrainingProgress
from finetuned.data import JobData
from finetuned.models import memory
from finetuned.models.precision import Precision
from finetuned.processes.protocol import Failed, FailKind, Phase
from finetuned.worker.objectives import Objective
from finetuned.worker.step import accumulate, means
from finetuned.worker.world import World

log = logging.getLogger(__name__)


@dataclass
class Fitted:
    batches: list[Any]  # the whole step's micro-batches, every rank's rows: what the progress counts
    loss: float  # the step's mean loss per unit
    metrics: dict[str, float]  # each metric's mean over the step


class Fitter:
    def __init__(self, world: World, data: JobData, model: torch.nn.Module, objective: Objective,
                 optimizer: torch.optim.Optimizer, job_id: str, tokenizer: Any, precision: Precision = "fp32") -> None:
        self.world, self.data, self.model, self.objective = world, data, model, objective
        self.optimizer, self.job_id, self.tokenizer, self.precision = optimizer, job_id, tokenizer, precision

    def step(self, progress: TrainingProgress) -> Fitted | None:
        """The next step's gradient (in the parameters' .grad, summed over the ranks by the caller), its loss and
        metrics; None when even one row at a time does not fit (the daemon has been told)."""
        world = self.world
        while True:
            whole = self.data.step_batches(progress.step)
            units = sum(self.objective.units(b) for b in whole)
            split = progress.micro_batch_split
            mine = whole if world.size == 1 and split == 1 else \
                self.data.step_batches(progress.step, split, (world.rank, world.size))
            error = ""
            loss, metrics = torch.zeros(()), {}
            try:
                with memory.phase(memory.TRAIN, progress.step + 1):
                    loss, metrics = accumulate(self.model, mine, self.objective, units, self.precision)
            except Exception as exc:  # only an out-of-memory is survived; its traceback is dropped here
                if not memory.is_out_of_memory(exc):
                    raise
                error = str(exc).splitlines()[0][:200]
            del mine
            mine_out = (loss.item(), error, {name: (float(v), c) for name, (v, c) in metrics.items()})
            shares = [mine_out] if world.size == 1 else world.gather(mine_out)
            errors = [e for _, e, _ in shares if e]
            if not errors:
                return Fitted(whole, sum(s[0] for s in shares), means(_summed(s[2] for s in shares)))
            self.optimizer.zero_grad(set_to_none=True)  # the micro-batches done before it are done again
            memory.free()
            rows = self.data.rows_per_batch(split, world.size)
            if rows <= 1:
                self._out_of_memory(progress, errors[0])
                return None
            progress.micro_batch_split *= 2
            smaller = self.data.rows_per_batch(progress.micro_batch_split, world.size)
            where = "" if world.size == 1 else " a rank"
            reason = (f"out of memory at step {progress.step + 1} with {rows} rows a micro-batch{where}; {smaller} "
                      f"from now on, {progress.micro_batch_split}x as many (same loss) ({errors[0]})")
            log.warning("job %s: %s", self.job_id, reason)
            world.report(Phase(job_id=self.job_id, phase="training", reason=reason))

    def _out_of_memory(self, progress: TrainingProgress, error: str) -> None:
        step = progress.step + 1
        example, tokens = self.data.longest_in_step(progress.step)
        ids, mask = self.data.store.example(example * self.data.per_example)
        begins = self.tokenizer.decode(ids[mask.astype(bool)][:24], skip_special_tokens=True)
        reason = (f"out of memory at step {step} even with one row a micro-batch; its longest sequence is example "
                  f"{example} ({tokens} tokens; its answer begins {begins!r}). Lower training.max_seq_len, or use "
                  f"training.activation_checkpointing or method qlora ({error})")
        log.error("job %s: %s", self.job_id, reason)
        self.world.report(Failed(job_id=self.job_id, kind=FailKind.MEMORY, step=step, reason=reason))


def _summed(parts: Any) -> dict[str, tuple[float, float]]:
    total: dict[str, tuple[float, float]] = {}
    for metrics in parts:
        for name, (value, count) in metrics.items():
            summed, seen = total.get(name, (0.0, 0.0))
            total[name] = (summed + value, seen + count)
    return total
