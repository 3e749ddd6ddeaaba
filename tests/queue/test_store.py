"""Job records and file moves: order, transitions, and repair after a crash at any point."""

from __future__ import annotations

import json
import os

import pytest

from finetuned.fsio import atomic_write_json
from finetuned.queue.job import InvalidTransition, Job, JobStatus, PendingMove
from finetuned.queue.store import JobStore, error_path
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


LONG_NAME = "a" * 234 + ".jsonl"  # 240 bytes: a valid file name; `JOB_ID__` before it is not


def test_a_long_name_is_queued_failed_and_reported_under_names_that_fit(store):
    job = store.admit(drop(store, LONG_NAME), "normal")
    assert job.file == LONG_NAME, "the record keeps the name as dropped"
    assert store.file_path(job).exists() and len(store.file_path(job).name.encode()) <= 255
    store.move(job, JobStatus.FAILED, "bad", error={"error": "bad"})
    failed = store.file_path(job)
    assert failed.parent == store.ws.failed and failed.exists()
    assert error_path(failed).exists(), "NAME.error.json beside it, with a name that fits too"
    twin = store.admit(drop(store, LONG_NAME), "normal")
    store.move(twin, JobStatus.FAILED, "bad", error={"error": "bad"})
    assert store.file_path(twin) != failed and error_path(store.file_path(twin)).exists()
    assert not [p for p in store.ws.root.rglob("*.tmp")], "no temporary left behind"


def test_recover_finishes_a_move_an_older_version_named_too_long(store):
    """What the old daemon left: the intent to move a 240-byte name to `JOB_ID__NAME` (over 255 bytes)."""
    src = drop(store, LONG_NAME)
    job_id = store.new_id()
    too_long = store.ws.queued / f"{job_id}__{LONG_NAME}"
    job = Job(id=job_id, file=LONG_NAME, order=1.0, path=str(too_long.relative_to(store.ws.root)))
    job.pending = PendingMove(src=str(src), dst=str(too_long), status=JobStatus.QUEUED, reason="arrived")
    atomic_write_json(store.ws.job_record(job_id), job.model_dump(mode="json"))
    fresh = JobStore(store.ws).load()
    fresh.recover()
    repaired = fresh.get(job_id)
    assert repaired.pending is None and repaired.status == JobStatus.QUEUED
    assert fresh.file_path(repaired).exists() and not src.exists()
    assert JobStore(store.ws).load().get(job_id).path == repaired.path, "the new name is on disk"


def test_one_record_that_cannot_be_repaired_does_not_stop_the_others(store):
    good = store.admit(drop(store, "good.jsonl"), "normal")
    store.move(good, JobStatus.TRAINING)
    stuck = drop(store, "stuck.jsonl")
    bad = Job(id="20250101_000001", file="stuck.jsonl", order=2.0, path="data/queued/x")
    bad.pending = PendingMove(src=str(stuck), dst=str(store.ws.root / "data" / "nowhere" / "stuck.jsonl"),
                              status=JobStatus.QUEUED)
    atomic_write_json(store.ws.job_record(bad.id), bad.model_dump(mode="json"))
    fresh = JobStore(store.ws).load()
    fresh.recover()
    assert fresh.get(good.id).status == JobStatus.QUEUED, "the good record is repaired"
    assert bad.id not in fresh.jobs and stuck in fresh.held, "the bad one waits aside, its file held"
    assert stuck.exists()


def test_odd_files_in_data_queued_do_not_stop_recovery(store):
    (store.ws.queued / "a folder").mkdir()
    odd = store.ws.queued / os.fsdecode(b"20250101_000002__caf\xe9.jsonl")
    odd.write_text('{"text": "x"}\n')
    fresh = JobStore(store.ws).load()
    fresh.recover()
    adopted = fresh.get("20250101_000002")
    assert adopted.file == "caf\ufffd.jsonl" and fresh.file_path(adopted) == odd
    assert JobStore(store.ws).load().get("20250101_000002").path == adopted.path, "its record reads back"
