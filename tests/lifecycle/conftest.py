"""Fixtures of the lifecycle tests: a workspace with one completed job, built once and copied."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import chat_lines, make_workspace
from lifecycle_helpers import lifecycle_config, train_job

from finetuned.workspace import Workspace


@pytest.fixture(scope="session")
def trained_template(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """One workspace with one completed job, built once and copied by `trained`."""
    ws = make_workspace(tmp_path_factory.mktemp("template") / "ws", lifecycle_config())
    train_job(ws, "first.jsonl", chat_lines(12))
    return ws.root


@pytest.fixture
def trained(tmp_path: Path, trained_template: Path) -> Workspace:
    shutil.copytree(trained_template, tmp_path / "ws", symlinks=True)
    return Workspace.at(tmp_path / "ws")


@pytest.fixture(scope="session")
def converter_sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """llama.cpp's pinned sdist (76 MB), fetched from PyPI once for the whole run."""
    from finetuned.lifecycle import converter

    folder = tmp_path_factory.mktemp("sdist")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
                    f"{converter.PACKAGE}=={converter.VERSION}", "-d", str(folder)], check=True, timeout=1800)
    return folder / converter.SDIST


@pytest.fixture(scope="session")
def gguf_converter(request: pytest.FixtureRequest) -> Path:
    """llama.cpp's converter in the user's cache; the first time, unpacked from the run's sdist (as `ensure`
    does with one put in the cache by hand)."""
    from finetuned.lifecycle import converter

    if converter.ready() is None:
        sdist = request.getfixturevalue("converter_sdist")
        converter.folder().mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sdist, converter.folder() / converter.SDIST)
    return converter.ensure()
