"""Suites read as data is: every scorer's meaning, and a bad case named by file and line."""

from __future__ import annotations

import json

import pytest

from finetuned.evaluation.scorers import passes
from finetuned.evaluation.suites import Case, EvalError, add_suite, load_suites, read_suite


def case(**fields) -> Case:
    return Case.model_validate({"prompt": "q", **fields})


@pytest.mark.parametrize(("fields", "answer", "ok"), [
    ({"expected": "Paris", "scorer": "exact"}, " Paris\n", True),
    ({"expected": "Paris", "scorer": "exact"}, "Paris.", False),
    ({"expected": "Paris", "scorer": "contains"}, "It is Paris, of course.", True),
    ({"expected": "Paris", "scorer": "contains"}, "paris", False),
    ({"expected": r"^\d+ apples$", "scorer": "regex"}, "12 apples", True),
    ({"expected": r"^\d+ apples$", "scorer": "regex"}, "twelve apples", False),
    ({"scorer": "json"}, '{"a": 1}', True),
    ({"scorer": "json"}, "{a: 1}", False),
    ({"scorer": "json", "keys": ["a", "b"]}, '{"a": 1}', False),
    ({"scorer": "json", "keys": ["a"]}, 'Here:\n```json\n{"a": 1}\n```', True),
    ({"scorer": "json", "expected": {"a": 1}}, '{"a": 1}', True),
    ({"scorer": "json", "expected": {"a": 1}}, '{"a": 2}', False),
])
def test_each_scorer_says_what_passes(fields, answer, ok):
    assert passes(case(**fields), answer) is ok


@pytest.mark.parametrize(("line", "message"), [
    ({"expected": "x"}, "needs 'messages' or 'prompt'"),
    ({"prompt": "q", "scorer": "exact"}, "needs 'expected'"),
    ({"prompt": "q", "scorer": "choice", "choices": ["a", "b"], "expected": "c"}, "one of its 'choices'"),
    ({"prompt": "q", "scorer": "regex", "expected": "("}, "not a regular expression"),
    ({"prompt": "q", "scorer": "bleu", "expected": "x"}, "scorer"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "expected": "a"},
     "end before the answer"),
])
def test_a_bad_case_is_named_by_file_and_line(tmp_path, line, message):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"prompt": "ok", "expected": "y"}) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(EvalError, match=r"s\.jsonl, line 2: .*") as caught:
        read_suite(path)
    assert message in str(caught.value)


def test_suites_are_the_folder_s_jsonl_files_and_add_checks_before_copying(tmp_path):
    folder = tmp_path / "evals"
    assert load_suites(folder) == []
    good = tmp_path / "math.jsonl"
    good.write_text(json.dumps({"prompt": "2+2?", "expected": "4", "scorer": "contains"}) + "\n")
    suite = add_suite(folder, good)
    assert suite.name == "math" and (folder / "math.jsonl").read_bytes() == good.read_bytes()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(EvalError, match=r"bad\.jsonl, line 1"):
        add_suite(folder, bad)
    assert not (folder / "bad.jsonl").exists(), "a bad suite is never copied in"
    assert [s.name for s in load_suites(folder)] == ["math"]
