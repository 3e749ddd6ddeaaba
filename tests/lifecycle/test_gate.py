"""The gate: a switch that makes a suite fall beyond evaluation.max_regression is refused, said, notified;
scores land in version.json and `finetuned versions`; `finetuned eval` scores any target."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from helpers import read_json, wait_for
from lifecycle_helpers import cli

from finetuned.config import save_config
from finetuned.evaluation.runner import Evaluator
from finetuned.evaluation.suites import Case
from finetuned.lifecycle import line
from finetuned.lifecycle.consolidate import consolidate
from finetuned.lifecycle.gate import Fall, GateRefused, falls
from finetuned.lifecycle.targets import load, resolve
from finetuned.lifecycle.versions import read_version
from finetuned.workspace import Workspace

# Pairs of answers the untrained base and the trained adapter are likely to rank differently.
PAIRS = [("hi 3 hi 3.", "no way."), ("hi 1 hi 1.", "the sky"), ("hi", "blue"), ("number", "green"),
         ("hi 4 hi 4.", "I do not know."), ("4", "x"), ("hi 0", "zebra"), ("Say", "maybe"), ("2", "Q"),
         ("hi 2 hi 2.", "nothing"), ("1", "apple"), ("hi hi", "orange"), ("3 hi 3", "cat"), ("0.", "dog")]


def _job_id(ws: Workspace) -> str:
    return next(p.name for p in ws.adapters.iterdir())


def _disagreements(ws: Workspace) -> list[tuple[Case, str, str]]:
    """Choice cases on which the base and the trained adapter pick different answers: (case, base's, adapter's)."""
    config = ws.load_config()
    picks = []
    for ref in ("base", _job_id(ws)):
        model, tokenizer = load(resolve(ws, ref), config)
        evaluator = Evaluator(tokenizer, config.evaluation)
        picks.append([evaluator.choose(model, Case(prompt=f"Say hi number {i % 5}.", scorer="choice",
                                                   choices=list(pair), expected=pair[0]))
                      for i, pair in enumerate(PAIRS)])
    found = [(i, base, tuned) for i, (base, tuned) in enumerate(zip(*picks, strict=True)) if base != tuned]
    assert len(found) >= 2, "the trained adapter ranks these answers like the base: no suite can tell them apart"
    return [(Case(prompt=f"Say hi number {i % 5}.", scorer="choice", choices=list(PAIRS[i]), expected=base),
             base, tuned) for i, base, tuned in found]


def _write_suite(ws: Workspace, name: str, cases: list[Case]) -> Path:
    ws.evals.mkdir(exist_ok=True)
    path = ws.evals / f"{name}.jsonl"
    path.write_text("".join(json.dumps(c.model_dump(exclude_none=True)) + "\n" for c in cases))
    return path


@pytest.fixture
def suites_favouring(trained: Workspace) -> tuple[Workspace, list[tuple[Case, str, str]]]:
    return trained, _disagreements(trained)


def test_falls_allow_max_regression() -> None:
    assert falls({"a": 0.8, "b": 0.5}, {"a": 0.7, "b": 0.5}, 0.1) == []
    assert falls({"a": 0.8, "b": 0.5}, {"a": 0.6, "b": 0.9}, 0.1) == [Fall("a", 0.8, 0.6)]
    assert str(Fall("a", 0.8, 0.6)) == "a fell from 0.80 to 0.60 (-0.20)"


@pytest.mark.e2e
def test_consolidation_refused_when_a_suite_falls(suites_favouring, tmp_path: Path) -> None:
    ws, cases = suites_favouring
    _write_suite(ws, "keeps_base", [case for case, _, _ in cases])  # the base passes all, the adapter none
    events = tmp_path / "events.jsonl"
    config = ws.load_config()
    script = f"import sys; open({str(events)!r}, 'a').write(sys.stdin.read() + chr(10))"
    config.notify.command = f'{sys.executable} -c "{script}"'
    save_config(ws.config_path, config)
    before = config.base_model

    result = consolidate(ws, _job_id(ws))

    assert (result.switched, result.refused) == (False, True)
    assert "keeps_base fell from 1.00 to 0.00 (-1.00)" in result.message
    assert "evaluation.max_regression 0.05" in result.message and "--force" in result.message
    assert ws.load_config().base_model == before  # not current
    written = read_version(result.version.path)
    assert written is not None and written.evaluation["scores"] == {"keeps_base": 0.0}
    assert line.current(ws).evaluation["scores"] == {"keeps_base": 1.0}
    event = wait_for(lambda: events.exists() and json.loads(events.read_text().splitlines()[0]), what="gate_refused")
    assert event["event"] == "gate_refused" and event["candidate"] == result.version.id
    assert event["fell"] == [{"suite": "keeps_base", "before": 1.0, "after": 0.0}]

    # `use` is refused the same way, from the scores kept in version.json; --force switches.
    with pytest.raises(GateRefused, match=r"keeps_base fell from 1\.00 to 0\.00"):
        line.use(ws, result.version.id)
    assert line.use(ws, result.version.id, force=True).id == result.version.id
    assert ws.load_config().base_model == result.version.base_model


@pytest.mark.e2e
def test_switch_passes_when_the_candidate_holds_up(suites_favouring) -> None:
    ws, cases = suites_favouring
    _write_suite(ws, "likes_training", [case.model_copy(update={"expected": tuned}) for case, _, tuned in cases])
    result = consolidate(ws, _job_id(ws))
    assert (result.switched, result.refused) == (True, False)
    assert read_version(result.version.path).evaluation["scores"] == {"likes_training": 1.0}


@pytest.mark.e2e
def test_scores_are_rescored_when_a_suite_changes(suites_favouring) -> None:
    ws, cases = suites_favouring
    path = _write_suite(ws, "keeps_base", [case for case, _, _ in cases])
    with pytest.raises(GateRefused):
        line.use(ws, consolidate(ws, _job_id(ws), use=False).version.id)
    # The same file with the adapter's answers expected: the kept scores no longer apply.
    _write_suite(ws, "keeps_base", [case.model_copy(update={"expected": tuned}) for case, _, tuned in cases])
    assert path.exists()
    version = line.use(ws, "v1")
    assert version.evaluation["scores"] == {"keeps_base": 1.0}


@pytest.mark.e2e
def test_cli_eval_versions_and_refusal(suites_favouring, tmp_path: Path) -> None:
    ws, cases = suites_favouring
    source = tmp_path / "keep.jsonl"
    source.write_text("".join(json.dumps(c.model_dump(exclude_none=True)) + "\n" for c, _, _ in cases))
    root = ("--root", str(ws.root))
    added = cli("eval", "add", str(source), "--name", "keeps_base", *root)
    assert added.returncode == 0, added.stderr
    assert f"added suite keeps_base ({len(cases)} cases; choice)" in added.stdout

    job = cli("eval", _job_id(ws), "--json", *root)
    assert job.returncode == 0, job.stderr
    assert json.loads(job.stdout)["scores"] == {"keeps_base": 0.0}
    base = cli("eval", "base", "--json", *root)
    assert json.loads(base.stdout)["scores"] == {"keeps_base": 1.0}

    refused = cli("consolidate", *root)
    assert refused.returncode == 1
    assert "keeps_base fell from 1.00 to 0.00" in refused.stdout + refused.stderr
    shown = {v["id"]: v["evaluation"]["scores"] for v in json.loads(cli("versions", "--json", *root).stdout)}
    assert shown == {"tiny": {"keeps_base": 1.0}, "tiny-v1": {"keeps_base": 0.0}}
    assert cli("use", "v1", *root).returncode == 1
    assert cli("use", "v1", "--force", *root).returncode == 0


def test_eval_add_names_the_bad_line(trained: Workspace, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "2+2?", "expected": "4", "scorer": "exact"}\n'
                   '{"prompt": "pick", "expected": "c", "scorer": "choice", "choices": ["a", "b"]}\n')
    result = cli("eval", "add", str(bad), "--root", str(trained.root))
    assert result.returncode == 1
    assert "bad.jsonl, line 2" in result.stderr and "one of its 'choices'" in result.stderr
    assert not trained.evals.exists() or not list(trained.evals.iterdir())
    none = cli("eval", "base", "--root", str(trained.root))
    assert none.returncode == 1 and "finetuned eval add FILE" in none.stderr
    assert read_json(trained.config_path)  # untouched and readable
