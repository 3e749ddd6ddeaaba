"""What a job optimises: one module per objective behind the `Objective` interface the step calls.

The method (lora, qlora, full) says which weights train; the objective says what
they are trained to do, and the data picks it: a file of conversations or text
trains supervised fine-tuning (`sft`), a file of chosen/rejected pairs trains
`preference.objective` (`dpo`, `orpo`, `simpo`), a file of answers judged good or
bad trains `kto`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from finetuned.config import PreferenceSettings
from finetuned.data.examples import PREFERENCE, UNPAIRED
from finetuned.data.examples import SFT as SFT_FORM
from finetuned.worker.objectives.base import Metrics, Objective
from finetuned.worker.objectives.dpo import DPO
from finetuned.worker.objectives.kto import KTO
from finetuned.worker.objectives.orpo import ORPO
from finetuned.worker.objectives.sft import SFT
from finetuned.worker.objectives.simpo import SimPO

__all__ = ["DPO", "KTO", "ORPO", "SFT", "Metrics", "Objective", "SimPO", "objective_for"]

PAIRS = {"dpo": DPO, "orpo": ORPO, "simpo": SimPO}


def objective_for(form: str, settings: PreferenceSettings, reference: Callable[[], np.ndarray]) -> Objective:
    """The objective a prepared file trains with; `reference` computes (or reads) its reference log-probabilities."""
    if form == SFT_FORM:
        return SFT()
    kind = KTO if form == UNPAIRED else PAIRS[settings.objective]
    assert form in (PREFERENCE, UNPAIRED)
    return kind(settings, reference() if kind.needs_reference else None)
