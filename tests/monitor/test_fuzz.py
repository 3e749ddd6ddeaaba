"""A fuzz pass over the OpenAPI schema: whatever a client sends, the monitor never answers 5xx."""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from monitor_helpers import LOCAL, StateWorkspace
from schemathesis.checks import not_a_server_error

from finetuned.config import MonitorSettings
from finetuned.monitor.app import create_app
from finetuned.queue import actions


def _daemon_side(state: StateWorkspace, stop: threading.Event) -> None:
    """Answers queue requests and keeps the heartbeat fresh, with the daemon's own functions."""
    while not stop.is_set():
        for request in actions.pending(state.ws):
            actions.answer(state.ws, state.store, request)
        state.write()
        time.sleep(0.05)


# Built at import: schemathesis parametrizes at collection time (its from_fixture trips on pytest 9).
_ROOT = Path(tempfile.mkdtemp(prefix="finetuned-fuzz-"))
atexit.register(shutil.rmtree, _ROOT, True)  # also when the module is collected but not run
STATE = StateWorkspace(_ROOT / "ws")
APP = create_app(STATE.ws, MonitorSettings(max_upload_mb=0.01))
# the event stream never ends by design; it has its own tests
# a loopback Host, as a browser on this machine sends: the schema answers no other on a loopback monitor
schema = schemathesis.openapi.from_asgi("/openapi.json", APP, headers={"Host": "127.0.0.1"}).exclude(path="/api/events")


@pytest.fixture(scope="module", autouse=True)
def daemon_side():
    stop = threading.Event()
    thread = threading.Thread(target=_daemon_side, args=(STATE, stop), daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(5)


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: schemathesis.Case) -> None:
    case.call_and_validate(base_url=LOCAL, checks=[not_a_server_error])
