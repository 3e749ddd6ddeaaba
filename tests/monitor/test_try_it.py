"""Try it: questions through the API, answered by a real daemon's worker at the step it is held at, or by the
short-lived answerer while nothing trains; the answers are the model's own greedy answers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    Gate,
    chat_lines,
    drop,
    greedy_answer,
    held_at,
    jobs_by_file,
    make_workspace,
    read_json,
    wait_for,
)
from monitor_helpers import MonitoredDaemon, StateWorkspace, http, monitor_config

from finetuned import asks
from finetuned.fsio import atomic_write_json
from finetuned.monitor.events import Changes
from finetuned.monitor.files import Files

QUESTION = "Say hi number 2."


# --- the API over the files -------------------------------------------------------
def test_a_question_is_pending_then_listed_and_the_queue_is_bounded(client, state: StateWorkspace):
    posted = client.post("/api/asks", json={"prompt": QUESTION, "system": "Be brief."})
    assert posted.status_code == 202, posted.text
    question = posted.json()
    assert (question["status"], question["prompt"], question["system"]) == ("pending", QUESTION, "Be brief.")
    assert client.get(f"/api/asks/{question['id']}").json()["status"] == "pending"
    listed = client.get("/api/asks").json()
    assert (listed["pending"], listed["max_pending"], listed["asks"][0]["id"]) == (1, asks.MAX_PENDING,
                                                                                  question["id"])
    for i in range(asks.MAX_PENDING - 1):
        assert client.post("/api/asks", json={"prompt": f"more {i}"}).status_code == 202
    refused = client.post("/api/asks", json={"prompt": "one too many"})
    assert refused.status_code == 429 and "waiting already" in refused.json()["detail"]
    assert client.post("/api/asks", json={"prompt": "   "}).status_code == 422
    assert client.get("/api/asks/20250101_000000_00000000").status_code == 404
    assert client.get("/api/asks/../../config").status_code == 404


def test_no_question_is_taken_while_the_daemon_is_not_responding(client, state: StateWorkspace):
    status = read_json(state.ws.status_json)
    status["heartbeat_unix"] -= 60
    atomic_write_json(state.ws.status_json, status)
    refused = client.post("/api/asks", json={"prompt": QUESTION})
    assert refused.status_code == 503 and "not responding" in refused.json()["detail"]
    assert asks.pending(state.ws) == []


def test_the_event_stream_carries_questions_and_answers(state: StateWorkspace):
    changes = Changes(Files(state.ws), state.ws.load_config().monitor)
    changes.poll()
    question = asks.submit(state.ws, QUESTION)
    (event,) = [payload for name, payload in changes.poll() if name == "asks"]
    assert event["asks"][0]["status"] == "pending"
    asks.answer(state.ws, question, "worker", text="hi", source="job J at step 3", step=3)
    (event,) = [payload for name, payload in changes.poll() if name == "asks"]
    assert (event["asks"][0]["status"], event["asks"][0]["text"], event["pending"]) == ("answered", "hi", 0)


# --- a real daemon --------------------------------------------------------------------
def _ask(daemon: MonitoredDaemon, prompt: str = QUESTION) -> dict[str, Any]:
    status, body = http("POST", daemon.url + "api/asks", f'{{"prompt": "{prompt}"}}'.encode(),
                        {"Content-Type": "application/json"})
    assert status == 202, body

    def answered() -> dict[str, Any] | None:
        shown = http("GET", f"{daemon.url}api/asks/{body['id']}")[1]
        return shown if shown["status"] == "answered" else None

    return wait_for(answered, 120, "the answer", interval=0.2, daemon=daemon)  # type: ignore[arg-type]


def _log(ws) -> str:
    return "".join(p.read_text() for p in sorted(ws.logs.glob("daemon_*.log")))


@pytest.mark.daemon  # a real `finetuned run`
@pytest.mark.timeout(600)
def test_the_worker_answers_at_its_step_and_the_answerer_while_idle(tmp_path: Path, tiny_model_dir: Path):
    from finetuned.checkpoints import path_for
    from finetuned.lifecycle.targets import Target, resolve

    config = monitor_config(max_steps=6, checkpoint_every_steps=3)
    config.previews.every_steps = 0
    config.previews.budget = 1.0
    config.previews.max_new_tokens = 10
    config.lifecycle.min_free_gb = 0.0
    ws = make_workspace(tmp_path / "ws", config)
    gate = Gate(tmp_path / "gate")
    gate.hold(3)
    drop(ws, "first.jsonl", chat_lines(24))
    daemon = MonitoredDaemon(ws, tmp_path / "daemon.out", gate)
    try:
        daemon.wait_url()
        held_at(ws, "first.jsonl", 3, daemon)  # type: ignore[arg-type]
        job = jobs_by_file(ws)["first.jsonl"]["id"]
        # while training: the worker, between steps, with the weights of step 3
        during = _ask(daemon)
        assert (during["by"], during["job_id"], during["step"], during["error"]) == ("worker", job, 3, "")
        assert during["source"] == f"job {job} at step 3"
        step_3 = Target("checkpoint", "step 3", ws.base_models / "tiny",
                        checkpoint=path_for(ws.job_checkpoints(job), 3))
        assert during["text"] == greedy_answer(step_3, config, QUESTION)
        # idle: the job completes, the answerer loads the line's newest checkpoint
        gate.release()
        wait_for(lambda: jobs_by_file(ws)["first.jsonl"]["status"] == "completed", 120, "the job to end",
                 daemon=daemon)
        idle = _ask(daemon)
        assert (idle["by"], idle["job_id"], idle["step"], idle["line_step"]) == ("answerer", job, 6, 6)
        assert idle["source"] == f"checkpoint 6 of job {job} (line step 6)"
        assert idle["text"] == greedy_answer(resolve(ws, None), config, QUESTION)
        assert idle["text"] != during["text"], "three more steps changed the answer"
        # a job that starts ends the answerer first: one model in memory, and the worker answers again
        gate.hold(1)
        drop(ws, "second.jsonl", chat_lines(24, "yo"))
        held_at(ws, "second.jsonl", 1, daemon)  # type: ignore[arg-type]
        assert "answerer: a job starts; it exits" in _log(ws)
        again = _ask(daemon)
        assert (again["by"], again["step"]) == ("worker", 1)
        assert again["source"] == f"job {jobs_by_file(ws)['second.jsonl']['id']} at step 1"
        assert len(asks.recent(ws)) == 3 and not asks.pending(ws), "each answered once"
    finally:
        gate.release()
        daemon.stop()


@pytest.mark.daemon  # a real `finetuned run`
@pytest.mark.timeout(600)
def test_a_question_over_budget_waits_and_goes_to_the_answerer_when_the_job_pauses(tmp_path: Path,
                                                                                   tiny_model_dir: Path):
    config = monitor_config(max_steps=6, checkpoint_every_steps=100)
    config.previews.every_steps = 0
    config.previews.budget = 0.0  # the first answer uses it all up
    config.previews.max_new_tokens = 6
    config.lifecycle.min_free_gb = 0.0
    ws = make_workspace(tmp_path / "ws", config)
    gate = Gate(tmp_path / "gate")
    gate.hold(2)
    drop(ws, "first.jsonl", chat_lines(24))
    daemon = MonitoredDaemon(ws, tmp_path / "daemon.out", gate)
    try:
        daemon.wait_url()
        held_at(ws, "first.jsonl", 2, daemon)  # type: ignore[arg-type]
        job = jobs_by_file(ws)["first.jsonl"]["id"]
        assert _ask(daemon)["by"] == "worker"
        status, waiting = http("POST", daemon.url + "api/asks", b'{"prompt": "And again?"}',
                               {"Content-Type": "application/json"})
        assert status == 202
        time.sleep(3)  # the worker has it in hand by now: within its budget it would answer in about a second
        assert http("GET", f"{daemon.url}api/asks/{waiting['id']}")[1]["status"] == "pending", "over budget: it waits"
        http("POST", daemon.url + "api/control/pause")
        wait_for(lambda: jobs_by_file(ws)["first.jsonl"]["status"] == "paused", 60, "the pause", daemon=daemon)
        answered = wait_for(lambda: (lambda a: a if a["status"] == "answered" else None)(
            http("GET", f"{daemon.url}api/asks/{waiting['id']}")[1]), 120, "the answerer", daemon=daemon)
        assert (answered["by"], answered["job_id"], answered["step"]) == ("answerer", job, 2)
        assert answered["source"] == f"checkpoint 2 of job {job} (line step 2)"
        http("POST", daemon.url + "api/control/resume")
        wait_for(lambda: "answerer: a job starts" in _log(ws), 60, "the answerer to make way", daemon=daemon)
        gate.release()
        wait_for(lambda: jobs_by_file(ws)["first.jsonl"]["status"] == "completed", 120, "the job to end",
                 daemon=daemon)
        assert [q["by"] for q in asks.recent(ws)] == ["answerer", "worker"], "each answered once"
    finally:
        gate.release()
        daemon.stop()
