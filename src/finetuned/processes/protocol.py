"""The messages between the daemon and its worker processes, one class each.

The daemon gives orders; the worker reports at optimizer-step boundaries. Each
message is a frozen dataclass sent over a `multiprocessing` pipe, and readers
match on the class, so a field renamed here is renamed everywhere.

    daemon -> training worker   Train, Yield, Ask, Shutdown
    daemon -> preparer          Prepare, Shutdown
    daemon -> model checker     CheckModel, Shutdown
    daemon -> answerer          Ask, Shutdown
    worker -> daemon            Ready, Phase, Started, Step, Checkpoint, Yielded, Completed, Failed, Answer
    preparer -> daemon          Ready, Prepared, Failed
    model checker -> daemon     Ready, ModelChecked
    answerer -> daemon          Ready, Answer

A control's one vocabulary on its way from the file to the ranks is `YieldReason`: the daemon asks
with it, the ranks agree on it (`YieldReason.code`), the worker answers with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from finetuned.config import Config
from finetuned.controls import Control
from finetuned.errors import FailKind
from finetuned.queue.job import Job


class YieldReason(str, Enum):
    """Why the daemon asks the worker to checkpoint and hand back control: the one vocabulary of a control
    from its file (`of`) through the ranks (`code`) to the ending of the run (`control`, used up then)."""

    PAUSE = "pause"
    STOP = "stop"
    SKIP = "skip"
    PREEMPT = "preempt"  # priority work arrived
    SHUTDOWN = "shutdown"  # the daemon is stopping

    @classmethod
    def of(cls, control: Control) -> YieldReason:
        return cls(control.value)

    @property
    def control(self) -> Control | None:
        """The control file this reason answers, if a file asked for it."""
        return next((c for c in Control if c.value == self.value), None)

    @property
    def code(self) -> int:
        """As it crosses the ranks in a tensor: 1 and up (0 is "go on")."""
        return list(YieldReason).index(self) + 1

    @classmethod
    def from_code(cls, code: int) -> YieldReason | None:
        return list(YieldReason)[code - 1] if code else None


WAITING_FOR_DISK = "waiting for disk space"  # the phase of a worker held by a full disk


# --- orders -----------------------------------------------------------------
@dataclass(frozen=True)
class Train:
    """Train this job until it ends or is told to yield. `job` is its record as the daemon holds it."""

    job: Job
    file: Path
    config: Config
    line_exclude: frozenset[str] = frozenset()  # jobs the continuous line must not continue from


@dataclass(frozen=True)
class Yield:
    """Checkpoint at the next step boundary, report `Yielded`, and wait for the next order."""

    reason: YieldReason


@dataclass(frozen=True)
class Shutdown:
    """Exit: the model's memory goes with the process."""


@dataclass(frozen=True)
class Ask:
    """A question for the model line (the monitor's "Try it"): greedy, so answering draws no random numbers.

    The training worker answers it between steps, within the previews' budget, on the live model;
    the answerer, while nothing trains, with the line's newest checkpoint or its current version.
    """

    id: str
    messages: tuple[dict[str, str], ...]  # the conversation, the user's turn last
    max_new_tokens: int
    seconds: float  # the generation's hard time limit


@dataclass(frozen=True)
class Prepare:
    """Tokenise a queued file ahead of its turn."""

    job_id: str
    file: Path
    sha256: str | None
    config: Config


@dataclass(frozen=True)
class CheckModel:
    """Can `config` train? (models/check.py) `key` names the settings checked, for the answer."""

    key: str
    config: Config


# --- reports ----------------------------------------------------------------
@dataclass(frozen=True)
class Ready:
    pid: int


@dataclass(frozen=True)
class Phase:
    """What the worker is doing before or between steps (loading, tokenising, waiting for disk); a heartbeat too."""

    job_id: str
    phase: str
    reason: str = ""  # why it is held up, when it is


@dataclass(frozen=True)
class Started:
    job_id: str
    step: int
    total_steps: int
    examples: int
    resumed_from: str | None  # the checkpoint the job's own progress came from
    warnings: tuple[str, ...] = ()  # what preparing its data found worth saying (dropped examples, placeholders)


@dataclass(frozen=True)
class Step:
    job_id: str
    step: int
    total_steps: int
    loss: float
    lr: float
    tokens: int
    examples: int
    step_seconds: float


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint became durable."""

    job_id: str
    step: int
    path: str


@dataclass(frozen=True)
class Yielded:
    job_id: str
    reason: YieldReason
    step: int
    checkpoint: str


@dataclass(frozen=True)
class Completed:
    """Every step trained and the adapter published; `summary` is what job.json adds to the record."""

    job_id: str
    summary: dict[str, Any]


@dataclass(frozen=True)
class Prepared:
    job_id: str


@dataclass(frozen=True)
class ModelChecked:
    key: str
    error: str | None  # one line naming the setting, or None: it can train
    summary: str = ""


@dataclass(frozen=True)
class Failed:
    job_id: str
    kind: FailKind
    reason: str
    step: int | None = None  # the step that failed, when one did
    report: dict[str, Any] | None = None  # the NAME.error.json body, for DATA
    traceback: str = field(default="", repr=False)
    worker_exits: bool = False  # a CRASH that ends the worker too (a group of ranks): the next job needs a new one


@dataclass(frozen=True)
class Answer:
    """What the model answered to an `Ask`, and which weights did: `source` says it in words."""

    id: str
    text: str
    source: str  # "job 20251116_014530 at step 12", "checkpoint 40 of job ...", "tiny-v2"
    job_id: str | None  # the job whose weights answered, when a job's did
    step: int | None  # that job's step, when the training worker answered
    line_step: int | None  # the model line's step count of those weights
    seconds: float
    error: str = ""  # why there is no answer, when there is none


Order = Train | Yield | Shutdown | Prepare | CheckModel | Ask
Report = (Ready | Phase | Started | Step | Checkpoint | Yielded | Completed | Prepared | ModelChecked | Failed
          | Answer)
Message = Order | Report
