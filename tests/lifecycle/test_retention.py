"""Retention (`finetuned gc`): what it removes, and everything it must never touch."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from helpers import chat_lines, make_workspace
from lifecycle_helpers import cli, lifecycle_config, train_job

from finetuned.fsio import atomic_write_json
from finetuned.lifecycle import retention
from finetuned.lifecycle.consolidate import consolidate
from finetuned.lifecycle.errors import LifecycleError
from finetuned.lock import WorkspaceLock
from finetuned.workspace import Workspace


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def make_old(path: Path) -> Path:
    """A folder nobody has written to for longer than retention's quiet period."""
    path.mkdir(parents=True)
    stamp = time.time() - 2 * retention.QUIET_SECONDS
    os.utime(path, (stamp, stamp))
    return path


@pytest.fixture(scope="module")
def busy_template(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A completed job with every checkpoint kept, a stopped job with four, a version, and debris."""
    config = lifecycle_config(checkpoint_every_steps=1)
    config.lifecycle.keep_checkpoints = 10
    ws = make_workspace(tmp_path_factory.mktemp("busy") / "ws", config)
    train_job(ws, "done.jsonl", chat_lines(12), keep_all=True)
    consolidate(ws, use=False)
    train_job(ws, "stopped.jsonl", chat_lines(40), yield_at=4)
    config = ws.load_config()
    config.lifecycle.keep_checkpoints = 2
    atomic_write_json(ws.config_path, config.model_dump(mode="json"))
    return ws.root


@pytest.fixture
def busy(tmp_path: Path, busy_template: Path) -> Workspace:
    import shutil

    shutil.copytree(busy_template, tmp_path / "ws", symlinks=True)
    ws = Workspace.at(tmp_path / "ws")
    done, stopped = sorted(p.name for p in ws.checkpoints.iterdir())
    (ws.tokenized / "20200101_000000").mkdir(parents=True)  # a cache whose job is gone
    (ws.tokenized / "20200101_000000" / "tokens.bin").write_bytes(b"x" * 1000)
    make_old(ws.job_checkpoints(stopped) / "checkpoint-99.tmp")
    make_old(ws.job_checkpoints(stopped) / "checkpoint-50")  # cut short: no state.json
    make_old(ws.adapters / ".20200101_000000.tmp")
    make_old(ws.base_models / ".tiny-v9.tmp")
    (ws.jobs / f".{done}.json.123.tmp").write_text("{")
    (ws.inbox_normal / ".dropping.jsonl.tmp").write_text("half a user's file")
    return ws


def job_ids(ws: Workspace) -> tuple[str, str]:
    done, stopped = sorted(p.name for p in ws.checkpoints.iterdir())
    return done, stopped


def test_gc_removes_what_the_rule_allows_and_never_models(busy):
    done, stopped = job_ids(busy)
    retention.keep(busy, done, 1, note="the good one")
    plan = retention.plan(busy)
    removed = {str(i.path.relative_to(busy.root)) for i in plan.remove}
    assert removed == {
        f"models/checkpoints/{done}/checkpoint-2",  # completed: only the final (3) stays, and the KEEP one (1)
        f"models/checkpoints/{stopped}/checkpoint-1", f"models/checkpoints/{stopped}/checkpoint-2",  # keep 2
        f"models/checkpoints/{stopped}/checkpoint-99.tmp", f"models/checkpoints/{stopped}/checkpoint-50",
        "data/tokenized/20200101_000000", "models/adapters/.20200101_000000.tmp", "models/base/.tiny-v9.tmp",
        f"data/jobs/.{done}.json.123.tmp",
    }, removed
    assert plan.bytes > 0
    kept = {str(i.path.relative_to(busy.root)): i.reason for i in plan.kept}
    assert kept[f"models/checkpoints/{done}/checkpoint-1"] == "marked KEEP"
    assert "resume" in kept[f"models/checkpoints/{stopped}/checkpoint-4"]
    assert f"data/tokenized/{stopped}" in kept, "the stopped job's token cache is still needed"

    before = snapshot(busy.root)
    done_items = retention.apply(busy, plan)
    assert len(done_items) == len(plan.remove)
    after = snapshot(busy.root)
    assert removed <= before - after
    for must_stay in [f"models/adapters/{done}/adapter_model.safetensors", "models/base/tiny/model.safetensors",
                      "models/base/tiny-v1/model.safetensors", "models/base/tiny-v1/version.json",
                      f"models/checkpoints/{done}/checkpoint-1/KEEP",
                      f"models/checkpoints/{done}/checkpoint-3/state.json",
                      f"models/checkpoints/{stopped}/checkpoint-4/state.json",
                      f"models/checkpoints/{stopped}/checkpoint-3/state.json",
                      "inbox/normal/.dropping.jsonl.tmp", "config.json", "models/versions.jsonl"]:
        assert must_stay in after, must_stay
    assert not [p for p in after if ".old-" in p], "removal leaves no debris"
    assert retention.plan(busy).remove == [], "a second pass finds nothing"
    assert "gc: removed 9 item(s)" in busy.daemon_log().read_text()


def test_gc_leaves_the_running_daemons_job_and_fresh_debris_alone(busy):
    done, stopped = job_ids(busy)
    with WorkspaceLock(busy.lock_file):  # a live daemon, training the stopped job again
        atomic_write_json(busy.status_json, {"state": "training", "current_job": stopped,
                                             "heartbeat_unix": time.time()})
        fresh = busy.adapters / ".20200102_000000.tmp"
        fresh.mkdir()
        plan = retention.plan(busy)
    removed = {str(i.path.relative_to(busy.root)) for i in plan.remove}
    assert not [p for p in removed if stopped in p], "nothing of the job in training"
    assert f"models/checkpoints/{done}/checkpoint-1" in removed
    kept = {str(i.path.relative_to(busy.root)): i.reason for i in plan.kept}
    assert "write in progress" in kept["models/adapters/.20200102_000000.tmp"]
    assert "training" in kept[f"models/checkpoints/{stopped}/checkpoint-1"]


def test_gc_cli_dry_run_confirmation_and_yes(busy):
    root = str(busy.root)
    before = snapshot(busy.root)
    dry = cli("gc", "--dry-run", "--root", root)
    assert dry.returncode == 0, dry.stderr
    assert "dry run: 10 item(s) would be removed" in dry.stdout and "nothing was removed" in dry.stdout
    assert "kept: models/checkpoints/" in dry.stdout
    declined = cli("gc", "--root", root, stdin="n\n")
    assert declined.returncode == 0 and "nothing removed" in declined.stdout
    assert snapshot(busy.root) == before, "dry run and a declined gc delete nothing"

    done, _stopped = job_ids(busy)
    kept = cli("keep", done, "2", "--root", root)
    assert kept.returncode == 0 and (busy.job_checkpoints(done) / "checkpoint-2" / "KEEP").exists()
    yes = cli("gc", "--yes", "--root", root)
    assert yes.returncode == 0 and "removed 9 item(s)" in yes.stdout, yes.stdout
    assert (busy.job_checkpoints(done) / "checkpoint-2").exists()


def test_keep_marks_and_unmarks(busy):
    done, _ = job_ids(busy)
    marker = retention.keep(busy, done, 2)
    assert marker.exists()
    retention.keep(busy, done, 2, undo=True)
    assert not marker.exists()
    with pytest.raises(LifecycleError, match="it has: 1, 2, 3"):
        retention.keep(busy, done, 9)
