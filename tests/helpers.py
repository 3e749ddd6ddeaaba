"""Shared test helpers: workspaces on the tiny model, a real daemon process, polling."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from finetuned.config import Config, save_config
from finetuned.processes.protocol import Ask, Order, Phase, Report, Shutdown, Step, Train, Yield, YieldReason
from finetuned.queue.job import Job, JobStatus
from finetuned.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def tiny_config(**training: Any) -> Config:
    """A config that trains builtin:tiny in well under a second a step."""
    config = Config(base_model="builtin:tiny")
    config.training.batch_size = 2
    config.training.max_seq_len = 128
    config.training.learning_rate = 5e-3
    config.training.warmup_steps = 0
    config.training.log_every_steps = 1
    config.training.checkpoint_every_steps = 5
    # Exact-loss tests (TRL's fp32 numbers among them) hold on any CPU; bf16 tests ask for it by name.
    config.training.precision = "fp32"
    config.inbox.settle_seconds = 0.3
    config.inbox.poll_seconds = 0.2
    config.data.holdout_fraction = 0.0
    for key, value in training.items():
        setattr(config.training, key, value)
    return config


class Driver:
    """Plays the daemon's side of the worker's pipe in-process: keeps every report, yields after a chosen step,
    asks the questions in `asks` at the boundary after their step."""

    def __init__(self, yield_at: int | None = None, reason: YieldReason = YieldReason.STOP,
                 asks: dict[int, list[Ask]] | None = None, yield_when_evaluating: bool = False) -> None:
        self.messages: list[Report] = []
        self.yield_at = yield_at
        self.reason = reason
        self.asks = {step: list(questions) for step, questions in (asks or {}).items()}
        self.yield_when_evaluating = yield_when_evaluating  # a control arrives as the first round starts
        self.pending: Yield | None = None

    def send(self, message: Report) -> None:
        self.messages.append(message)
        if self.yield_when_evaluating and isinstance(message, Phase) and message.phase == "evaluating":
            self.yield_when_evaluating, self.pending = False, Yield(self.reason)

    def waiting(self) -> bool:
        return self.pending is not None

    def poll(self, step: int) -> Yield | Ask | None:
        if self.pending is not None:
            order, self.pending = self.pending, None
            return order
        if self.asks.get(step):
            return self.asks[step].pop(0)
        if self.yield_at is not None and step == self.yield_at:
            self.yield_at = None
            return Yield(self.reason)
        return None

    def world(self) -> Any:
        from finetuned.worker.world import Solo

        return Solo(self.send, self.poll, waiting=self.waiting)

    def of(self, kind: type) -> list[Any]:
        return [m for m in self.messages if isinstance(m, kind)]

    def last(self, kind: type) -> Any:
        found = self.of(kind)
        assert found, f"no {kind.__name__} report among {[type(m).__name__ for m in self.messages]}"
        return found[-1]

    def losses(self) -> list[float]:
        return [m.loss for m in self.of(Step)]


def train_in_process(ws: Workspace, config: Config, job: Job | str, file: Path, driver: Driver,
                     cache: Any = None, exclude: set[str] | frozenset[str] = frozenset()) -> Any:
    """Run one job with the real recipe in this process, as the worker would; returns the model cache,
    which a next call may reuse (the model stays loaded, as in the worker)."""
    from finetuned.worker.cache import ModelCache
    from finetuned.worker.recipe import run_job

    if isinstance(job, str):
        job = Job(id=job, file=file.name, order=1.0, path=str(file), status=JobStatus.TRAINING)
    cache = cache or ModelCache(ws)
    run_job(ws, Train(job=job, file=file, config=config, line_exclude=frozenset(exclude)), cache, driver.world())
    return cache


def make_workspace(root: Path, config: Config | None = None) -> Workspace:
    ws = Workspace.at(root)
    ws.create()
    save_config(ws.config_path, config or tiny_config())
    return ws


def chat_lines(n: int, tag: str = "hi") -> list[dict[str, Any]]:
    """A learnable toy task: the answer is a fixed function of the question."""
    return [
        {"messages": [{"role": "user", "content": f"Say {tag} number {i % 5}."},
                      {"role": "assistant", "content": f"{tag} {i % 5} {tag} {i % 5}."}]}
        for i in range(n)
    ]


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def drop(ws: Workspace, name: str, records: list[dict[str, Any]], priority: bool = False) -> Path:
    """Drop a file as a careful user would: written aside, then renamed into the inbox."""
    folder = ws.inbox_priority if priority else ws.inbox_normal
    tmp = write_jsonl(folder / f".{name}.part", records)
    final = folder / name
    tmp.rename(final)
    return final


def wait_for(predicate: Callable[[], Any], timeout: float = 60, what: str = "condition",
             interval: float = 0.1, daemon: DaemonProcess | None = None) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if daemon is not None and daemon.proc.poll() is not None:
            raise AssertionError(f"daemon exited ({daemon.proc.returncode}) waiting for {what}:\n{daemon.output()}")
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" +
                         (f"\n{daemon.output()}" if daemon else ""))


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def job_records(ws: Workspace) -> dict[str, dict[str, Any]]:
    out = {}
    for path in ws.jobs.glob("*.json"):
        record = read_json(path)
        if record:
            out[record["id"]] = record
    return out


def jobs_by_file(ws: Workspace) -> dict[str, dict[str, Any]]:
    return {r["file"]: r for r in job_records(ws).values()}


def status_of(ws: Workspace, file: str) -> str | None:
    record = jobs_by_file(ws).get(file)
    return record["status"] if record else None


class InlineChecker:
    """The checker process's loop (worker/checker.py) without the process: each check runs when it is sent."""

    def __init__(self, ws: Workspace, log: list[str] | None = None) -> None:
        self.ws, self.checked, self.stopping, self.running = ws, log if log is not None else [], False, True
        self.answers: list[Report] = []

    def send(self, message: Order) -> bool:
        from finetuned.models.check import check_base_model
        from finetuned.models.loading import ModelError
        from finetuned.processes.protocol import CheckModel, ModelChecked

        if isinstance(message, Shutdown):
            self.running = False
        elif isinstance(message, CheckModel):
            self.checked.append(message.config.base_model)
            try:
                summary = check_base_model(message.config, self.ws).summary
                self.answers.append(ModelChecked(key=message.key, error=None, summary=summary))
            except ModelError as exc:
                self.answers.append(ModelChecked(key=message.key, error=str(exc)))
        return True

    def receive(self) -> list[Report]:
        out, self.answers = self.answers, []
        return out

    def alive(self) -> bool:
        return self.running

    def exit_reason(self) -> str:
        return "exited"

    def shutdown(self, timeout: float = 10) -> None:
        self.running = False


