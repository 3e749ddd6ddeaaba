"""The monitor's questions as files: a bounded queue, answered at most once, cleaned up."""

from __future__ import annotations

import json
import os

import pytest

from finetuned import asks
from finetuned.workspace import Workspace


@pytest.fixture
def ws(tmp_path) -> Workspace:
    ws = Workspace.at(tmp_path / "ws")
    ws.create()
    return ws


def test_a_question_is_pending_until_answered_and_then_shows_its_answer(ws):
    question = asks.submit(ws, "Say hi.", system="Be brief.")
    assert [q.id for q in asks.pending(ws)] == [question.id]
    assert asks.view(ws, question.id)["status"] == "pending"
    assert question.messages() == ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."})
    assert asks.answer(ws, question, "worker", text="hi", source="job J at step 3", job_id="J", step=3, line_step=9,
                       seconds=0.2)
    shown = asks.view(ws, question.id)
    assert (shown["status"], shown["text"], shown["step"], shown["by"]) == ("answered", "hi", 3, "worker")
    assert asks.pending(ws) == [] and not (ws.asks / f"{question.id}.json").exists()


def test_a_question_is_answered_at_most_once(ws):
    question = asks.submit(ws, "Say hi.")
    assert asks.answer(ws, question, "worker", text="first")
    assert not asks.answer(ws, question, "answerer", text="second")
    assert asks.view(ws, question.id)["text"] == "first"
    assert asks.question(ws, question.id) is None


def test_the_queue_is_bounded_with_a_polite_refusal(ws):
    for i in range(asks.MAX_PENDING):
        asks.submit(ws, f"question {i}")
    with pytest.raises(asks.AskError, match=f"{asks.MAX_PENDING} questions are waiting already"):
        asks.submit(ws, "one too many")
    asks.answer(ws, asks.pending(ws)[0], "worker", text="done")
    asks.submit(ws, "room again")


def test_recent_lists_pending_and_answered_newest_first(ws):
    first = asks.submit(ws, "first")
    asks.answer(ws, first, "answerer", text="one")
    second = asks.submit(ws, "second")
    shown = asks.recent(ws)
    assert [(q["id"], q["status"]) for q in shown] == [(second.id, "pending"), (first.id, "answered")]
    assert len(asks.recent(ws, limit=1)) == 1


def test_cleaning_expires_stale_questions_drops_old_answers_and_stray_files(ws):
    stale = asks.submit(ws, "nobody answers this")
    old = asks.submit(ws, "answered long ago")
    asks.answer(ws, old, "worker", text="then")
    (ws.asks / "20250101_000000_deadbeef.json").write_text("{not json")
    now = stale.asked + asks.EXPIRE_SECONDS + 1
    asks.clean(ws, now)
    expired = asks.view(ws, stale.id)
    assert (expired["status"], expired["by"]) == ("answered", "daemon") and "no answer within" in expired["error"]
    assert not (ws.asks / "20250101_000000_deadbeef.json").exists()
    asks.clean(ws, now + asks.KEEP_SECONDS)
    assert asks.view(ws, old.id) is None and asks.view(ws, stale.id) is None


def test_only_the_newest_answers_are_kept(ws):
    ids = []
    for i in range(asks.KEEP_ANSWERS + 3):
        question = asks.submit(ws, f"q{i}")
        asks.answer(ws, question, "worker", text=str(i))
        ids.append(question.id)
    asks.clean(ws)
    kept = {p.name for p in ws.asks.iterdir() if p.name != asks.SUBMIT_LOCK}
    assert len(kept) == asks.KEEP_ANSWERS
    assert f"{ids[-1]}.answer.json" in kept


def test_every_file_is_written_whole(ws):
    question = asks.submit(ws, "Say hi.")
    assert json.loads((ws.asks / f"{question.id}.json").read_text())["prompt"] == "Say hi."
    assert not [n for n in os.listdir(ws.asks) if n.endswith(".tmp")]


def test_questions_asked_at_the_same_moment_never_get_past_the_limit(ws):
    """Forty page visitors press "Ask" at once (the monitor's request threads): exactly MAX_PENDING get in."""
    import threading

    start = threading.Barrier(40)
    taken: list[str] = []
    refused: list[str] = []

    def ask(i: int) -> None:
        start.wait()
        try:
            taken.append(asks.submit(ws, f"question {i}").id)
        except asks.AskError as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(taken) == asks.MAX_PENDING and len(refused) == 40 - asks.MAX_PENDING
    assert len(asks.pending(ws)) == asks.MAX_PENDING
