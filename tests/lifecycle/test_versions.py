"""Versions end to end on builtin:tiny: consolidate, version.json, v2 on v1, never overwrite, use, rollback."""

from __future__ import annotations

import json
import threading
import time

import pytest
from helpers import chat_lines
from lifecycle_helpers import base_plus_adapter_logits, cli, logits, train_job

from finetuned import controls
from finetuned.controls import Control
from finetuned.fsio import atomic_write_json, sha256_file
from finetuned.lifecycle.consolidate import consolidate
from finetuned.lifecycle.errors import LifecycleError, UnfinishedWork
from finetuned.lifecycle.history import line_exclusions, read_history
from finetuned.lifecycle.line import rollback, use
from finetuned.lifecycle.records import list_adapters, read_jobs
from finetuned.lock import WorkspaceLock
from finetuned.models.loading import resolve_base, weights_hash

VERSION_KEYS = {"id", "name", "version", "parent", "parent_hash", "base_model", "created", "note", "weights_hash",
                "adapters", "jobs", "data", "steps", "tokens", "total_steps", "total_tokens", "dtype"}


def current_base_logits(ws):
    """Logits of the model config.json's base_model names, loaded the way the worker resolves it."""
    return logits(resolve_base(ws.load_config().base_model, ws))


def test_consolidated_version_loads_and_gives_base_plus_adapter_logits(trained):
    """The merged folder loads with from_pretrained and answers as base + adapter does (1e-4)."""
    (adapter,) = list_adapters(trained)
    stages = []
    result = consolidate(trained, note="first merge", progress=lambda what, done, total: stages.append(done))
    version = result.version
    assert result.switched and version.id == "tiny-v1" and version.path == trained.base_models / "tiny-v1"
    assert stages[-1] == 6 and stages == sorted(stages), "progress goes forward to the end"

    merged = logits(version.path)
    expected = base_plus_adapter_logits(trained.base_models / "tiny", adapter.path)
    assert (merged - expected).abs().max().item() < 1e-4
    assert (merged - logits(trained.base_models / "tiny")).abs().max().item() > 1e-3, "the adapter changed the model"
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(version.path)).chat_template, "the tokenizer travels with the version"

    record = json.loads((version.path / "version.json").read_text())
    assert set(record) >= VERSION_KEYS
    assert (record["name"], record["version"], record["parent"], record["note"]) == ("tiny", 1, "tiny", "first merge")
    assert record["weights_hash"] == weights_hash(version.path)
    assert record["parent_hash"] == weights_hash(trained.base_models / "tiny")
    assert [a["job_id"] for a in record["adapters"]] == [adapter.job_id]
    job = read_jobs(trained)[adapter.job_id]
    assert record["data"] == [{"file": "first.jsonl", "sha256": sha256_file(trained.completed / "first.jsonl"),
                               "job_id": adapter.job_id}]
    assert record["steps"] == job.summary["steps"] > 0 and record["tokens"] == job.summary["tokens"] > 0
    root = json.loads((trained.base_models / "tiny" / "version.json").read_text())
    assert (root["version"], root["origin"], root["base_model"]) == (0, "builtin:tiny", "builtin:tiny")
    assert trained.load_config().base_model == "tiny-v1"


