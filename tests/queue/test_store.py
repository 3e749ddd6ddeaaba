"""Job records and file moves: order, transitions, and repair after a crash at any point."""

from __future__ import annotations

import json
import os

import pytest

from finetuned.fsio import atomic_write_json
from finetuned.queue.job import InvalidTransition, JobStatus, PendingMove
from finetuned.queue.store import JobStore
from finetuned.workspace import Workspace


@pytest.fixture
def store(tmp_path):
    ws = Workspace.at(tmp_path)
    ws.create()
    return JobStore(ws).load()


def drop(store: JobStore, name: str, folder=None):
    path = (folder or store.ws.inbox_normal) / name
    path.write_text('{"text": "x"}\n')
    return path


def test_priority_first_then_arrival_order(store):
    a = store.admit(drop(store, "a.jsonl"), "normal")
    b = store.admit(drop(store, "b.jsonl", store.ws.inbox_priority), "high")
    c = store.admit(drop(store, "c.jsonl"), "normal")
    assert [j.id for j in store.active()] == [b.id, a.id, c.id]
    assert JobStore(store.ws).load().active() == store.active(), "a reload must rebuild the same queue"


def test_job_ids_are_unique_within_a_second(store):
    ids = {store.admit(drop(store, f"f{i}.jsonl"), "normal").id for i in range(3)}
    assert len(ids) == 3
    assert sorted(len(i.split("_")) for i in ids)[-1] == 3  # a _2/_3 suffix on collisions


def test_illegal_transition_is_rejected(store):
    job = store.admit(drop(store, "a.jsonl"), "normal")
    store.move(job, JobStatus.TRAINING)
    store.move(job, JobStatus.COMPLETED)
    with pytest.raises(InvalidTransition):
        store.move(job, JobStatus.TRAINING)


def test_final_moves_never_overwrite(store):
    for _ in range(2):
        job = store.admit(drop(store, "same.jsonl"), "normal")
        store.move(job, JobStatus.FAILED, "bad", error={"error": "bad"})
    names = sorted(p.name for p in store.ws.failed.iterdir())
    assert len([n for n in names if not n.endswith(".error.json")]) == 2
    assert len([n for n in names if n.endswith(".error.json")]) == 2


@pytest.mark.parametrize("renamed", [False, True])
def test_recover_finishes_a_move_cut_in_half(store, renamed):
    """A crash between writing the intent and the rename (or after the rename) is repaired."""
    job = store.admit(drop(store, "a.jsonl"), "normal")
    store.move(job, JobStatus.TRAINING)
    src = store.file_path(job)
    dst = store.ws.completed / "a.jsonl"
    job.pending = PendingMove(src=str(src), dst=str(dst), status=JobStatus.COMPLETED)
    atomic_write_json(store.ws.jobs / f"{job.id}.json", job.model_dump(mode="json"))
    if renamed:
        os.replace(src, dst)
    fresh = JobStore(store.ws).load()
    fresh.recover()
    job = fresh.get(job.id)
    assert job.status == JobStatus.COMPLETED and job.pending is None
    assert dst.exists() and not src.exists()


def test_recover_requeues_interrupted_training_and_adopts_orphans(store):
    job = store.admit(drop(store, "a.jsonl"), "normal")
    store.move(job, JobStatus.TRAINING)
    (store.ws.queued / "20250101_000000__orphan.jsonl").write_text('{"text": "x"}\n')
    fresh = JobStore(store.ws).load()
    fresh.recover()
    assert fresh.get(job.id).status == JobStatus.QUEUED
    orphan = fresh.get("20250101_000000")
    assert orphan.file == "orphan.jsonl" and orphan.status == JobStatus.QUEUED


def test_a_damaged_record_is_set_aside_not_fatal(store):
    store.admit(drop(store, "a.jsonl"), "normal")
    (store.ws.jobs / "broken.json").write_text("{not json")
    fresh = JobStore(store.ws).load()
    assert len(fresh.jobs) == 1
    assert (store.ws.jobs / "broken.corrupt").exists()
    json.loads((store.ws.jobs / f"{next(iter(fresh.jobs))}.json").read_text())
