from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import DaemonProcess, make_workspace

from finetuned.models.builtin import materialize


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """builtin:tiny written out once (cached per user after the first build)."""
    return materialize("builtin:tiny", tmp_path_factory.mktemp("base"))


@pytest.fixture
def ws(tmp_path: Path, tiny_model_dir: Path):
    return make_workspace(tmp_path / "ws")


@pytest.fixture
def start_daemon(tmp_path: Path):
    started: list[DaemonProcess] = []

    def start(ws) -> DaemonProcess:
        daemon = DaemonProcess(ws, tmp_path / f"daemon-{len(started)}.out")
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop(timeout=20)
