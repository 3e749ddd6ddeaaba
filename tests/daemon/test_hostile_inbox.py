"""Whoever may write to the inbox is not the daemon's owner: nothing they drop may hang it, kill it, run
code or forge its log. Each hostile drop fails alone (data/failed/NAME with NAME.error.json) or is left
alone with one word in the log, and the daemon goes on taking files.

Most cases drive `Daemon.tick` in this process (the loop's own code, no worker needed: a `.pause`
keeps the good file queued); one real daemon proves it stays up and trains after the worst of them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from pathlib import Path

import pytest
from helpers import (
    InlineChecker,
    chat_lines,
    drop,
    jobs_by_file,
    make_workspace,
    read_json,
    status_of,
    tiny_config,
    wait_for,
    write_jsonl,
)

from finetuned import fsio
from finetuned.daemon.daemon import Daemon
from finetuned.logs import setup_logging
from finetuned.workspace import Workspace

DEEP = b"[" * 30_000 + b"]" * 30_000  # json recurses once per level: RecursionError, unless bounded first


@pytest.fixture
def idle_daemon(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Daemon:
    """An in-process daemon, paused so that nothing it queues starts training."""
    monkeypatch.setattr(fsio, "DURABLE", False)
    config = tiny_config()
    config.inbox.settle_seconds = 0
    config.data.prepare_ahead = False
    ws = make_workspace(tmp_path / "ws", config)
    ws.pause_file.touch()
    daemon = Daemon(ws, ws.load_config(), monitor=False)
    daemon.settings.checker_factory = lambda _root: InlineChecker(ws)
    daemon.store.load().recover()
    yield daemon
    daemon.settings.close()
    daemon.validator.close()


def ticks(daemon: Daemon, n: int = 6, timeout: float = 60) -> None:
    """`n` turns of the daemon's loop, which must come back: a drop that blocks it fails the test, not hangs it."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for _ in range(n):
                daemon.tick()
                daemon.validator.wait()
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)

    loop = threading.Thread(target=run, daemon=True)
    loop.start()
    loop.join(timeout)
    assert not loop.is_alive(), "the daemon's loop blocked on a dropped file"
    if errors:
        raise errors[0]


def error_of(ws: Workspace, name: str) -> str:
    assert status_of(ws, name) == "failed", jobs_by_file(ws).get(name)
    return read_json(ws.failed / f"{name}.error.json")["error"]


def test_hostile_drops_fail_alone_and_never_block_the_loop(idle_daemon: Daemon, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch):
    ws = idle_daemon.ws
    inbox = ws.inbox_normal
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = write_jsonl(outside / "secret.jsonl", chat_lines(4, "secret"))
    (outside / "settings.json").write_text(json.dumps({"training": {"epochs": 2}}))

    os.mkfifo(inbox / "pipe-settings.jsonl.config.json")  # open() for reading waits for a writer forever
    drop(ws, "pipe-settings.jsonl", chat_lines(4, "a"))
    (inbox / "deep.jsonl.config.json").write_bytes(DEEP)
    drop(ws, "deep.jsonl", chat_lines(4, "b"))
    (inbox / "huge.jsonl.config.json").write_text(json.dumps({"data": {"system_prompt": "x" * 2**20}}))
    drop(ws, "huge.jsonl", chat_lines(4, "c"))
    (inbox / "latin1.jsonl.config.json").write_bytes(b'{"data": {"system_prompt": "caf\xe9"}}')
    drop(ws, "latin1.jsonl", chat_lines(4, "d"))
    (inbox / "linked.jsonl.config.json").symlink_to(outside / "settings.json")
    drop(ws, "linked.jsonl", chat_lines(4, "e"))
    (inbox / "deep-data.jsonl").write_bytes(b'{"text": ' + DEEP + b"}\n")
    os.mkfifo(inbox / "pipe.jsonl")
    monkeypatch.chdir(inbox)  # a socket's path must fit 108 bytes: bound by its name in the inbox
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("socket.jsonl")
        (inbox / "link.jsonl").symlink_to(secret)
        drop(ws, "good.jsonl", chat_lines(4, "good"))
        ticks(idle_daemon)

    assert "a named pipe (FIFO), not a regular file" in error_of(ws, "pipe-settings.jsonl")
    assert "nested over 16 levels" in error_of(ws, "deep.jsonl")
    assert "over 64 KiB" in error_of(ws, "huge.jsonl")
    assert "not valid JSON" in error_of(ws, "latin1.jsonl")
    assert "symlinks are not accepted" in error_of(ws, "linked.jsonl")
    assert "nested too deeply" in error_of(ws, "deep-data.jsonl")
    assert "a named pipe (FIFO), not a regular file" in error_of(ws, "pipe.jsonl")
    assert "a socket, not a regular file" in error_of(ws, "socket.jsonl")
    assert read_json(ws.failed / "link.jsonl.error.json")["problems"][0]["kind"] == "symlink"
    for name in ("pipe-settings", "deep", "huge", "latin1", "linked"):  # kept beside their files, as they were
        assert (ws.failed / f"{name}.jsonl.config.json").is_symlink() or (ws.failed / f"{name}.jsonl.config.json"
                                                                           ).exists(), name
    assert secret.read_text() == "".join(json.dumps(r) + "\n" for r in chat_lines(4, "secret")), "never touched"
    good = jobs_by_file(ws)["good.jsonl"]
    assert good["status"] == "queued" and good["examples"] == 4, "the daemon goes on taking files"
    assert not [p for p in inbox.iterdir() if not p.name.startswith(".")], "nothing hostile is left waiting"


