"""Settings that cannot train hold the queue, say why everywhere a user looks, and lose nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from helpers import (
    InlineChecker,
    StandInWorker,
    chat_lines,
    drop,
    jobs_by_file,
    make_workspace,
    read_json,
    status_of,
    tiny_config,
    wait_for,
)

from finetuned import fsio
from finetuned.daemon.daemon import Daemon
from finetuned.processes.protocol import Failed, FailKind, Order, Train
from finetuned.queue.job import JobStatus


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "finetuned", *args], capture_output=True, text=True, timeout=120)


def test_a_missing_base_folder_holds_the_queue_and_it_resumes_when_the_folder_comes(
        tmp_path, tiny_model_dir, start_daemon):
    config = tiny_config()
    config.base_model = "models/base/mine"
    ws = make_workspace(tmp_path / "ws", config)
    daemon = start_daemon(ws)
    wait_for(lambda: (read_json(ws.status_json) or {}).get("state") == "holding", 90, "the hold", daemon=daemon)
    assert "no such folder" in read_json(ws.status_json)["reason"]
    drop(ws, "a.jsonl", chat_lines(8))
    wait_for(lambda: (jobs_by_file(ws).get("a.jsonl") or {}).get("examples"), 60, "a.jsonl checked", daemon=daemon)
    assert status_of(ws, "a.jsonl") == "queued" and read_json(ws.status_json)["state"] == "holding"

    shown = cli("status", "--root", str(ws.root)).stdout
    assert "holding the queue" in shown and "no such folder" in shown and "1 queued" in shown, shown
    doctor = json.loads(cli("doctor", "--json", "--root", str(ws.root)).stdout)
    checks = {c["name"]: c for c in doctor["checks"]}
    assert checks["base model"]["level"] == "FAIL" and "no such folder" in checks["base model"]["message"]
    assert checks["daemon"]["level"] == "WARN" and "holding the queue" in checks["daemon"]["message"]

    copy = ws.base_models / ".mine.part"  # a careful copy: written aside, renamed when whole
    shutil.copytree(tiny_model_dir, copy)
    copy.rename(ws.base_models / "mine")
    wait_for(lambda: status_of(ws, "a.jsonl") == "completed", 180, "a.jsonl to train", daemon=daemon)
    log = ws.daemon_log().read_text()
    assert log.count("holding the queue") == 1 and "the queue goes on" in log
    assert not list(ws.failed.iterdir()), "nothing fails while the queue is held"


class RefusingWorker(StandInWorker):
    """A worker that finds the settings cannot train when it loads the model (a folder gone after the check)."""

    def send(self, message: Order) -> bool:
        if isinstance(message, Train):
            self.out.append(Failed(job_id=message.job.id, kind=FailKind.CONFIG, step=0,
                                   reason="base_model 'models/base/gone': no such folder"))
        return super().send(message)


def test_settings_the_worker_refuses_hold_the_queue_but_a_file_s_own_settings_fail_that_file(
        tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(fsio, "DURABLE", False)
    config = tiny_config()
    config.inbox.settle_seconds = 0
    config.data.prepare_ahead = False
    ws = make_workspace(tmp_path / "ws", config)
    daemon = Daemon(ws, ws.load_config(), monitor=False)
    daemon.session.worker_factory = lambda _root, _distributed: RefusingWorker()
    daemon.settings.checker_factory = lambda _root: InlineChecker(ws)
    daemon.store.load().recover()

    def ticks(n: int = 6) -> None:
        for _ in range(n):
            daemon.tick()
            daemon.validator.wait()

    (ws.inbox_normal / "own.jsonl.config.json").write_text(json.dumps({"lora": {"r": 4}}))
    drop(ws, "own.jsonl", chat_lines(4))
    ticks()
    own = jobs_by_file(ws)["own.jsonl"]
    assert own["status"] == "failed" and "its own settings cannot train" in own["reason"]

    drop(ws, "a.jsonl", chat_lines(4))
    ticks()
    job = daemon.store.get(jobs_by_file(ws)["a.jsonl"]["id"])
    assert job.status is JobStatus.QUEUED and job.reason.startswith("held: base_model")
    status = read_json(ws.status_json)
    assert status["state"] == "holding" and "no such folder" in status["reason"]
    assert (ws.queued / f"{job.id}__a.jsonl").exists()
    daemon.settings.close()
    daemon.validator.close()