def test_second_consolidation_is_v2_on_v1_and_nothing_is_overwritten(trained):
    """The line continues on v1; its next adapter merges into v1 as v2; v1 and a stray folder stay as they were."""
    v1 = consolidate(trained).version
    v1_hash = weights_hash(v1.path)
    second = train_job(trained, "second.jsonl", chat_lines(12, "yo"))
    adapter = next(a for a in list_adapters(trained) if a.job_id == second.id)
    assert adapter.base_model == "tiny-v1" and adapter.line_step == adapter.steps, "a fresh line on v1"

    v2 = consolidate(trained, note="second").version
    assert (v2.id, v2.version, v2.parent) == ("tiny-v2", 2, "tiny-v1")
    assert [j["job_id"] for j in v2.jobs] == [second.id], "v1's job is in v1, not again in v2"
    assert v2.total_steps == v1.total_steps + v2.steps
    assert (logits(v2.path) - base_plus_adapter_logits(v1.path, adapter.path)).abs().max().item() < 1e-4
    assert weights_hash(v1.path) == v1_hash

    with pytest.raises(LifecycleError, match="already merged into tiny-v2"):
        consolidate(trained, second.id)
    stray = trained.base_models / "tiny-v3"
    stray.mkdir()
    (stray / "mine.txt").write_text("someone's folder")
    v4 = consolidate(trained, second.id, force=True, use=False).version
    assert v4.id == "tiny-v4" and (stray / "mine.txt").read_text() == "someone's folder"
    assert weights_hash(v2.path) == weights_hash(v4.path) and json.loads((v2.path / "version.json").read_text())[
        "note"] == "second"


def test_rollback_restores_the_earlier_logits_and_deletes_nothing(trained):
    original = current_base_logits(trained)
    consolidate(trained)
    v1_logits = current_base_logits(trained)
    train_job(trained, "second.jsonl", chat_lines(12, "yo"))
    consolidate(trained)
    assert trained.load_config().base_model == "tiny-v2"

    assert rollback(trained, "v1").id == "tiny-v1"
    assert (current_base_logits(trained) - v1_logits).abs().max().item() == 0
    assert rollback(trained, "tiny").id == "tiny"
    assert trained.load_config().base_model == "builtin:tiny"
    assert (current_base_logits(trained) - original).abs().max().item() == 0
    assert all((trained.base_models / name / "version.json").exists() for name in ("tiny", "tiny-v1", "tiny-v2"))
    assert len(list_adapters(trained)) == 2

    with pytest.raises(LifecycleError, match="not older"):
        rollback(trained, "tiny-v2")
    assert use(trained, "tiny-v2").id == "tiny-v2", "forward again with use"
    actions = [e["action"] for e in read_history(trained)]
    assert actions.count("rollback") == 2 and actions[-1] == "use"
    log = trained.daemon_log().read_text()
    assert "rollback: base model is now tiny " in log and "INFO    finetuned.lifecycle:" in log


@pytest.mark.e2e
def test_use_and_versions_through_the_cli(trained):
    root = str(trained.root)
    made = cli("consolidate", "--note", "cli merge", "--no-use", "--root", root)
    assert made.returncode == 0, made.stderr
    assert "tiny-v1 written (not current" in made.stdout
    assert trained.load_config().base_model == "builtin:tiny"

    switched = cli("use", "tiny-v1", "--root", root)
    assert switched.returncode == 0, switched.stderr
    assert trained.load_config().base_model == "tiny-v1"
    assert "use: base model is now tiny-v1" in trained.daemon_log().read_text()
    listed = json.loads(cli("versions", "--json", "--root", root).stdout)
    assert [(v["id"], v["current"]) for v in listed] == [("tiny", False), ("tiny-v1", True)]
    assert listed[1]["note"] == "cli merge" and listed[0]["origin"] == "builtin:tiny"
    with pytest.raises(LifecycleError, match="no version 'tiny-v9'"):
        use(trained, "tiny-v9")


def test_switching_waits_for_a_job_that_is_part_way(trained):
    """A stopped job has steps on the current base that no version holds: no switch unless forced."""
    stopped = train_job(trained, "long.jsonl", chat_lines(40), yield_at=2)
    with pytest.raises(UnfinishedWork, match=f"job {stopped.id}"):
        consolidate(trained)
    assert not (trained.base_models / "tiny-v1").exists(), "refused before any merging"
    assert consolidate(trained, use=False).version.id == "tiny-v1"
    with pytest.raises(UnfinishedWork, match="--force"):
        use(trained, "tiny-v1")
    assert trained.load_config().base_model == "builtin:tiny"
    assert use(trained, "tiny-v1", force=True).id == "tiny-v1"
    assert read_history(trained)[-1]["forced"] is True


