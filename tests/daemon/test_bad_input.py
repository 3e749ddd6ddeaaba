"""Bad input never stops the daemon: each case ends in data/failed/NAME with NAME.error.json.

One daemon takes every bad file of issue 4's list (the file-level checks are unit-tested in
tests/data/); a good file dropped last still trains.
"""

from __future__ import annotations

import json

import pytest
from helpers import DaemonProcess, chat_lines, jobs_by_file, make_workspace, read_json, status_of, tiny_config, wait_for

CHAT = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}


def line(record) -> bytes:
    return (json.dumps(record) + "\n").encode()


BAD_FILES: dict[str, bytes] = {
    "empty.jsonl": b"",
    "blank.jsonl": b"\n\n   \n",
    "latin1.jsonl": '{"text": "caf\u00e9"}\n'.encode("latin-1"),
    "garbage.jsonl": bytes(range(256)) * 8,
    "array.jsonl": b'[{"text": "a"}, {"text": "b"}]\n',
    "truncated.jsonl": line({"text": "whole"}) + b'{"text": "cut off in the midd',
    "mixed.jsonl": line({"text": "a"}) + line(CHAT) + line({"text": "b"}) + line(CHAT),
    "unknown.jsonl": line({"question": "q", "answer": "a"}) * 3,
    "no assistant.jsonl": line({"messages": [{"role": "user", "content": "q"}]}),
    "bad role.jsonl": line({"messages": [{"role": "wizard", "content": "q"}, {"role": "assistant", "content": "a"}]}),
    "number content.jsonl": line({"messages": [{"role": "user", "content": 7}, {"role": "assistant", "content": "a"}]}),
    "un\u00efcode $(rm -rf) ; `x`.jsonl": b"not json\n",
}


@pytest.fixture(scope="module")
def outcome(tmp_path_factory, tiny_model_dir):
    """Every bad file dropped into one running daemon, then a good one; returns the workspace."""
    root = tmp_path_factory.mktemp("bad")
    ws = make_workspace(root / "ws", tiny_config())
    outside = root / "outside.jsonl"
    outside.write_bytes(line(CHAT) * 4)
    daemon = DaemonProcess(ws, root / "daemon.out")
    try:
        for name, content in BAD_FILES.items():
            (ws.inbox_normal / name).write_bytes(content)
        (ws.inbox_normal / "link.jsonl").symlink_to(outside)
        with open(ws.inbox_normal / "huge line.jsonl", "wb") as f:
            f.write(b'{"text": "')
            f.truncate(10 * 2**30)  # a 10 GB line, sparse: must be refused without being read
        (ws.inbox_normal / "first.jsonl").write_bytes(b"".join(line(r) for r in chat_lines(6)))
        wait_for(lambda: status_of(ws, "first.jsonl") == "completed", 240, "the first good file", daemon=daemon)
        (ws.inbox_normal / "again.jsonl").write_bytes(b"".join(line(r) for r in chat_lines(6)))
        (ws.inbox_normal / "good.jsonl").write_bytes(b"".join(line(r) for r in chat_lines(8, "yo")))
        wait_for(lambda: status_of(ws, "good.jsonl") == "completed", 240, "the good file", daemon=daemon)
        wait_for(lambda: all(status_of(ws, n) for n in [*BAD_FILES, "link.jsonl", "huge line.jsonl"]), 60,
                 "every bad file to be handled", daemon=daemon)
        assert daemon.proc.poll() is None, "bad input must never stop the daemon"
        yield ws, outside
    finally:
        daemon.stop()


@pytest.mark.parametrize("name", [*BAD_FILES, "link.jsonl", "huge line.jsonl", "again.jsonl"])
def test_bad_file_fails_with_a_report(outcome, name):
    ws, _ = outcome
    assert status_of(ws, name) == "failed", jobs_by_file(ws)[name]
    assert (ws.failed / name).exists() or (ws.failed / name).is_symlink()
    report = read_json(ws.failed / f"{name}.error.json")
    assert report["error"] and report["problems"], report
    for problem in report["problems"]:
        assert problem["kind"] and problem["count"] >= 1


def test_reports_name_lines_and_kinds(outcome):
    ws, outside = outcome
    mixed = read_json(ws.failed / "mixed.jsonl.error.json")
    assert any(p["lines"] for p in mixed["problems"]), mixed
    truncated = read_json(ws.failed / "truncated.jsonl.error.json")
    assert any(2 in p["lines"] for p in truncated["problems"]), truncated
    assert read_json(ws.failed / "link.jsonl.error.json")["problems"][0]["kind"] == "symlink"
    assert outside.read_bytes() == line(CHAT) * 4, "a symlink's target is never touched"
    assert read_json(ws.failed / "again.jsonl.error.json")["problems"][0]["kind"] == "duplicate"


def test_the_daemon_kept_training(outcome):
    ws, _ = outcome
    assert (ws.completed / "good.jsonl").exists()
    assert not list(ws.inbox_normal.iterdir()), "nothing is left behind in the inbox"