def test_a_file_s_settings_may_not_reach_past_its_job(idle_daemon: Daemon, tmp_path: Path):
    """Issue 23, item 10: a sidecar naming a Ray cluster made the worker that cluster's driver."""
    ws = idle_daemon.ws
    elsewhere = tmp_path / "elsewhere-model"
    refused = {
        "ray.jsonl": ({"distributed": {"launcher": "ray", "ray": {"address": "203.0.113.7:6379"}}}, "'distributed'"),
        "hook.jsonl": ({"notify": {"command": "touch pwned"}}, "'notify'"),
        "port.jsonl": ({"monitor": {"host": "0.0.0.0"}}, "'monitor'"),
        "gate.jsonl": ({"evaluation": {"max_regression": 1}}, "'evaluation.max_regression'"),
        "model.jsonl": ({"base_model": str(elsewhere)}, "not under the workspace's models/"),
        "climb.jsonl": ({"base_model": "models/../../elsewhere-model"}, "not under the workspace's models/"),
        "adapter.jsonl": ({"training": {"init_adapter": "inbox/normal"}}, "not under the workspace's models/"),
    }
    for n, (name, (settings, _)) in enumerate(refused.items()):
        (ws.inbox_normal / f"{name}.config.json").write_text(json.dumps(settings))
        drop(ws, name, chat_lines(4, f"t{n}"))
    (ws.inbox_normal / "own.jsonl.config.json").write_text(json.dumps(
        {"base_model": "builtin:tiny", "training": {"epochs": 2}, "evaluation": {"every_steps": 0}}))
    drop(ws, "own.jsonl", chat_lines(4, "own"))
    ticks(idle_daemon)

    for name, (_, words) in refused.items():
        assert words in error_of(ws, name), name
    own = jobs_by_file(ws)["own.jsonl"]
    assert own["status"] == "queued" and own["overrides"]["training"] == {"epochs": 2}, own


def test_folders_in_the_inbox_are_left_alone_and_said_once(idle_daemon: Daemon, caplog: pytest.LogCaptureFixture):
    ws = idle_daemon.ws
    (ws.inbox_normal / "folder.jsonl").mkdir()
    (ws.inbox_priority / "nested").mkdir()
    with caplog.at_level(logging.INFO):
        ticks(idle_daemon)
    said = [r.getMessage() for r in caplog.records if "is a folder" in r.getMessage()]
    assert said == ["inbox/priority/nested is a folder: left alone (only files directly in the inbox are taken)",
                    "inbox/normal/folder.jsonl is a folder: left alone (only files directly in the inbox are taken)"]
    assert (ws.inbox_normal / "folder.jsonl").is_dir() and not jobs_by_file(ws)


@pytest.fixture
def logged(idle_daemon: Daemon):
    setup_logging(idle_daemon.ws, "daemon", stream=False)
    yield idle_daemon
    logging.captureWarnings(False)  # as tests/test_logs.py's fixture: a later setup_logging must route them again
    logging.basicConfig(handlers=[logging.NullHandler()], force=True)


def test_odd_names_cannot_forge_log_lines_or_reach_a_terminal(logged: Daemon):
    ws = logged.ws
    forged = "2099-01-01 00:00:00 INFO    finetuned.daemon: job 9: all good"
    names = [f"evil\n{forged}\x1b[2J\x1b]0;owned\x07.jsonl", "\u202egnp.jsonl", "l" * 200 + "\r\x1b[1A.jsonl"]
    for n, name in enumerate(names):
        drop(ws, name, chat_lines(4, f"odd{n}"))
    ticks(logged)

    assert sorted(jobs_by_file(ws)) == sorted(names), "odd names are taken like any other"
    text = ws.daemon_log().read_text(encoding="utf-8")
    lines = text.splitlines()
    assert all(line.startswith("20") for line in lines), "every line is one event's"
    assert not any(line.startswith("2099") for line in lines), "no forged line"
    assert "\x1b" not in text and "\r" not in text and "\u202e" not in text
    assert "evil\\n2099-01-01" in text and "\\x1b[2J\\x1b]0;owned\\x07.jsonl" in text and "\\u202egnp" in text


def test_a_real_daemon_stays_up_and_trains_after_hostile_drops(ws: Workspace, start_daemon):
    """Before: a FIFO sidecar froze the loop for good, a deep one ended the daemon at every start."""
    daemon = start_daemon(ws)
    os.mkfifo(ws.inbox_normal / "pipe.jsonl.config.json")
    drop(ws, "pipe.jsonl", chat_lines(4, "a"))
    (ws.inbox_normal / "deep.jsonl.config.json").write_bytes(DEEP)
    drop(ws, "deep.jsonl", chat_lines(4, "b"))
    (ws.inbox_normal / "ray.jsonl.config.json").write_text(json.dumps({"distributed": {"launcher": "ray"}}))
    drop(ws, "ray.jsonl", chat_lines(4, "c"))
    wait_for(lambda: all(status_of(ws, f) == "failed" for f in ("pipe.jsonl", "deep.jsonl", "ray.jsonl")), 60,
             "the hostile files to fail", daemon=daemon)
    drop(ws, "good.jsonl", chat_lines(6))
    wait_for(lambda: status_of(ws, "good.jsonl") == "completed", 180, "the good file to train", daemon=daemon)
    assert daemon.proc.poll() is None
    assert not list(ws.inbox_normal.iterdir()), "nothing is left in the inbox to trip the next start"
