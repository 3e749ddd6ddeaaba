"""The monitor's questions for the model line ("Try it"), as files in `control/asks/`, and their one owner.

The monitor writes `ID.json`, the question; the daemon has it answered (by the training
worker between steps, or by the answerer while nothing trains) and writes
`ID.answer.json`, the answer and which weights gave it, then removes the question. So a
question is pending while its `ID.json` exists, and it is answered at most once: only the
daemon writes answers, from one thread, and never over an answer. Every file is written
atomically. At most MAX_PENDING questions wait at a time (the monitor refuses more); a
question nobody could answer within EXPIRE_SECONDS is answered with that; answers are kept
KEEP_SECONDS, the newest KEEP_ANSWERS of them.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError

from finetuned.errors import FinetunedError
from finetuned.fsio import atomic_write_json, read_json, remove_file
from finetuned.workspace import Workspace

log = logging.getLogger(__name__)

MAX_PENDING = 8
MAX_PROMPT_CHARS = 4000
EXPIRE_SECONDS = 600.0
KEEP_SECONDS = 24 * 3600.0
KEEP_ANSWERS = 50
ANSWER_SUFFIX = ".answer.json"
SUBMIT_LOCK = ".submit.lock"
ID = re.compile(r"^\d{8}_\d{6}_[0-9a-f]{8}$")

Answerer = Literal["worker", "answerer", "daemon"]  # who answered: "daemon" only says why nobody could


class Question(BaseModel):
    """`ID.json`, written by the monitor."""

    id: str = Field(pattern=ID.pattern)
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    system: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    asked: float  # unix time

    def messages(self) -> tuple[dict[str, str], ...]:
        head = ({"role": "system", "content": self.system},) if self.system else ()
        return (*head, {"role": "user", "content": self.prompt})


class Reply(Question):
    """`ID.answer.json`, written by the daemon: the question, its answer, and what gave it."""

    answered: float
    by: Answerer
    text: str = ""
    source: str = ""  # "job 20251116_014530 at step 12", "checkpoint 40 of job ... (line step 40)"
    job_id: str | None = None
    step: int | None = None
    line_step: int | None = None
    seconds: float | None = None
    error: str = ""


class AskError(FinetunedError):
    pass


Record = TypeVar("Record", bound=Question)


def _question_path(ws: Workspace, ask_id: str) -> Path:
    return ws.asks / f"{ask_id}.json"


def _answer_path(ws: Workspace, ask_id: str) -> Path:
    return ws.asks / f"{ask_id}{ANSWER_SUFFIX}"


def _files(ws: Workspace, answers: bool) -> list[Path]:
    try:
        names = sorted(p for p in ws.asks.iterdir() if p.name.endswith(".json") and not p.name.startswith("."))
    except OSError:
        return []
    return [p for p in names if p.name.endswith(ANSWER_SUFFIX) == answers]


def _read(path: Path, kind: type[Record]) -> Record | None:
    try:
        return kind.model_validate(read_json(path))
    except (OSError, ValueError, ValidationError):
        return None


def question(ws: Workspace, ask_id: str) -> Question | None:
    """The question, while it waits for its answer."""
    if not ID.match(ask_id) or _answer_path(ws, ask_id).exists():
        return None
    return _read(_question_path(ws, ask_id), Question)


def pending(ws: Workspace) -> list[Question]:
    """The questions waiting for an answer, oldest first."""
    found = [_read(p, Question) for p in _files(ws, answers=False)]
    return [q for q in found if q is not None and not _answer_path(ws, q.id).exists()]


def submit(ws: Workspace, prompt: str, system: str | None = None) -> Question:
    """Write a question for the daemon; AskError when MAX_PENDING already wait."""
    question = Question(id=f"{time.strftime('%Y%m%d_%H%M%S')}_{uuid.uuid4().hex[:8]}", prompt=prompt,
                        system=system or None, asked=time.time())
    with _one_submitter(ws):
        waiting = len(pending(ws))
        if waiting >= MAX_PENDING:
            raise AskError(f"{waiting} questions are waiting already; ask again once one is answered")
        atomic_write_json(_question_path(ws, question.id), question.model_dump())
    return question


@contextlib.contextmanager
def _one_submitter(ws: Workspace) -> Iterator[None]:
    """Counting and writing under one lock, so questions asked at the same moment never get past MAX_PENDING."""
    ws.asks.mkdir(parents=True, exist_ok=True)
    fd = os.open(ws.asks / SUBMIT_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # each open is its own lock holder: threads exclude each other too
        yield
    finally:
        os.close(fd)


def answer(ws: Workspace, question: Question, by: Answerer, **fields: Any) -> bool:
    """Record the answer and retire the question; False (nothing written) when it is answered or gone already."""
    if _answer_path(ws, question.id).exists() or not _question_path(ws, question.id).exists():
        return False
    reply = Reply(**question.model_dump(), answered=time.time(), by=by, **fields)
    atomic_write_json(_answer_path(ws, question.id), reply.model_dump())
    remove_file(_question_path(ws, question.id))
    return True


def view(ws: Workspace, ask_id: str) -> dict[str, Any] | None:
    """One question as the monitor shows it: answered (with its answer) or pending; None when unknown."""
    if not ID.match(ask_id):
        return None
    reply = _read(_answer_path(ws, ask_id), Reply)
    if reply is not None:
        return {"status": "answered", **reply.model_dump()}
    question = _read(_question_path(ws, ask_id), Question)
    return None if question is None else {"status": "pending", **question.model_dump()}


def recent(ws: Workspace, limit: int = 20) -> list[dict[str, Any]]:
    """The newest questions, pending and answered, newest first."""
    ids = {p.name.split(".", 1)[0] for p in _files(ws, True) + _files(ws, False)}
    shown = [v for v in (view(ws, ask_id) for ask_id in ids) if v is not None]
    return sorted(shown, key=lambda v: v["asked"], reverse=True)[:limit]


def clean(ws: Workspace, now: float | None = None) -> None:
    """The daemon's housekeeping: expire questions nobody answered, drop old answers and stray files."""
    now = time.time() if now is None else now
    for path in _files(ws, answers=False):
        question = _read(path, Question)
        if question is None:
            log.warning("%s is not a question the monitor wrote; removed", path.name)
            remove_file(path)
        elif now - question.asked > EXPIRE_SECONDS:
            answer(ws, question, "daemon", error=f"no answer within {EXPIRE_SECONDS / 60:.0f} minutes")
    replies = [(path, _read(path, Reply)) for path in _files(ws, answers=True)]
    for path, _ in (r for r in replies if r[1] is None):
        remove_file(path)
    newest = sorted((r for r in replies if r[1] is not None), key=lambda r: r[1].answered, reverse=True)
    for index, (path, reply) in enumerate(newest):
        if index >= KEEP_ANSWERS or now - reply.answered > KEEP_SECONDS:
            remove_file(path)
