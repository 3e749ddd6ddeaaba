"""A job trains with the settings it started with: config.json edits reach only jobs not started yet."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import (
    InlineChecker,
    StandInWorker,
    chat_lines,
    drop,
    held_at,
    jobs_by_file,
    logged_losses,
    make_workspace,
    queue_status,
    read_json,
    status_of,
    tiny_config,
    wait_for,
)

from finetuned import fsio
from finetuned.config import Config, save_config
from finetuned.daemon.daemon import Daemon
from finetuned.processes.protocol import Order, Started, Train, Yield, Yielded
from finetuned.queue.job import JobStatus
from finetuned.workspace import Workspace


class RecordingWorker(StandInWorker):
    """Starts every job it is handed (its total steps from the settings it got), yields when asked, and keeps
    each Train order: what the daemon handed over is what a real worker would train with."""

    def __init__(self, orders: list[Train]) -> None:
        super().__init__(pid=4545)
        self.orders = orders

    def send(self, message: Order) -> bool:
        if isinstance(message, Train):
            self.orders.append(message)
            total = 10 * message.config.training.epochs
            self.out.append(Started(job_id=message.job.id, step=message.job.step, total_steps=total,
                                    examples=20, resumed_from=None))
        elif isinstance(message, Yield):
            job = self.orders[-1].job
            self.out.append(Yielded(job_id=job.id, reason=message.reason, step=job.step, checkpoint="sim"))
        return super().send(message)


def in_process(ws: Workspace, orders: list[Train]) -> Daemon:
    daemon = Daemon(ws, ws.load_config(), monitor=False)
    daemon.session.worker_factory = lambda _root, _distributed: RecordingWorker(orders)
    daemon.settings.checker_factory = lambda _root: InlineChecker(ws)
    daemon.store.load().recover()
    return daemon


def ticks(daemon: Daemon, n: int = 6) -> None:
    for _ in range(n):
        daemon.tick()
        daemon.validator.wait()


def edit(ws: Workspace, **training: object) -> None:
    config = ws.load_config()
    for key, value in training.items():
        setattr(config.training, key, value)
    config.control.max_retries = 5  # a daemon-wide setting: it follows config.json, started job or not
    save_config(ws.config_path, config)


def test_every_run_of_a_started_job_takes_its_first_settings_and_a_new_job_the_edit(tmp_path, tiny_model_dir,
                                                                                     monkeypatch):
    monkeypatch.setattr(fsio, "DURABLE", False)
    config = tiny_config()
    config.inbox.settle_seconds = 0
    config.data.prepare_ahead = False  # the preparer is a real process; this test is about what the daemon hands
    ws = make_workspace(tmp_path / "ws", config)
    orders: list[Train] = []
    daemon = in_process(ws, orders)
    drop(ws, "a.jsonl", chat_lines(8))
    ticks(daemon)
    (first,) = orders
    job_id = first.job.id
    assert first.config.training.epochs == 1 and daemon.store.get(job_id).config is not None

    edit(ws, epochs=3, lr_scheduler="cosine")
    ws.pause_file.touch()
    ticks(daemon)
    assert daemon.store.get(job_id).status is JobStatus.PAUSED
    ws.pause_file.unlink()
    ticks(daemon)  # resumed, in the worker that kept its model
    daemon.session.close()
    daemon = in_process(ws, orders)  # a restart: the job's record is all there is of it
    ticks(daemon)
    drop(ws, "b.jsonl", chat_lines(8, "yo"))
    ticks(daemon)
    (ws.control / ".stop").touch()
    ticks(daemon)  # a goes behind b, which had not started: b starts with the edit

    runs = [o for o in orders if o.job.id == job_id]
    assert len(runs) == 3, [o.job.id for o in orders]
    for run in runs:
        assert (run.config.training.epochs, run.config.training.lr_scheduler) == (1, "constant"), \
            "every run of a started job trains as its first did"
        assert run.config.control.max_retries == (2 if run is first else 5), "control.* follows config.json"
    assert daemon.store.get(job_id).total_steps == 10
    (new,) = [o for o in orders if o.job.file == "b.jsonl"]
    assert (new.config.training.epochs, new.config.training.lr_scheduler) == (3, "cosine"), \
        "a job that had not started takes config.json as it is"
    assert read_json(ws.job_record(job_id))["config"]["training"]["epochs"] == 1, "frozen in the record"
    assert "control" not in read_json(ws.job_record(job_id))["config"]
    daemon.session.close()
    daemon.settings.close()
    daemon.validator.close()


def test_a_record_from_before_frozen_settings_loads_and_follows_config_json_until_it_starts(tmp_path):
    ws = Workspace.at(tmp_path)
    ws.create()
    from finetuned.queue.store import JobStore

    store = JobStore(ws).load()
    job = store.admit(drop(ws, "a.jsonl", chat_lines(2)), "normal")
    record = read_json(ws.job_record(job.id))
    del record["config"]  # written by a version that had no such field
    fsio.atomic_write_json(ws.job_record(job.id), record)
    again = JobStore(ws).load().get(job.id)
    assert again.config is None

    from finetuned.overrides import frozen, job_config

    workspace = Config(base_model="builtin:tiny")
    workspace.training.epochs = 4
    assert job_config(workspace, again.overrides, settings=again.config, ws=ws).training.epochs == 4
    started = frozen(workspace)
    workspace.training.epochs = 1
    workspace.distributed.nproc_per_node = 2
    now = job_config(workspace, {}, settings=started, ws=ws)
    assert now.training.epochs == 4 and now.distributed.nproc_per_node == 2


@pytest.mark.daemon
def test_an_edit_while_a_job_is_paused_does_not_change_it_and_job_json_says_what_trained_it(
        tmp_path, tiny_model_dir, start_daemon, gate):
    ws = make_workspace(tmp_path / "ws", tiny_config(mode="independent", epochs=2, checkpoint_every_steps=1000))
    daemon = start_daemon(ws)
    gate.hold(3)
    drop(ws, "long.jsonl", chat_lines(24))
    held_at(ws, "long.jsonl", 3, daemon)
    (ws.control / ".pause").touch()
    wait_for(lambda: queue_status(ws, "long.jsonl") == "paused", 60, "the pause", daemon=daemon)
    total = jobs_by_file(ws)["long.jsonl"]["total_steps"]
    assert total > 6, "two epochs: past the gate, and past what one epoch would give"
    root = ["--root", str(ws.root)]
    for key, value in (("training.epochs", "1"), ("training.lr_scheduler", "cosine")):
        subprocess.run([sys.executable, "-m", "finetuned", "config", "set", key, value, *root], check=True,
                       capture_output=True, timeout=60)
    wait_for(lambda: "config.json changed" in ws.daemon_log().read_text(), 30, "the edit read", daemon=daemon)
    gate.release()
    (ws.control / ".pause").unlink()
    drop(ws, "next.jsonl", chat_lines(8, "yo"))
    wait_for(lambda: status_of(ws, "next.jsonl") == "completed", 240, "both jobs", daemon=daemon)

    jobs = jobs_by_file(ws)
    record = read_json(ws.adapter_record(jobs["long.jsonl"]["id"]))
    assert record["steps"] == record["total_steps"] == total, "it trained every step it started out to train"
    assert record["config"]["training"]["epochs"] == 2
    assert record["config"]["training"]["lr_scheduler"] == "constant"
    lines = [json.loads(line) for line in ws.metrics_file(record["job_id"]).read_text().splitlines()]
    rates = {line["lr"] for line in lines if "lr" in line}
    assert len(rates) == 1, f"a constant schedule from its first step to its last: {sorted(rates)}"
    assert len(logged_losses(ws, record["job_id"])) == total
    after = read_json(ws.adapter_record(jobs["next.jsonl"]["id"]))
    assert after["config"]["training"]["epochs"] == 1 and after["config"]["training"]["lr_scheduler"] == "cosine", \
        "the job that had not started takes the edit"