@pytest.mark.e2e
def test_after_a_rollback_the_line_starts_from_the_version_itself(trained):
    """Jobs finished before a switch are left out of the line, so training restarts from the chosen version."""
    (first,) = list_adapters(trained)
    consolidate(trained)
    rollback(trained, "tiny")
    assert line_exclusions(trained, read_jobs(trained).values()) == [first.job_id]
    again = train_job(trained, "again.jsonl", chat_lines(12, "yo"))
    adapter = next(a for a in list_adapters(trained) if a.job_id == again.id)
    assert adapter.base_model == "builtin:tiny"
    assert adapter.line_step == adapter.steps, "not continued from the old line's checkpoint"


class FakeDaemon(threading.Thread):
    """Holds the workspace lock and heartbeats like an idle daemon; notes whether it was ever held quiet.

    With `user_pauses`, the user pauses (touches .pause) while the switch holds it quiet.
    """

    def __init__(self, ws, answer: bool = True, user_pauses: bool = False) -> None:
        super().__init__(daemon=True)
        self.ws, self.answer, self.user_pauses = ws, answer, user_pauses
        self.saw_quiet = False
        self.ready, self.done = threading.Event(), threading.Event()

    def run(self) -> None:
        with WorkspaceLock(self.ws.lock_file):
            self.ready.set()
            while not self.done.is_set():
                if controls.quiet(self.ws):
                    self.saw_quiet = True
                    if self.user_pauses:
                        controls.request(self.ws, Control.PAUSE)
                if self.answer:
                    atomic_write_json(self.ws.status_json, {"state": "idle", "current_job": None,
                                                            "heartbeat_unix": time.time()})
                time.sleep(0.05)

    def __enter__(self) -> FakeDaemon:
        self.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.done.set()
        self.join(10)


def test_a_switch_under_a_live_daemon_holds_it_quiet_until_written(trained, monkeypatch):
    """No job may start on the old base while the config changes; the user's own pause is left alone."""
    consolidate(trained, use=False)
    with FakeDaemon(trained) as daemon:
        use(trained, "tiny-v1")
    assert daemon.saw_quiet and not controls.quiet(trained) and not trained.pause_file.exists()
    assert trained.load_config().base_model == "tiny-v1"

    trained.pause_file.touch()
    with FakeDaemon(trained):
        rollback(trained, "tiny")
    assert trained.pause_file.exists(), "the user's pause stays"
    trained.pause_file.unlink()

    with FakeDaemon(trained, user_pauses=True) as daemon:
        use(trained, "tiny-v1")
    assert daemon.saw_quiet and trained.pause_file.exists(), "a pause made during the switch is the user's: it stays"
    trained.pause_file.unlink()
    rollback(trained, "tiny")

    monkeypatch.setattr("finetuned.lifecycle.line.DAEMON_ANSWER_SECONDS", 0.5)
    with FakeDaemon(trained, answer=False), pytest.raises(LifecycleError, match="did not answer"):
        use(trained, "tiny-v1")
    assert trained.load_config().base_model == "builtin:tiny" and not trained.pause_file.exists()


def test_an_older_adapter_is_written_but_not_made_current(trained):
    """Merging a job that a later job continued from would drop the later training: no switch without --force."""
    (first,) = list_adapters(trained)
    later = train_job(trained, "later.jsonl", chat_lines(12, "yo"))
    result = consolidate(trained, first.job_id)
    assert result.version.id == "tiny-v1" and not result.switched
    assert f"job {later.id} trained on the same base after job {first.job_id}" in result.message
    assert trained.load_config().base_model == "builtin:tiny"
    assert [j["job_id"] for j in consolidate(trained, use=False).version.jobs] == [first.job_id, later.id], \
        "the newest adapter of a continuous line holds every job of it"
