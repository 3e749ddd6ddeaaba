"""What the monitor's tests share: workspaces whose state files the real code wrote, and a real daemon."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from helpers import Gate, chat_lines, drop, make_workspace, read_json, tiny_config, wait_for

from finetuned.config import Config
from finetuned.daemon.statefiles import StateWriter
from finetuned.fsio import atomic_write_json
from finetuned.queue.job import Job, JobStatus
from finetuned.queue.render import Progress
from finetuned.queue.store import JobStore
from finetuned.workspace import Workspace

LOCAL = "http://127.0.0.1"  # TestClient's base: a loopback Host, as a browser on this machine sends


def monitor_config(**training: Any) -> Config:
    """tiny_config with the monitor on an ephemeral port, so tests can run side by side."""
    config = tiny_config(**training)
    config.monitor.port = 0
    return config


def metric_lines(ws: Workspace, job_id: str, steps: range, line_offset: int = 0, t0: float | None = None,
                 val_every: int = 5) -> None:
    """Append metrics in the shape the recipe writes (worker/recipe.py), one line per step."""
    t0 = time.time() if t0 is None else t0
    with open(ws.metrics_file(job_id), "a", encoding="utf-8") as f:
        for step in steps:
            record: dict[str, Any] = {"step": step, "line_step": line_offset + step, "loss": 3.0 / step, "lr": 1e-3,
                                      "tokens": 100 * step, "step_seconds": 0.5, "time": t0 + step}
            if step % val_every == 0:
                record["val_loss"] = 3.5 / step
            f.write(json.dumps(record) + "\n")


class StateWorkspace:
    """A workspace as a running daemon leaves it: jobs admitted, trained, failed, and state files written."""

    def __init__(self, root: Path) -> None:
        self.config = monitor_config()
        self.ws = make_workspace(root, self.config)
        self.store = JobStore(self.ws).load()
        self.writer = StateWriter(self.ws, time.time() - 60)
        t0 = time.time() - 1000
        self.done = self._admit("done.jsonl", 30)
        self._train(self.done)
        self.done.summary = {"steps": 10, "examples_trained": 30, "tokens": 1000, "first_loss": 3.0,
                             "final_loss": 0.3, "val_loss": 0.35, "line_step": 10}
        self.done.step = 10
        self.done.end_run("completed")
        self.store.move(self.done, JobStatus.COMPLETED, "trained 10 steps")
        self.ws.adapter_dir(self.done.id).mkdir(parents=True)
        atomic_write_json(self.ws.adapter_dir(self.done.id) / "job.json", {"job_id": self.done.id, "steps": 10})
        metric_lines(self.ws, self.done.id, range(1, 11), t0=t0)
        self.bad = self._admit("bad.jsonl", None)
        self.store.move(self.bad, JobStatus.FAILED, "no line is JSON",
                        error={"file": "bad.jsonl", "error": "no line is JSON", "problems": [{"line": 1}]})
        self.current = self._admit("current.jsonl", 40)
        self.waiting = self._admit("waiting.jsonl", 20)
        self.urgent = self._admit("urgent.jsonl", 10, priority="high")
        self._train(self.current)
        self.current.step, self.current.total_steps = 6, 20
        self.store.save(self.current)
        metric_lines(self.ws, self.current.id, range(1, 7), line_offset=10, t0=t0 + 100)
        self.progress = Progress(self.current.id, 6, 20, eta_seconds=7.0, loss=0.5, learning_rate=1e-3,
                                 tokens_per_second=200.0)
        self.write()

    def _admit(self, name: str, examples: int | None, priority: str = "normal") -> Job:
        path = drop(self.ws, name, chat_lines(examples or 3), priority=priority == "high")
        job = self.store.admit(path, "high" if priority == "high" else "normal")
        time.sleep(0.001)
        job.examples = examples
        self.store.save(job)
        return job

    def _train(self, job: Job) -> None:
        job.start_run()
        self.store.move(job, JobStatus.TRAINING, "started")

    def write(self, state: str = "training") -> None:
        current = self.current if self.current.status.active else None
        # The settings as the daemon passes them: those the current job trains with.
        self.writer.write(self.store, current, self.progress, state, "training", os.getpid(), settings=self.config)


# --- a real daemon -----------------------------------------------------------
class MonitoredDaemon:
    """`finetuned run` with its monitor (helpers.DaemonProcess runs without one)."""

    def __init__(self, ws: Workspace, log_path: Path, gate: Gate | None = None, nofile: int | None = None) -> None:
        from finetuned.processes.link import GATE_ENV

        self.ws = ws
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115

        def limits() -> None:  # in the child: the descriptor limit a user's machine may have
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        env = {**os.environ, "PYTHONUNBUFFERED": "1", **({GATE_ENV: str(gate.path)} if gate else {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "finetuned", "run", "--root", str(ws.root)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True, preexec_fn=limits,
        )
        self.url = ""

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def wait_url(self, timeout: float = 60) -> str:
        def ready() -> str | None:
            status = read_json(self.ws.status_json) or {}
            return status.get("monitor_url") if status.get("pid") == self.proc.pid else None

        self.url = wait_for(ready, timeout, "the monitor's URL in control/status.json", daemon=self)  # type: ignore[arg-type]
        return self.url

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 30) -> tuple[int, Any]:
    """One request to a real server; returns the status and the JSON body (or text)."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


class EventReader:
    """Reads a server-sent event stream in a thread, keeping (time, event, data) in arrival order."""

    def __init__(self, url: str) -> None:
        self.events: list[tuple[float, str, Any]] = []
        self.response = urllib.request.urlopen(url, timeout=30)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        name, data = "message", []
        try:
            for raw in self.response:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    data.append(line[6:])
                elif not line and data:
                    self.events.append((time.time(), name, json.loads("\n".join(data))))
                    name, data = "message", []
        except (OSError, ValueError, AttributeError):
            pass  # the stream was closed, by the server or by close()

    def close(self) -> None:
        self.response.close()
        self.thread.join(5)

    def wait(self, predicate, timeout: float = 5) -> tuple[float, str, Any]:
        deadline = time.time() + timeout
        seen = 0
        while time.time() < deadline:
            for event in self.events[seen:]:
                if predicate(event):
                    return event
            seen = len(self.events)
            time.sleep(0.02)
        raise AssertionError(f"no such event in {timeout}s; got {[e[1] for e in self.events]}")
