from __future__ import annotations

import os
import time

from finetuned.config import InboxSettings
from finetuned.queue.inbox import Inbox
from finetuned.workspace import Workspace


def make(tmp_path, settle=1.0):
    ws = Workspace.at(tmp_path)
    ws.create()
    return ws, Inbox(ws, InboxSettings(settle_seconds=settle))


def test_file_is_taken_only_after_it_settles(tmp_path):
    ws, inbox = make(tmp_path)
    path = ws.inbox_normal / "a.jsonl"
    path.write_text("x")
    old = time.time() - 100
    os.utime(path, (old, old))
    t0 = time.time()
    assert inbox.scan(t0) == []  # first sight
    assert inbox.scan(t0 + 0.5) == []
    assert inbox.scan(t0 + 1.1) == [(path, "normal")]


def test_growth_restarts_the_wait(tmp_path):
    ws, inbox = make(tmp_path)
    path = ws.inbox_normal / "a.jsonl"
    path.write_text("x")
    t0 = time.time() + 10
    inbox.scan(t0)
    path.write_text("xy")
    assert inbox.scan(t0 + 1.1) == []
    assert inbox.scan(t0 + 2.2) == [(path, "normal")]


def test_hidden_temporary_and_folders_are_ignored_and_priority_comes_first(tmp_path):
    ws, inbox = make(tmp_path, settle=0)
    for name in (".hidden.jsonl", "a.jsonl.tmp", "b.part", "c.crdownload"):
        (ws.inbox_normal / name).write_text("x")
    (ws.inbox_normal / "sub").mkdir()
    (ws.inbox_normal / "n.jsonl").write_text("x")
    (ws.inbox / "root.jsonl").write_text("x")
    (ws.inbox_priority / "p.jsonl").write_text("x")
    t = time.time() + 5
    inbox.scan(t)
    found = inbox.scan(t + 1)
    assert found[0] == (ws.inbox_priority / "p.jsonl", "high")
    assert {p.name for p, _ in found} == {"p.jsonl", "n.jsonl", "root.jsonl"}


def test_a_refused_file_waits_until_it_changes(tmp_path):
    """A file the daemon could not take is not tried (and logged) again every tick, only once it changes."""
    ws, inbox = make(tmp_path, settle=0)
    path = ws.inbox_normal / "a.jsonl"
    path.write_text("x")
    t0 = time.time() + 10
    inbox.scan(t0)
    assert inbox.scan(t0 + 1) == [(path, "normal")]
    inbox.refuse(path)
    assert inbox.scan(t0 + 2) == [] and inbox.scan(t0 + 3) == []
    path.write_text("xy")
    inbox.scan(t0 + 4)
    assert inbox.scan(t0 + 5) == [(path, "normal")]


def test_a_sidecar_is_never_data_and_its_file_waits_until_the_sidecar_settles(tmp_path):
    ws, inbox = make(tmp_path)
    data, sidecar = ws.inbox_normal / "a.jsonl", ws.inbox_normal / "a.jsonl.config.json"
    old = time.time() - 100
    data.write_text("x")
    os.utime(data, (old, old))
    t0 = time.time() + 10
    assert inbox.scan(t0) == []
    sidecar.write_text("{}")  # comes with the file, still being written when the file has settled
    assert inbox.scan(t0 + 1.1) == [], "the file waits for its settings"
    assert inbox.waiting
    assert inbox.scan(t0 + 2.2) == [(data, "normal")], "the sidecar is never taken as data"
    inbox.forget(data)
    data.unlink()
    assert inbox.scan(t0 + 3.3) == [] and not inbox.waiting, "a settled sidecar alone waits quietly for its file"


def test_a_name_with_no_room_for_a_sidecar_is_still_taken(tmp_path):
    """250 bytes: NAME.config.json cannot exist beside it, and looking for one must not fail."""
    ws, inbox = make(tmp_path, settle=0)
    path = ws.inbox_normal / ("漢" * 81 + "a.jsonl")
    path.write_text("x")
    t0 = time.time() + 10
    inbox.scan(t0)
    assert inbox.scan(t0 + 1) == [(path, "normal")]


def test_reading_a_watched_file_does_not_wake_the_daemon_but_writing_one_does(tmp_path):
    """A pending question is read on every tick: were reads news, the daemon's loop would wake itself forever."""
    import time

    from finetuned.queue.inbox import Wakeup

    folder = tmp_path / "control"
    (folder / "asks").mkdir(parents=True)
    question = folder / "asks" / "q.json"
    question.write_text("{}")
    wakeup = Wakeup([folder])
    assert wakeup.watching
    try:
        time.sleep(0.3)
        wakeup.event.clear()
        for _ in range(20):
            question.read_text()
        time.sleep(0.5)
        assert not wakeup.event.is_set(), "a read woke the loop"
        question.write_text('{"a": 1}')
        assert wakeup.event.wait(5), "a write wakes it"
    finally:
        wakeup.close()
