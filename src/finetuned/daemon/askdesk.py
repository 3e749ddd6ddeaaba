"""Who answers the monitor's questions (`control/asks/`): the training worker, or the answerer.

While a job trains, a question goes to the training worker over its pipe; the worker
answers it at the next step boundary on the live model, within the previews' budget
(worker/answering.py). While nothing trains (idle, or the job paused), it goes to the answerer,
a short-lived process that loads the line's newest checkpoint, else the current version
(lifecycle/answerer.py). The daemon owns both, so there is one decision and no fight over
memory: the answerer is ended before a job starts, its questions going to the worker, and is
shut down after ANSWERER_IDLE_SECONDS with nothing to answer. A question sent to a process
that can no longer answer it (the job ended, the answerer died) is sent again; the first
answer that comes is the one recorded (`asks.answer` never writes over one).
"""

from __future__ import annotations

import logging
import time

from finetuned import asks
from finetuned.asks import Answerer, Question
from finetuned.config import Config
from finetuned.daemon.session import Session
from finetuned.processes.handle import ChildHandle
from finetuned.processes.protocol import Answer, Ask
from finetuned.workspace import Workspace

log = logging.getLogger("finetuned.daemon")

ANSWERER_IDLE_SECONDS = 60.0
CLEAN_SECONDS = 30.0
ANSWERER = "answerer"
ANSWERER_PROGRAM = "finetuned.lifecycle.answerer"


class AskDesk:
    def __init__(self, ws: Workspace, session: Session) -> None:
        self.ws = ws
        self.session = session
        self.answerer = ChildHandle(str(ws.root), ANSWERER_PROGRAM, ANSWERER)  # started by the first question
        self.sent: dict[str, str] = {}  # question id -> who has it: a job id (its worker) or ANSWERER
        self._last_asked = 0.0
        self._cleaned = 0.0

    @property
    def busy(self) -> bool:
        """Questions are out: the daemon polls often until they come back."""
        return bool(self.sent)

    def tick(self, config: Config, answerer_allowed: bool = True) -> None:
        """Record answers, send what waits; `answerer_allowed` False (a consolidation runs, the daemon stops)
        keeps questions that need the answerer waiting."""
        for report in self.session.take_answers():
            self._record(report, "worker")
        self._read_answerer()
        if time.time() - self._cleaned > CLEAN_SECONDS:
            self._cleaned = time.time()
            asks.clean(self.ws)
        waiting = asks.pending(self.ws)
        ids = {q.id for q in waiting}
        self.sent = {qid: who for qid, who in self.sent.items() if qid in ids and self._can_answer(who)}
        for question in waiting:
            if question.id not in self.sent:
                self._send(question, config, answerer_allowed)
        if self.answerer.started and ANSWERER not in self.sent.values() \
                and time.time() - self._last_asked > ANSWERER_IDLE_SECONDS:
            log.info("answerer: nothing asked for %.0fs; it exits", ANSWERER_IDLE_SECONDS)
            self._end_answerer(kill=False)

    def make_way(self) -> None:
        """A job is about to start: the answerer goes (with its memory); the worker takes its questions."""
        if self.answerer.started:
            log.info("answerer: a job starts; it exits and the training worker answers from now on")
            self._end_answerer(kill=True)

    def close(self) -> None:
        self._end_answerer(kill=False)

    def abandon(self) -> None:
        """The disk is full: the answerer goes; its questions wait in their files and are sent again later."""
        self._end_answerer(kill=True)

    # --- sending ---------------------------------------------------------
    def _can_answer(self, who: str) -> bool:
        if who == ANSWERER:
            return self.answerer.started
        job = self.session.job
        return self.session.training and job is not None and job.id == who

    def _send(self, question: Question, config: Config, answerer_allowed: bool) -> None:
        session = self.session
        ask = Ask(id=question.id, messages=question.messages(), max_new_tokens=config.previews.max_new_tokens,
                  seconds=config.previews.seconds)
        if session.training and session.yielding is None and session.worker is not None:
            assert session.job is not None
            if session.worker.send(ask):
                self.sent[question.id] = session.job.id
        elif (session.job is None or session.paused) and (answerer_allowed or self.answerer.started) \
                and self.answerer.send(ask):
            self.sent[question.id] = ANSWERER
            self._last_asked = time.time()
        # else a job is yielding (its next state decides who answers), or the answerer must wait

    # --- answers ---------------------------------------------------------
    def _read_answerer(self) -> None:
        for report in self.answerer.receive():
            if isinstance(report, Answer):
                self._record(report, "answerer")
        self.answerer.exited()

    def _record(self, report: Answer, by: Answerer) -> None:
        self.sent.pop(report.id, None)
        question = asks.question(self.ws, report.id)
        if question is None:
            return  # answered already, or expired: the first answer stands
        written = asks.answer(self.ws, question, by, text=report.text, source=report.source, job_id=report.job_id,
                              step=report.step, line_step=report.line_step, seconds=report.seconds,
                              error=report.error)
        if written and report.error:
            log.warning("ask %s: %s", report.id, report.error)
        elif written:
            log.info("ask %s answered by %s in %.1fs", report.id, report.source, report.seconds)

    def _end_answerer(self, kill: bool) -> None:
        if kill:
            self.answerer.abandon()
        else:
            self.answerer.shutdown()
        self.sent = {qid: who for qid, who in self.sent.items() if who != ANSWERER}
