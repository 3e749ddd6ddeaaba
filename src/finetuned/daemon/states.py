"""The session's states, and what a control file does in each: one table.

The daemon reads the pending control (controls.py picks it by precedence), looks up the session's
state and that control here, and carries out the action; nothing else decides what a control does.
"""

from __future__ import annotations

from enum import Enum

from finetuned.controls import Control


class SessionState(str, Enum):
    IDLE = "idle"  # no job in the worker
    STARTING = "starting"  # a job handed to the worker, not training yet (loading, tokenising)
    TRAINING = "training"
    YIELDING = "yielding"  # asked to checkpoint and hand back; the session's `yielding` says why
    PAUSED = "paused"  # a paused job, its model still loaded in the worker
    RELEASED = "released"  # a paused job whose worker was let go with its memory


class Action(str, Enum):
    YIELD = "yield"  # ask the worker to checkpoint for this control at the next step boundary
    GO_ON = "go on"  # nothing asked: only priority work waiting may preempt the job
    WAIT = "wait"  # a yield is under way: its answer decides
    END = "end"  # the paused job leaves the worker the way the control says (requeued, skipped)
    RESUME = "resume"  # the pause was lifted: the job goes on once the settings can train
    HOLD = "hold"  # stay paused (the model is released after control.pause_release_after_seconds)
    DISCARD = "discard"  # a stop or skip with nothing to act on is removed
    SCHEDULE = "schedule"  # nothing in the worker: the next job may start (unless a pause holds the queue)


A, S = Action, SessionState
COLUMNS = (None, Control.PAUSE, Control.STOP, Control.SKIP)
ROWS = {  #       no control    .pause     .stop      .skip
    S.IDLE:     (A.SCHEDULE, A.HOLD,  A.DISCARD, A.DISCARD),
    S.STARTING: (A.GO_ON,    A.YIELD, A.YIELD,   A.YIELD),
    S.TRAINING: (A.GO_ON,    A.YIELD, A.YIELD,   A.YIELD),
    S.YIELDING: (A.WAIT,     A.WAIT,  A.WAIT,    A.WAIT),
    S.PAUSED:   (A.RESUME,   A.HOLD,  A.END,     A.END),
    S.RELEASED: (A.RESUME,   A.HOLD,  A.END,     A.END),
}
ACTIONS: dict[tuple[SessionState, Control | None], Action] = {
    (state, control): action for state, row in ROWS.items() for control, action in zip(COLUMNS, row, strict=True)}

# What status.json says of each state (a full disk or a failed settings check say more: daemon.py).
PUBLISHED = {S.IDLE: "idle", S.STARTING: "training", S.TRAINING: "training", S.YIELDING: "training",
             S.PAUSED: "paused", S.RELEASED: "paused"}
