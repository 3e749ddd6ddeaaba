"""What a job optimises: one module per objective behind the `Objective` interface the step calls.

The method (lora, qlora, full) says which weights train; the objective says
what they are trained to do. A job's objective follows from its data: today
every file trains supervised fine-tuning (`sft`).
"""

from __future__ import annotations

from finetuned.worker.objectives.base import Objective
from finetuned.worker.objectives.sft import SFT

__all__ = ["SFT", "Objective", "objective_for"]


def objective_for(data_meta: dict[str, object] | None) -> Objective:
    """The objective a prepared file trains with (its meta.json says what form the data has)."""
    return SFT()
