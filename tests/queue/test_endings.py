"""How a run ends: the record, the file's folder and the adapter's job.json say the same thing."""

from __future__ import annotations

import pytest
from helpers import chat_lines, drop, make_workspace

from finetuned.queue.endings import Endings, adapter_record
from finetuned.queue.job import JobStatus
from finetuned.queue.store import JobStore, error_path

SUMMARY = {"steps": 6, "examples_trained": 12, "tokens": 300, "first_loss": 2.0, "final_loss": 1.0}


@pytest.fixture
def store(tmp_path):
    return JobStore(make_workspace(tmp_path / "ws")).load()


def training(store: JobStore, name: str = "a.jsonl"):
    job = store.admit(drop(store.ws, name, chat_lines(4)), "normal")
    job.start_run()
    store.move(job, JobStatus.TRAINING, "started")
    return job


def test_completed_moves_the_file_and_records_what_was_trained(store):
    job = training(store)
    events = []
    Endings(store, lambda event, **payload: events.append((event, payload))).completed(job, SUMMARY)
    assert job.status == JobStatus.COMPLETED and job.step == 6 and job.summary == SUMMARY
    assert (store.ws.completed / "a.jsonl").exists()
    assert job.runs[-1].ended and job.runs[-1].reason == "completed"
    assert events[0][0] == "job_completed" and events[0][1]["steps"] == 6


def test_adapter_record_is_the_completed_record_without_the_queue_s_path(store):
    job = training(store)
    record = adapter_record(job, SUMMARY)
    assert record["status"] == "completed" and record["reason"] == "trained 6 steps"
    assert record["id"] == job.id and record["file"] == "a.jsonl" and record["steps"] == 6
    assert record["runs"][-1]["reason"] == "completed" and record["runs"][-1]["ended"]
    assert "path" not in record and "pending" not in record
    assert job.status == JobStatus.TRAINING, "the daemon's own record is not touched"


def test_a_crash_is_retried_in_front_then_fails_with_the_reason(store):
    job = training(store)
    other = store.admit(drop(store.ws, "b.jsonl", chat_lines(4, "yo")), "normal")
    endings = Endings(store)
    endings.crashed(job, "worker died from SIGKILL", max_retries=1)
    assert job.status == JobStatus.QUEUED and job.order < other.order, "a retry goes to the front"
    job.start_run()
    store.move(job, JobStatus.TRAINING, "started")
    endings.crashed(job, "worker died from SIGKILL", max_retries=1)
    assert job.status == JobStatus.FAILED and "after 1 retries" in job.reason
    assert error_path(store.ws.failed / "a.jsonl").exists()


def test_stop_goes_behind_its_class_and_preemption_in_front(store):
    a = training(store)
    b = store.admit(drop(store.ws, "b.jsonl", chat_lines(4, "yo")), "normal")
    Endings(store).requeued(a, "stop at step 1", front=False)
    assert [j.id for j in store.active()] == [b.id, a.id]
    a.start_run()
    store.move(a, JobStatus.TRAINING, "started")
    Endings(store).requeued(a, "preempt at step 2", front=True)
    assert [j.id for j in store.active()] == [a.id, b.id]
    assert [r.reason for r in a.runs] == ["stop at step 1", "preempt at step 2"]