class Gate:
    """Holds a daemon's worker at a step boundary (worker/main.py's step gate): a test reaches "mid-job"
    deterministically, whatever the machine's speed. Open (no file) unless told to hold."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def hold(self, step: int) -> None:
        """Let the job in the worker finish steps up to `step`, then wait there (still obeying controls)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(str(step))
        tmp.rename(self.path)

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


class DaemonProcess:
    """`finetuned run` as a real process, its output kept in a file for failure messages."""

    def __init__(self, ws: Workspace, log_path: Path, gate: Gate | None = None, monitor: bool = False) -> None:
        from finetuned.processes.link import GATE_ENV

        self.ws = ws
        self.log_path = log_path
        self.gate = gate
        self._log = open(log_path, "ab")  # noqa: SIM115
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if gate is not None:
            env[GATE_ENV] = str(gate.path)
        command = [sys.executable, "-m", "finetuned", "run", "--root", str(ws.root)]
        self.proc = subprocess.Popen(
            command if monitor else [*command, "--no-monitor"],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )

    def monitor_url(self, timeout: float = 60) -> str:
        """The monitor's URL once it listens (a daemon started with `monitor=True`)."""
        def ready() -> str | None:
            status = read_json(self.ws.status_json) or {}
            return status.get("monitor_url") if status.get("pid") == self.proc.pid else None

        return wait_for(ready, timeout, "the monitor's URL in control/status.json", daemon=self)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def worker_pid(self) -> int | None:
        status = read_json(self.ws.status_json) or {}
        return status.get("worker_pid")

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def where_is(ws: Workspace, job: dict[str, Any]) -> list[Path]:
    """Every place a job's file is found, to check it is in exactly one."""
    places = []
    for folder in (ws.inbox, ws.inbox_normal, ws.inbox_priority):
        places += [p for p in folder.iterdir() if p.is_file() and p.name == job["file"]]
    stored = Path(job["path"]).name  # a long name is stored shortened (fsio.fit_name)
    places += [p for p in ws.queued.iterdir() if p.name.endswith("__" + job["file"]) or p.name == stored]
    renamed = job["file"].split(".")[0] + "." + job["id"]  # fsio.unique_path's name on a collision
    for folder in (ws.completed, ws.failed, ws.skipped):
        places += [p for p in folder.iterdir()
                   if p.name in (job["file"], stored)
                   or (p.name.startswith(renamed) and not p.name.endswith(".error.json"))]
    return places


SPEC_QUEUE_KEYS = {"id", "file", "priority", "size", "added", "status"}


