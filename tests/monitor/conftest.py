"""Fixtures of the monitor's tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import chat_lines, drop, make_workspace
from monitor_helpers import LOCAL, MonitoredDaemon, StateWorkspace, monitor_config

from finetuned.monitor.app import create_app


@pytest.fixture
def state(tmp_path: Path) -> StateWorkspace:
    return StateWorkspace(tmp_path / "ws")


@pytest.fixture
def client(state: StateWorkspace) -> TestClient:
    app = create_app(state.ws, state.ws.load_config().monitor)
    with TestClient(app, base_url=LOCAL) as c:
        yield c


@pytest.fixture(scope="module")
def live_daemon(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    """One daemon for a test module, training a long file so controls always have a job to act on."""
    root = tmp_path_factory.mktemp("live")
    ws = make_workspace(root / "ws", monitor_config(epochs=3, checkpoint_every_steps=10))
    drop(ws, "long.jsonl", chat_lines(4000, "hi"))
    daemon = MonitoredDaemon(ws, root / "daemon.out")
    daemon.wait_url()
    yield daemon
    daemon.stop()
