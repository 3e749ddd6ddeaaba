"""The real server (uvicorn in a thread, as the daemon runs it): ports, the event stream, a clean stop."""

from __future__ import annotations

import json
import socket
import time
import urllib.request

import pytest
from monitor_helpers import EventReader, StateWorkspace, http

from finetuned.config import MonitorSettings
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
