"""The systemd unit's content; the consolidation schedule."""

from __future__ import annotations

import configparser
import re
import sys
from datetime import datetime

from helpers import chat_lines
from lifecycle_helpers import cli, train_job

from finetuned.config import save_config
from finetuned.lifecycle import service
from finetuned.lifecycle.consolidate import consolidate
from finetuned.lifecycle.schedule import consolidation_due
from finetuned.workspace import Workspace


def parse_unit(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False, comment_prefixes=("#",))
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(text)
    return parser


def test_service_unit_runs_the_daemon_and_stops_it_gently(tmp_path):
    ws = Workspace.at(tmp_path / "my training")
    ws.create()
    units = tmp_path / "units"
    path = service.install(ws, units)
    assert re.fullmatch(r"finetuned-my-training-[0-9a-f]{8}\.service", path.name), path.name
    unit = parse_unit(path.read_text())
    s = unit["Service"]
    assert s["ExecStart"] == f'{sys.executable} -m finetuned run --root "{ws.root}"'
    assert s["WorkingDirectory"] == str(ws.root)
    assert (s["Restart"], s["KillSignal"], s["KillMode"]) == ("on-failure", "SIGTERM", "mixed")
    assert int(s["TimeoutStopSec"]) >= 300, "long enough to write a checkpoint"
    assert unit["Install"]["WantedBy"] == "default.target"
    assert service._quote("50%") == "50%%"

    shown = cli("service", "install", "--root", str(ws.root), "--unit-dir", str(units), "--stop-timeout", "900")
    assert shown.returncode == 0, shown.stderr
    assert f"systemctl --user daemon-reload && systemctl --user enable --now {path.name}" in \
        shown.stdout.replace("\n", " ")
    assert parse_unit(path.read_text())["Service"]["TimeoutStopSec"] == "900"
    assert service.uninstall(ws, units) == path and not path.exists()
    assert service.uninstall(ws, units) is None


def test_two_workspaces_with_the_same_folder_name_get_their_own_units(tmp_path):
    units = tmp_path / "units"
    one, two = Workspace.at(tmp_path / "a" / "training"), Workspace.at(tmp_path / "b" / "training")
    first, second = service.install(one, units), service.install(two, units)
    assert first != second and first.exists() and second.exists()
    assert f"--root {one.root}" in first.read_text() and f"--root {two.root}" in second.read_text()
    legacy = units / "finetuned-training.service"  # written before units had the hash, for workspace one
    legacy.write_text(service.unit_text(one))
    service.uninstall(one, units)
    assert not first.exists() and second.exists()
    assert service.uninstall(two, units) == second
    assert service.uninstall(two, units) is None and legacy.exists(), "another workspace's unit is not ours"
    assert service.uninstall(one, units) == legacy and not legacy.exists()


def test_scheduled_consolidation_is_due_after_n_jobs_or_daily(trained):
    config = trained.load_config()
    assert consolidation_due(trained, config) is None, "no schedule configured"
    config.lifecycle.consolidate.every_jobs = 2
    save_config(trained.config_path, config)
    assert consolidation_due(trained, config) is None, "one job of two"
    train_job(trained, "second.jsonl", chat_lines(12, "yo"))
    assert "2 job(s) completed" in consolidation_due(trained, config)

    config.lifecycle.consolidate.every_jobs = None
    config.lifecycle.consolidate.daily_at = "03:00"
    assert consolidation_due(trained, config, datetime(2026, 1, 1, 2, 59)) is None
    assert "daily at 03:00" in consolidation_due(trained, config, datetime.now().replace(hour=3, minute=1))
    consolidate(trained, use=False)
    assert consolidation_due(trained, config, datetime.now().replace(hour=23, minute=59)) is None, \
        "what the version holds is not due again"
    train_job(trained, "stopped.jsonl", chat_lines(40), yield_at=1)
    config.lifecycle.consolidate.every_jobs = 1
    assert consolidation_due(trained, config) is None, "never while a job is part-way"
