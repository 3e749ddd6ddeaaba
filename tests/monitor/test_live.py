"""The API against a real `finetuned run` training builtin:tiny, monitor on, as a user runs it."""

from __future__ import annotations

import time
import urllib.request

import pytest
from helpers import check_queue_shape, jobs_by_file, read_json, wait_for
from monitor_helpers import EventReader, MonitoredDaemon, http
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.timeout(240)


def _status(daemon: MonitoredDaemon) -> dict:
    return http("GET", daemon.url + "api/status")[1]


def _training_step(daemon: MonitoredDaemon) -> int:
    t = _status(daemon)["training"] or {}
    return (t.get("step") or 0) if t.get("status") == "training" else 0


def test_the_monitor_follows_training(live_daemon: MonitoredDaemon):
    daemon = live_daemon
    assert read_json(daemon.ws.status_json)["monitor_url"] == daemon.url
    first = wait_for(lambda: _training_step(daemon) >= 2, 90, "training to start", daemon=daemon)
    status = _status(daemon)
    assert status["daemon"]["responding"] and status["daemon"]["pid"] == daemon.proc.pid
    job_id = status["training"]["id"]
    assert status["training"]["file"] == "long.jsonl" and status["training"]["total_steps"] > 100
    wait_for(lambda: _training_step(daemon) > first, 30, "the step to move on", daemon=daemon)
    check_queue_shape(http("GET", daemon.url + "api/queue")[1])
    points = http("GET", f"{daemon.url}api/jobs/{job_id}/metrics")[1]["points"]
    assert points and points[0]["step"] == 1 and points[0]["loss"] > 0
    with urllib.request.urlopen(daemon.url + "metrics", timeout=10) as response:
        families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    assert families["finetuned_training_step"].samples[0].value >= 1
    assert families["finetuned_up"].samples[0].value == 1


def test_events_carry_new_steps_live(live_daemon: MonitoredDaemon):
    wait_for(lambda: _training_step(live_daemon) >= 1, 90, "training", daemon=live_daemon)
    events = EventReader(live_daemon.url + "api/events")
    _, _, snapshot = events.wait(lambda e: e[1] == "metrics" and e[2]["reset"], 10)
    last = snapshot["columns"]["step"][-1]
    _, _, update = events.wait(lambda e: e[1] == "metrics" and not e[2]["reset"], 10)
    assert update["points"][0]["step"] > last
    events.close()


def test_pause_and_resume_through_the_api(live_daemon: MonitoredDaemon):
    daemon = live_daemon
    wait_for(lambda: _training_step(daemon) >= 1, 90, "training", daemon=daemon)
    asked = time.time()
    assert http("POST", daemon.url + "api/control/pause")[0] == 200
    wait_for(lambda: _status(daemon)["daemon"]["state"] == "paused", 20, "the job to pause", daemon=daemon)
    paused_after = time.time() - asked
    step = _status(daemon)["training"]["step"]
    time.sleep(1)
    assert _status(daemon)["training"]["step"] == step, "nothing trains while paused"
    assert http("POST", daemon.url + "api/control/resume")[0] == 200
    wait_for(lambda: _training_step(daemon) > step, 30, "training to resume", daemon=daemon)
    assert paused_after < 10, f"pause took {paused_after:.1f}s"


def test_upload_cancel_and_front_through_the_daemon(live_daemon: MonitoredDaemon):
    daemon = live_daemon
    for name in ("a.jsonl", "b.jsonl"):
        body = "".join(f'{{"text": "line {i} of {name}"}}\n' for i in range(12)).encode()
        status, reply = http("POST", f"{daemon.url}api/upload?name={name}", body,
                             {"Content-Type": "application/octet-stream"})
        assert status == 201, reply

    def both_queued() -> bool:
        jobs = jobs_by_file(daemon.ws)
        return all(jobs.get(n, {}).get("examples") for n in ("a.jsonl", "b.jsonl"))

    wait_for(both_queued, 30, "the uploads to be queued and checked", daemon=daemon)
    jobs = jobs_by_file(daemon.ws)
    a, b = jobs["a.jsonl"]["id"], jobs["b.jsonl"]["id"]
    status, reply = http("POST", f"{daemon.url}api/queue/{b}/front")
    assert status == 200, reply
    queued = [e["id"] for e in http("GET", daemon.url + "api/queue")[1]["queue"] if e["status"] == "queued"]
    assert queued.index(b) < queued.index(a)
    status, reply = http("POST", f"{daemon.url}api/queue/{a}/cancel")
    assert status == 200 and "cancelled" in reply["message"], reply
    assert jobs_by_file(daemon.ws)["a.jsonl"]["status"] == "skipped"
    assert (daemon.ws.skipped / "a.jsonl").exists()


def test_the_monitor_stops_with_the_daemon(live_daemon: MonitoredDaemon):
    url = live_daemon.url
    assert live_daemon.stop() == 0
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "api/status", timeout=2)


@pytest.mark.daemon
def test_a_token_set_while_the_daemon_runs_guards_the_monitor_at_once(tmp_path, tiny_model_dir):
    """`config set monitor.token` on a running daemon: an unauthenticated POST paused it anyway until a restart."""
    import subprocess
    import sys

    from helpers import make_workspace
    from monitor_helpers import monitor_config

    ws = make_workspace(tmp_path / "ws", monitor_config())
    daemon = MonitoredDaemon(ws, tmp_path / "daemon.out")
    try:
        url = daemon.wait_url()
        assert http("GET", url + "api/status")[0] == 200
        token = "a-token-set-while-running"
        subprocess.run([sys.executable, "-m", "finetuned", "config", "set", "monitor.token", token,
                        "--root", str(ws.root)], check=True, capture_output=True, timeout=60)
        wait_for(lambda: http("GET", url + "api/status")[0] == 401, 30, "the new token to be asked for",
                 daemon=daemon)
        assert http("POST", url + "api/control/pause", b"")[0] == 401
        assert not ws.pause_file.exists(), "nobody without the token pauses it"
        assert http("GET", url + "api/status", headers={"Authorization": f"Bearer {token}"})[0] == 200
        assert "monitor settings applied" in ws.daemon_log().read_text()
    finally:
        daemon.stop()
