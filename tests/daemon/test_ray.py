"""Ray Train on a local two-node cluster (`ray.cluster_utils.Cluster`), through the real daemon."""

from __future__ import annotations

import os
import signal

import psutil
import pytest
from helpers import (
    Driver,
    chat_lines,
    drop,
    held_at,
    jobs_by_file,
    logged_losses,
    make_workspace,
    read_json,
    status_of,
    tiny_config,
    train_in_process,
    wait_for,
    write_jsonl,
)

from finetuned.config import Config

pytestmark = pytest.mark.ray


@pytest.fixture(autouse=True)
def _needs_ray() -> None:
    """Skipped without Ray; imported when a test runs, not when plain `pytest` collects this module to leave it out."""
    pytest.importorskip("ray")


def on_ray(address: str, **training) -> Config:
    config = tiny_config(mode="independent", batch_size=3, **training)
    config.lora.dropout = 0.0  # equal losses on any number of ranks need no dropout (docs/scaling.md)
    config.distributed.launcher = "ray"
    config.distributed.ray.address = address
    config.distributed.ray.num_workers = 2
    config.distributed.ray.resources_per_worker = {"CPU": 1}  # one on each node
    return config


def train_workers() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if "RayTrainWorker" in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


def test_a_job_on_two_ray_workers_survives_losing_one(tmp_path, tiny_model_dir, start_daemon, gate, ray_cluster):
    """Two workers on two nodes train the job; one is killed mid-job; Ray Train restarts the group, the job
    resumes from its checkpoint, completes, and logs the losses of an uninterrupted single process."""
    config = on_ray(ray_cluster.address, checkpoint_every_steps=2, epochs=2)
    records = chat_lines(50)
    ws = make_workspace(tmp_path / "ws", config)
    daemon = start_daemon(ws)
    gate.hold(3)
    drop(ws, "data.jsonl", records)
    held_at(ws, "data.jsonl", 3, daemon, timeout=300)
    workers = wait_for(lambda: train_workers() if len(train_workers()) == 2 else None, 30, "two Ray Train workers")
    os.kill(workers[-1].pid, signal.SIGKILL)
    log = ws.daemon_log()
    shown = wait_for(lambda: [line for line in log.read_text().splitlines() if "Ray Train restarted" in line],
                     180, "the restart to be shown", daemon=daemon)
    assert "rank " in shown[0] and "died" in shown[0], f"the reason, as Ray's controller saw it: {shown[0]}"
    gate.release()
    wait_for(lambda: status_of(ws, "data.jsonl") == "completed", 300, "the job after the restart", daemon=daemon)

    job = jobs_by_file(ws)["data.jsonl"]
    assert len(job["runs"]) == 1, "Ray's restart is inside the run: the daemon did not have to retry the job"
    solo = config.model_copy(deep=True)
    solo.distributed.launcher = "none"
    plain = Driver()
    train_in_process(make_workspace(tmp_path / "solo", solo), solo, "job", write_jsonl(tmp_path / "s.jsonl", records),
                     plain)
    losses = logged_losses(ws, job["id"])
    assert [losses[s] for s in sorted(losses)] == pytest.approx(plain.losses(), abs=1e-5)
    record = read_json(ws.adapter_dir(job["id"]) / "job.json")
    assert record["steps"] == record["total_steps"] == len(plain.losses())
    assert daemon.stop() == 0
    wait_for(lambda: not train_workers(), 60, "the Ray workers to end with the run")


def test_no_cluster_at_the_address_fails_the_job_with_that_reason(tmp_path, tiny_model_dir, start_daemon):
    config = on_ray("127.0.0.1:1")
    config.control.max_retries = 0
    ws = make_workspace(tmp_path / "ws", config)
    daemon = start_daemon(ws)
    drop(ws, "data.jsonl", chat_lines(6))
    wait_for(lambda: status_of(ws, "data.jsonl") == "failed", 120, "the job to fail", daemon=daemon)
    reason = jobs_by_file(ws)["data.jsonl"]["runs"][-1]["reason"]
    assert "no Ray cluster: nothing answers at 127.0.0.1:1" in reason, reason
