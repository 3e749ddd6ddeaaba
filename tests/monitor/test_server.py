"""The real server (uvicorn in a thread, as the daemon runs it): ports, the event stream, a clean stop."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
import urllib.parse
import urllib.request

import pytest
from helpers import chat_lines, drop, make_workspace, read_json, status_of, wait_for
from monitor_helpers import EventReader, MonitoredDaemon, StateWorkspace, http, monitor_config

from finetuned.config import MonitorSettings
from finetuned.monitor import events as events_module
from finetuned.monitor.server import MonitorRefused, MonitorServer
from finetuned.queue.job import JobStatus


@pytest.fixture
def server(state: StateWorkspace):
    server = MonitorServer(state.ws, MonitorSettings(port=0))
    server.start()
    yield server
    server.stop()


def test_port_0_binds_an_ephemeral_port_and_reports_it(server: MonitorServer):
    assert server.url.startswith("http://127.0.0.1:") and not server.url.endswith(":0/")
    status, body = http("GET", server.url + "api/status")
    assert status == 200 and body["daemon"]["responding"] is True


def test_a_port_in_use_is_a_one_line_refusal(state: StateWorkspace):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MonitorRefused, match=f"cannot listen on 127.0.0.1:{port}"):
            MonitorServer(state.ws, MonitorSettings(port=port)).start()


def test_events_push_a_state_change_within_a_second(server: MonitorServer, state: StateWorkspace):
    events = EventReader(server.url + "api/events")
    first = {name for _, name, _ in (events.wait(lambda e: e[1] == "metrics"), *events.events)}
    assert {"hello", "status", "queue", "metrics"} <= first, "a snapshot first"
    changed = time.time()
    state.current.end_run("paused")
    state.store.move(state.current, JobStatus.PAUSED, "paused at step 6")
    state.write(state="paused")
    at, _, body = events.wait(lambda e: e[1] == "status" and e[2]["daemon"]["state"] == "paused")
    assert at - changed < 1.0, f"pushed after {at - changed:.2f}s"
    assert body["training"]["status"] == "paused"
    with open(state.ws.metrics_file(state.current.id), "a") as f:
        f.write(json.dumps({"step": 7, "line_step": 17, "loss": 0.4, "time": time.time()}) + "\n")
    _, _, metrics = events.wait(lambda e: e[1] == "metrics" and not e[2]["reset"])
    assert [p["step"] for p in metrics["points"]] == [7], "only the new points"


def test_stop_ends_open_event_streams_promptly(state: StateWorkspace):
    server = MonitorServer(state.ws, MonitorSettings(port=0))
    server.start()
    events = EventReader(server.url + "api/events")
    events.wait(lambda e: e[1] == "status")
    started = time.time()
    server.stop()
    assert time.time() - started < 3, "a connected page must not hold the daemon's exit"
    events.thread.join(3)
    assert not events.thread.is_alive(), "the stream is closed"
    with pytest.raises(OSError):
        urllib.request.urlopen(server.url + "api/status", timeout=2)


def answers(url: str) -> bool:
    try:
        return http("GET", url, timeout=5)[0] == 200
    except OSError:  # refused while the monitor is at its limit
        return False


@pytest.mark.daemon
def test_half_open_sockets_cannot_take_the_daemon_s_descriptors(tmp_path, tiny_model_dir):
    """1,100 sockets sending half a request killed a daemon limited to 1,024 descriptors: here 400 against 256.

    The monitor keeps at most a quarter of the limit, drops the rest at once and the half-open ones after
    `monitor.header_timeout_seconds`: the daemon lives, its log stays small, and a request answers after.
    """
    config = monitor_config()
    config.monitor.header_timeout_seconds = 2
    ws = make_workspace(tmp_path / "ws", config)
    daemon = MonitoredDaemon(ws, tmp_path / "daemon.out", nofile=256)
    try:
        url = daemon.wait_url()
        address = urllib.parse.urlsplit(url)
        sockets = []
        for _ in range(400):
            sock = socket.create_connection((address.hostname, address.port), timeout=5)
            with contextlib.suppress(OSError):  # refused at once: the monitor is at its limit
                sock.sendall(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # the head never ends
            sockets.append(sock)
        time.sleep(3)
        status = read_json(ws.status_json)
        assert daemon.proc.poll() is None, daemon.output()
        assert time.time() - status["heartbeat_unix"] < 3, "the daemon's loop went on writing its heartbeat"
        wait_for(lambda: answers(url + "api/status"), 20, "a normal request to answer while the sockets are still open",
                 daemon=daemon)
        for sock in sockets:
            sock.close()
        drop(ws, "after.jsonl", chat_lines(6))
        wait_for(lambda: status_of(ws, "after.jsonl") == "completed", 180, "a job to train after it", daemon=daemon)
        logs = sum(p.stat().st_size for p in ws.logs.glob("*.log")) + daemon.log_path.stat().st_size
        assert logs < 100_000, f"{logs} bytes of log"
    finally:
        daemon.stop()


@pytest.mark.e2e
def test_many_event_streams_ending_at_once_log_no_error(server: MonitorServer, state: StateWorkspace, caplog):
    """200 pages closing while events flow: a normal end of a stream, never an ERROR with a traceback."""
    stop = threading.Event()

    def train() -> None:  # a metrics line and a status write every 20 ms: events in flight all along
        step = 7
        while not stop.is_set():
            with open(state.ws.metrics_file(state.current.id), "a") as f:
                f.write(json.dumps({"step": step, "line_step": 10 + step, "loss": 0.4, "time": time.time()}) + "\n")
            state.write()
            step += 1
            time.sleep(0.02)

    writer = threading.Thread(target=train, daemon=True)
    writer.start()
    caplog.set_level(logging.WARNING)
    try:
        readers = [EventReader(server.url + "api/events") for _ in range(200)]
        for reader in readers:
            reader.wait(lambda e: e[1] == "metrics", 30)
        for reader in readers:
            reader.response.close()
        time.sleep(2)
        assert http("GET", server.url + "api/status")[0] == 200
    finally:
        stop.set()
        writer.join(5)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() + str(r.exc_info and r.exc_info[1]) for r in errors][:3]


def test_one_producer_builds_each_change_once_for_every_page(server: MonitorServer, state: StateWorkspace,
                                                              monkeypatch):
    built = []
    real = events_module.status_view
    monkeypatch.setattr(events_module, "status_view", lambda *a, **k: built.append(1) or real(*a, **k))
    readers = [EventReader(server.url + "api/events") for _ in range(20)]
    for reader in readers:
        reader.wait(lambda e: e[1] == "status", 10)
    built.clear()
    state.write(state="paused")
    for reader in readers:
        reader.wait(lambda e: e[1] == "status" and e[2]["daemon"]["state"] == "paused", 10)
    assert len(built) <= 2, f"status built {len(built)} times for 20 pages"


def test_a_page_gets_the_metrics_history_once_in_columns(server: MonitorServer, state: StateWorkspace):
    metrics = state.ws.metrics_file(state.current.id)
    last = json.loads(metrics.read_text().splitlines()[-1])
    with metrics.open("a") as f:  # an evaluation round and a preference step: the page charts those too
        f.write(json.dumps({"step": last["step"] + 1, "loss": 0.5, "eval/qa": 0.75, "rewards/margins": 1.5}) + "\n")
    events = EventReader(server.url + "api/events")
    _, _, history = events.wait(lambda e: e[1] == "metrics", 10)
    assert history["reset"] and "points" not in history
    logged = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert history["columns"]["step"] == [r["step"] for r in logged]
    assert history["columns"]["loss"] == [r["loss"] for r in logged]
    assert history["columns"]["val_loss"] == [r.get("val_loss") for r in logged]
    assert history["columns"]["eval/qa"] == [None] * (len(logged) - 1) + [0.75]
    assert history["columns"]["rewards/margins"][-1] == 1.5