def check_queue_shape(doc: dict[str, Any]) -> None:
    """control/queue.json as SPEC section 3 shows it."""
    assert set(doc) >= {"queue", "current"}, doc
    for entry in doc["queue"]:
        assert set(entry) >= SPEC_QUEUE_KEYS, entry
        assert entry["priority"] in ("high", "normal")
        assert entry["status"] in ("queued", "training", "paused")
        assert entry["size"].endswith(" examples") or entry["size"] == "checking"
        time.strptime(entry["added"], "%Y-%m-%d %H:%M:%S")
    if doc["current"] is not None:
        assert set(doc["current"]) >= {"id", "progress", "step", "eta"}, doc["current"]
        assert doc["current"]["progress"].endswith("%")
        assert "/" in doc["current"]["step"]


def logged_losses(ws: Workspace, job_id: str) -> dict[int, float]:
    """Per-step losses from logs/metrics; a step logged twice (redone after a crash) keeps its last value."""
    path = ws.metrics_file(job_id)
    if not path.exists():
        return {}
    losses = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        losses[record["step"]] = record["loss"]
    return losses


def last_step(ws: Workspace, file: str) -> int:
    job = jobs_by_file(ws).get(file)
    return max(logged_losses(ws, job["id"]), default=0) if job else 0


def held_at(ws: Workspace, file: str, step: int, daemon: DaemonProcess, timeout: float = 120) -> None:
    """Wait until `file`'s job has trained exactly `step` steps and waits at the gate there: its metrics line is
    written, and the daemon has the step's report, which the worker sends once the step's checkpoint (if one is
    due) is written, or started in the background."""
    wait_for(lambda: last_step(ws, file) >= step, timeout, f"{file} to reach step {step}", daemon=daemon)
    wait_for(lambda: reported_step(ws) >= step, timeout, f"the daemon to hear of step {step}", daemon=daemon)
    assert last_step(ws, file) == step, f"{file} went past the gate at step {step}"


def reported_step(ws: Workspace) -> int:
    """The step of the job in the worker as the daemon last published it (0 when none)."""
    job = (read_json(ws.training_status_json) or {}).get("job") or {}
    return job.get("step") or 0


def queue_status(ws: Workspace, file: str) -> str | None:
    doc = read_json(ws.queue_json) or {"queue": []}
    return next((e["status"] for e in doc["queue"] if e["file"] == file), None)


def greedy_answer(target: Any, config: Config, prompt: str) -> str:
    """The model's own greedy answer to `prompt`, as Try it renders and generates it (a lifecycle Target)."""
    from finetuned.chat.generate import reply
    from finetuned.data.masking import prompt_ids
    from finetuned.lifecycle.targets import load

    model, tokenizer = load(target, config)
    return reply(model, tokenizer, prompt_ids(tokenizer, [{"role": "user", "content": prompt}]),
                 config.previews.max_new_tokens)


# Two evaluation suites: "never" scores 0 whatever the model learns, so early stopping on `eval:never` ends a
# job `patience` measurements after the first; "hi" is scored beside it.
EVAL_SUITES = {
    "never": [{"prompt": "Say hi number 1.", "expected": "an answer the model never gives", "scorer": "exact"}],
    "hi": [{"prompt": f"Say hi number {i}.", "expected": f"hi {i}", "scorer": "contains"} for i in range(3)],
}


def with_suites(ws: Workspace) -> Workspace:
    """The workspace with EVAL_SUITES in its evals/ folder."""
    ws.evals.mkdir()
    for name, rows in EVAL_SUITES.items():
        write_jsonl(ws.evals / f"{name}.jsonl", rows)
    return ws


def fill(path: Path, chunk: int = 1 << 20) -> int:
    """Write zeros into `path` until the file system says it is full; returns the bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                written += f.write(b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                if chunk == 1:
                    return written
                chunk //= 16


def serve_asleep(ws: Workspace, link: object) -> None:
    """A child program (processes/child.py) that reads no order: a worker deep in a long step."""
    time.sleep(120)


class StandInWorker:
    """What the daemon needs of a child (processes/handle.py `Child`) for a worker that lives in the test: a
    subclass says what `send` does and puts its reports in `out`."""

    def __init__(self, pid: int = 4343) -> None:
        self.out: list[Report] = []
        self.pid, self.last_heard, self.stopping, self._alive = pid, 1e18, False, True

    def send(self, message: Order) -> bool:
        if isinstance(message, Shutdown):
            self._alive = False
        return True

    def receive(self) -> list[Report]:
        out, self.out = self.out, []
        return out

    def alive(self) -> bool:
        return self._alive

    def exit_reason(self) -> str:
        return "gone"

    def kill(self) -> None:
        self._alive = False

    def abandon(self) -> None:
        self._alive = False

    def shutdown(self, timeout: float = 0) -> None:
        self._alive = False
