"""`finetuned doctor`: OK on a good workspace, FAIL (exit 1) on a broken one, and what it says in between."""

from __future__ import annotations

import json
import os
import pwd
import time

from lifecycle_helpers import cli

from finetuned.config import Config, save_config
from finetuned.fsio import atomic_write_json
from finetuned.lifecycle.doctor import FAIL, OK, WARN, as_json, check_monitor, login_users, run_checks
from finetuned.lifecycle.history import log_event
from finetuned.lock import WorkspaceLock


def by_name(checks):
    return {c.name: c for c in checks}


def test_doctor_on_a_good_workspace_says_ok_and_exits_0(trained):
    done = cli("doctor", "--root", str(trained.root))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    names = ["workspace", "config", "daemon", "lock", "base model", "disk", "monitor", "accelerator", "distributed",
             "last failure", "daemon log", "gguf export"]
    assert [line[5:18].strip() for line in lines] == names
    assert all(line.split()[0] in (OK, WARN) for line in lines)
    checks = by_name(run_checks(trained, deep=True))
    assert checks["base model"].level == OK and "weights match" in checks["base model"].message
    assert checks["accelerator"].level == OK  # a CPU-only machine is a fine machine


def test_doctor_fails_on_a_broken_config(trained):
    trained.config_path.write_text(json.dumps({"base_model": "builtin:tiny", "trainig": {}}))
    done = cli("doctor", "--root", str(trained.root))
    assert done.returncode == 1
    assert any(line.startswith("FAIL config") and "unknown key 'trainig'" in line for line in done.stdout.splitlines())
    assert json.loads(as_json(run_checks(trained)))["ok"] is False


def test_doctor_reports_daemon_lock_disk_model_and_errors(trained):
    checks = by_name(run_checks(trained))
    assert checks["daemon"].message == "not running (never started here)"

    with WorkspaceLock(trained.lock_file):
        atomic_write_json(trained.status_json, {"state": "idle", "pid": os.getpid(), "started": "2026-01-01T00:00:00",
                                                "heartbeat_unix": time.time(), "current_job": None})
        checks = by_name(run_checks(trained))
        assert checks["daemon"].level == OK and "since 2026-01-01T00:00:00" in checks["daemon"].message
        assert checks["lock"].message == f"held by pid {os.getpid()}"
        atomic_write_json(trained.status_json, {"state": "training", "pid": os.getpid(), "heartbeat_unix": 1.0})
        assert "not answering" in by_name(run_checks(trained))["daemon"].message
    checks = by_name(run_checks(trained))
    assert checks["daemon"].level == WARN and "did not stop cleanly" in checks["daemon"].message
    assert checks["lock"].level == OK and "stale" in checks["lock"].message

    (trained.failed / "bad.jsonl.error.json").write_text(json.dumps({"file": "bad.jsonl", "error": "not UTF-8"}))
    log_event(trained, "job 1: failed: out of memory", 40)
    config = trained.load_config()
    config.lifecycle.min_free_gb = 10**7
    config.base_model = str(trained.root / "nowhere")
    save_config(trained.config_path, config)
    checks = by_name(run_checks(trained))
    assert checks["last failure"].level == WARN and "bad.jsonl: not UTF-8" in checks["last failure"].message
    assert checks["daemon log"].level == WARN and "out of memory" in checks["daemon log"].message
    assert checks["disk"].level == FAIL and "min_free_gb" in checks["disk"].message
    assert checks["base model"].level == FAIL and "no such folder" in checks["base model"].message


def test_doctor_says_who_can_press_the_monitor_s_buttons():
    """On loopback with no token, every account of the machine can pause, skip, cancel and upload."""
    config = Config()
    shared = check_monitor(config, ["alice", "bob"])
    assert shared.level == WARN and "alice, bob" in shared.message and "monitor.token" in shared.message
    assert check_monitor(config, []).level == OK
    config.monitor.token = "a-token-of-sixteen+"
    assert check_monitor(config, ["alice"]).level == OK
    config.monitor.host, config.monitor.token = "0.0.0.0", None
    assert check_monitor(config, []).level == FAIL
    me = pwd.getpwuid(os.getuid()).pw_name
    assert not {me, "root", "daemon", "nobody"} & set(login_users()), "neither this account nor system ones"
