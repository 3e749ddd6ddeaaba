"""The commands of SPEC section 5 as a user types them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from helpers import chat_lines, drop, jobs_by_file, last_step, make_workspace, read_json, wait_for, write_jsonl

from finetuned.queue.status_files import FILES, schema_name

COMMANDS = ["init", "run", "status", "queue", "add", "check", "pause", "resume", "stop", "skip", "cancel", "front",
            "retry", "config"]
SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def finetuned(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "finetuned", *args], capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_help_explains_every_command():
    top = finetuned("--help").stdout
    for command in COMMANDS:
        assert command in top
    for command in ("init", "run", "status", "queue", "add", "check", "cancel"):
        assert "examples:" in finetuned(command, "--help").stdout, command


def test_init_creates_the_layout_and_is_safe_to_repeat(tmp_path):
    root = tmp_path / "ws"
    finetuned("init", str(root))
    for folder in ("inbox/priority", "inbox/normal", "control", "data/queued", "data/completed", "data/failed",
                   "data/skipped", "models/base", "models/adapters", "models/checkpoints", "logs", "status"):
        assert (root / folder).is_dir(), folder
    config = json.loads((root / "config.json").read_text())
    config["training"]["epochs"] = 3
    (root / "config.json").write_text(json.dumps(config))
    finetuned("init", str(root), "--sample")
    assert json.loads((root / "config.json").read_text())["training"]["epochs"] == 3, "init never overwrites"
    assert (root / "inbox/normal/chat_sample.jsonl").exists()


def test_add_puts_files_in_the_right_inbox(tmp_path):
    root = tmp_path / "ws"
    finetuned("init", str(root))
    data = write_jsonl(tmp_path / "d.jsonl", chat_lines(3))
    finetuned("add", str(data), "--root", str(root))
    finetuned("add", str(data), "--priority", "--root", str(root))
    finetuned("add", str(data), "--root", str(root))
    assert (root / "inbox/priority/d.jsonl").read_bytes() == data.read_bytes()
    assert sorted(p.name for p in (root / "inbox/normal").iterdir()) == ["d.copy.jsonl", "d.jsonl"]
    missing = finetuned("add", str(tmp_path / "nope.jsonl"), "--root", str(root), check=False)
    assert missing.returncode == 1 and "no such file" in missing.stderr


def test_add_checks_the_file_first_and_writes_its_own_settings_beside_it(tmp_path):
    root = tmp_path / "ws"
    finetuned("init", str(root))
    bad = tmp_path / "notes.txt"
    bad.write_text("just some notes\n")
    refused = finetuned("add", str(bad), "--root", str(root), check=False)
    assert refused.returncode == 1 and "not added" in refused.stderr and "notes.txt" in refused.stderr, refused.stderr
    assert not list((root / "inbox/normal").iterdir()), "nothing copied"
    finetuned("add", str(bad), "--no-check", "--root", str(root))
    assert (root / "inbox/normal/notes.txt").exists()

    data = write_jsonl(tmp_path / "d.jsonl", chat_lines(3))
    typo = finetuned("add", str(data), "--set", "training.epoch=2", "--root", str(root), check=False)
    assert typo.returncode == 1 and "unknown key 'training.epoch'" in typo.stderr
    added = finetuned("add", str(data), "--set", "training.epochs=2", "--set", "data.packing=false",
                      "--root", str(root)).stdout
    assert "training.epochs=2" in added
    sidecar = json.loads((root / "inbox/normal/d.jsonl.config.json").read_text())
    assert sidecar == {"training": {"epochs": 2}, "data": {"packing": False}}
    assert (root / "inbox/normal/d.jsonl.config.json").stat().st_mtime <= (root / "inbox/normal/d.jsonl").stat(
    ).st_mtime, "the settings are there before the file"


def test_add_takes_a_file_whose_name_fills_the_file_system_s_limit(tmp_path):
    """A 250-byte name: its temporary and its settings beside it must fit 255 bytes too."""
    root = tmp_path / "ws"
    finetuned("init", str(root))
    data = write_jsonl(tmp_path / ("漢" * 81 + "a.jsonl"), chat_lines(3))  # 250 bytes
    finetuned("add", str(data), "--root", str(root))
    assert [p.name for p in (root / "inbox/normal").iterdir()] == [data.name]
    finetuned("add", str(data), "--priority", "--set", "training.epochs=2", "--root", str(root))
    (added,) = [p for p in (root / "inbox/priority").iterdir() if not p.name.endswith(".config.json")]
    assert added.read_bytes() == data.read_bytes() and added.name.startswith("漢" * 20) and added.suffix == ".jsonl"
    assert json.loads((added.parent / (added.name + ".config.json")).read_text()) == {"training": {"epochs": 2}}


def test_config_show_hides_secrets_and_set_validates_and_prints_the_change(tmp_path):
    root = tmp_path / "ws"
    finetuned("init", str(root))
    shown = finetuned("config", "set", "monitor.token", "a-long-enough-secret-token", "--root", str(root)).stdout
    assert shown.strip() == 'monitor.token: null -> "***"'
    config = json.loads(finetuned("config", "show", "--root", str(root)).stdout)
    assert config["monitor"]["token"] == "***" and config["training"]["lr_scheduler"] == "constant"
    assert "a-long-enough-secret-token" not in finetuned("config", "show", "--root", str(root)).stdout
    changed = finetuned("config", "set", "training.lr_scheduler", "cosine", "--root", str(root)).stdout
    assert changed.strip() == 'training.lr_scheduler: "constant" -> "cosine"'
    assert json.loads((root / "config.json").read_text())["training"]["lr_scheduler"] == "cosine"
    before = (root / "config.json").read_text()
    for key, value, error in (("training.lr_scheduler", "cosin", "training.lr_scheduler"),
                              ("training.epochz", "2", "unknown key 'training.epochz'"),
                              ("training.epochs", "0", "training.epochs")):
        refused = finetuned("config", "set", key, value, "--root", str(root), check=False)
        assert refused.returncode == 1 and error in refused.stderr and "unchanged" in refused.stderr, refused.stderr
    assert (root / "config.json").read_text() == before


def test_add_checks_the_file_with_its_own_settings(tmp_path):
    root = tmp_path / "ws"
    finetuned("init", str(root))
    data = write_jsonl(tmp_path / "d.jsonl", chat_lines(6))
    with data.open("a") as f:
        f.write("{not json\n")
    refused = finetuned("add", str(data), "--root", str(root), check=False)
    assert refused.returncode == 1 and "not added" in refused.stderr, refused.stderr
    added = finetuned("add", str(data), "--set", "data.skip_bad_lines=true", "--root", str(root))
    assert "data.skip_bad_lines=true" in added.stdout
    assert (root / "inbox/normal/d.jsonl").exists()


def test_an_unknown_key_in_config_json_is_named_and_config_unset_removes_it(tmp_path):
    root = tmp_path / "ws"
    finetuned("init", str(root))
    path = root / "config.json"
    config = json.loads(path.read_text())
    config["training"]["epoch"] = 2
    config["trainig"] = {"seed": 1}
    path.write_text(json.dumps(config))
    shown = finetuned("config", "show", "--root", str(root), check=False)
    assert shown.returncode == 1 and "unknown key 'training.epoch'" in shown.stderr, shown.stderr
    assert "finetuned config unset training.epoch" in shown.stderr, shown.stderr
    doctor = finetuned("doctor", "--root", str(root), check=False).stdout
    assert "finetuned config unset training.epoch" in doctor, doctor

    # An edit that mends none of its problems names the one in the way and what mends it.
    blocked = finetuned("config", "set", "training.seed", "7", "--root", str(root), check=False)
    assert blocked.returncode == 1 and "unknown key 'training.epoch'" in blocked.stderr, blocked.stderr
    assert "config unset training.epoch" in blocked.stderr and json.loads(path.read_text()) == config
    # One that mends one is written, saying what is left.
    mended = finetuned("config", "unset", "training.epoch", "--root", str(root)).stdout
    assert "still invalid" in mended and "unknown key 'trainig'" in mended and "config unset trainig" in mended
    valid = finetuned("config", "unset", "trainig.seed", "--root", str(root)).stdout
    assert "valid again" in valid, valid
    assert "trainig" not in json.loads(finetuned("config", "show", "--root", str(root)).stdout)
    assert finetuned("config", "set", "training.epochs", "2", "--root", str(root)).stdout.strip() == \
        "training.epochs: 1 -> 2"
    assert finetuned("config", "unset", "training.epochs", "--root", str(root)).stdout.strip() == \
        "training.epochs: 2 -> 1"


def test_help_examples_keep_one_line_each():
    for command in (["add"], ["status"], ["retry"], ["config"], ["service"]):
        lines = [line.strip() for line in finetuned(*command, "--help").stdout.splitlines()]
        examples = [line for line in lines if line.startswith("finetuned ")]
        assert examples, (command, lines)
        assert all(line.count("finetuned ") == 1 for line in examples), examples


def test_the_queue_table_never_cuts_job_ids(tmp_path):
    root = tmp_path / "ws"
    finetuned("init", str(root))
    from finetuned.queue.store import JobStore
    from finetuned.workspace import Workspace

    store = JobStore(Workspace.at(root)).load()
    names = [f"a_rather_long_file_name_for_a_dataset_{i}.jsonl" for i in range(3)]
    for name in names:
        write_jsonl(root / "inbox/normal" / name, chat_lines(2))
        store.admit(root / "inbox/normal" / name, "normal")
    result = subprocess.run([sys.executable, "-m", "finetuned", "queue", "--root", str(root)], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "COLUMNS": "80"})
    for job_id in store.jobs:
        assert job_id in result.stdout, result.stdout


def test_retry_with_no_daemon_puts_the_failed_file_back_under_the_lock(tmp_path):
    from finetuned.queue.endings import Endings
    from finetuned.queue.store import JobStore
    from finetuned.workspace import Workspace

    root = tmp_path / "ws"
    finetuned("init", str(root))
    ws = Workspace.at(root)
    store = JobStore(ws).load()
    job = store.admit(write_jsonl(ws.inbox_normal / "d.jsonl", chat_lines(2)), "normal")
    Endings(store).failed(job, "out of memory (after 2 retries)")
    assert (ws.failed / "d.jsonl.error.json").exists()
    done = finetuned("retry", job.id, "--root", str(root))
    assert "queued again" in done.stdout
    assert (ws.queued / f"{job.id}__d.jsonl").exists() and not list(ws.failed.iterdir())
    record = read_json(ws.job_record(job.id))
    assert record["status"] == "queued" and record["examples"] is None, "checked again like a new file"
    assert [e["id"] for e in read_json(ws.queue_json)["queue"]] == [job.id]
    assert "retried" in ws.daemon_log().read_text()
    again = finetuned("retry", job.id, "--root", str(root), check=False)
    assert again.returncode == 1 and "is queued, not failed" in again.stderr


def test_retry_keeps_the_settings_a_job_started_with_and_fresh_config_starts_it_over(tmp_path):
    from finetuned.config import Config
    from finetuned.overrides import frozen
    from finetuned.queue.endings import Endings
    from finetuned.queue.job import JobStatus
    from finetuned.queue.store import JobStore
    from finetuned.workspace import Workspace

    root = tmp_path / "ws"
    finetuned("init", str(root))
    ws = Workspace.at(root)
    store = JobStore(ws).load()
    job = store.admit(write_jsonl(ws.inbox_normal / "d.jsonl", chat_lines(2)), "normal")
    started = Config(base_model="builtin:tiny")
    started.training.batch_size = 8
    job.config, job.step, job.total_steps = frozen(started), 6, 20
    store.move(job, JobStatus.TRAINING, "started")
    (ws.job_checkpoints(job.id) / "checkpoint-6").mkdir(parents=True)
    ws.metrics_file(job.id).parent.mkdir(parents=True, exist_ok=True)
    ws.metrics_file(job.id).write_text('{"step": 6, "loss": 1.0}\n')
    Endings(store).failed(job, "out of memory (after 2 retries)")

    finetuned("retry", job.id, "--root", str(root))
    record = read_json(ws.job_record(job.id))
    assert record["config"]["training"]["batch_size"] == 8 and record["step"] == 6, "it resumes as it started"
    assert (ws.job_checkpoints(job.id) / "checkpoint-6").is_dir()

    store = JobStore(ws).load()
    Endings(store).failed(store.get(job.id), "out of memory again")
    fresh = finetuned("retry", job.id, "--fresh-config", "--root", str(root)).stdout
    assert "starts over with config.json as it is now" in fresh, fresh
    record = read_json(ws.job_record(job.id))
    assert record["status"] == "queued" and record["config"] is None, "config.json applies at its next start"
    assert (record["step"], record["total_steps"]) == (0, None)
    assert not ws.job_checkpoints(job.id).exists() and not ws.metrics_file(job.id).exists(), \
        "nothing of the runs with the old settings is resumed or mixed into the new run's curve"


def test_commands_outside_a_workspace_say_so(tmp_path):
    result = finetuned("queue", "--root", str(tmp_path), check=False)
    assert result.returncode == 1 and "not a finetuned workspace" in result.stderr


@pytest.mark.usefixtures("tiny_model_dir")
def test_status_and_queue_while_training(ws, start_daemon, gate):
    daemon = start_daemon(ws)
    gate.hold(2)
    (ws.inbox_normal / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat_lines(40)))
    (ws.inbox_normal / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat_lines(4, "yo")))
    wait_for(lambda: last_step(ws, "a.jsonl") >= 2 and "b.jsonl" in jobs_by_file(ws), 120, "training",
             daemon=daemon)
    status = finetuned("status", "--root", str(ws.root)).stdout
    assert "daemon: running" in status and "a.jsonl" in status and "step" in status
    for relative in FILES:  # a real daemon's files, mid-training, are what the published schemas say
        schema = json.loads((SCHEMAS / schema_name(relative)).read_text(encoding="utf-8"))
        jsonschema.validate(read_json(ws.root / relative), schema)
    as_json = json.loads(finetuned("queue", "--json", "--root", str(ws.root)).stdout)
    assert as_json["current"]["id"] == jobs_by_file(ws)["a.jsonl"]["id"]
    assert [e["file"] for e in as_json["queue"]] == ["a.jsonl", "b.jsonl"]
    table = finetuned("queue", "--root", str(ws.root)).stdout
    assert "training" in table and "queued" in table
    record = finetuned("status", jobs_by_file(ws)["a.jsonl"]["id"], "--json", "--root", str(ws.root)).stdout
    assert json.loads(record)["file"] == "a.jsonl"
    finetuned("pause", "--root", str(ws.root))
    wait_for(lambda: ((read_json(ws.queue_json) or {}).get("current") or {}).get("status") == "paused", 30, "pause",
             daemon=daemon)
    wait_for(lambda: ((read_json(ws.training_status_json) or {}).get("job") or {}).get("status") == "paused", 10,
             "training_status.json to say paused", daemon=daemon)
    paused = finetuned("status", "--root", str(ws.root)).stdout
    assert paused.count("paused") == 1 and "ETA" not in paused, paused
    assert "queue: 1 queued" in paused
    loss = re.search(r"loss (\S+)", paused).group(1)
    assert len(loss.replace(".", "").lstrip("0")) <= 4, f"losses to 4 significant digits: {loss}"
    finetuned("resume", "--root", str(ws.root))
    assert not ws.pause_file.exists()
    daemon.stop()
    assert "not running" in finetuned("status", "--root", str(ws.root)).stdout


@pytest.mark.usefixtures("tiny_model_dir")
def test_status_says_what_the_daemon_does_before_a_job_starts(ws, start_daemon):
    """Nothing trains yet, but the daemon works: it says it tokenises the file, never a bare "idle"."""
    from finetuned.cli.status import daemon_line
    from finetuned.queue.status_files import StatusFile

    daemon = start_daemon(ws)
    drop(ws, "big.jsonl", chat_lines(5000))

    def tokenising() -> dict | None:
        status = read_json(ws.status_json) or {}
        return status if (status.get("phase") or "").startswith("tokenising") else None

    status = wait_for(tokenising, 120, "status.json to say tokenising", interval=0.02, daemon=daemon)
    assert status["state"] == "idle" and status["current_job"] is None and "big.jsonl" in status["phase"]
    assert "idle: tokenising big.jsonl (job " in daemon_line(ws, StatusFile.model_validate(status))


def test_a_command_run_from_a_checkout_points_at_its_workspace(tmp_path):
    """`finetuned status` from the repository root after `make run`: name ./workspace, never `init` in the checkout."""
    checkout = tmp_path / "finetuned"
    (checkout / ".git").mkdir(parents=True)
    make_workspace(checkout / "workspace")
    env = {k: v for k, v in os.environ.items() if k != "FINETUNED_ROOT"}
    run = subprocess.run([sys.executable, "-m", "finetuned", "status"], capture_output=True, text=True, timeout=120,
                         cwd=checkout, env=env)
    assert run.returncode == 1 and "--root workspace" in run.stderr and "FINETUNED_ROOT" in run.stderr
    assert "finetuned init" not in run.stderr
    (checkout / "workspace" / "config.json").unlink()
    shutil.rmtree(checkout / "workspace" / "control")
    bare = subprocess.run([sys.executable, "-m", "finetuned", "status"], capture_output=True, text=True, timeout=120,
                          cwd=checkout, env=env)
    assert "source checkout" in bare.stderr and "finetuned init workspace" in bare.stderr
