"""`finetuned check FILE`: the report of SPEC section 8 from the real command, and its exit status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import chat_lines, make_workspace, write_jsonl

pytestmark = pytest.mark.e2e  # each runs `finetuned check` in a new process, loading the tokenizer: seconds each

SPEC_KEYS = {"format", "objective", "records", "kept", "dropped", "problems", "warnings", "shown"}


def check(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "finetuned", "check", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_json_report_of_a_file_that_would_train(tmp_path, tiny_model_dir):
    ws = make_workspace(tmp_path / "ws")
    path = write_jsonl(tmp_path / "data.jsonl", chat_lines(6))
    result = check(str(path), "--root", str(ws.root), "--json", "--show", "2")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) >= SPEC_KEYS
    assert (report["format"], report["objective"], report["records"], report["kept"]) == ("chat", "sft", 6, 6)
    assert report["dropped"] == {} and report["problems"] == []
    first = report["shown"][0]
    assert set(first) >= {"line", "rendered", "trained"} and first["line"] == 1
    assert first["trained"] == ["hi 0 hi 0.<|im_end|>"], "the trained pieces, in order"
    assert "Say hi number 0." in first["rendered"]


def test_a_refused_file_exits_1_and_says_why(tmp_path, tiny_model_dir):
    record = {"messages": [{"role": "user", "content": "<image>Who?"}, {"role": "assistant", "content": "Kane."}],
              "images": ["1.jpg"]}
    path = write_jsonl(tmp_path / "media.jsonl", [record])
    result = check(str(path), "--base-model", "builtin:tiny", "--json", cwd=tmp_path)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["kept"] == 0 and report["problems"][0]["kind"] == "media"
    plain = check(str(path), "--base-model", "builtin:tiny", cwd=tmp_path)
    assert plain.returncode == 1 and "would be refused" in plain.stdout and "'images'" in plain.stdout


def test_a_preference_file_says_its_objective(tmp_path, tiny_model_dir):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "2+2?", "chosen": "4", "rejected": "5"}])
    result = check(str(path), "--base-model", "builtin:tiny", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["format"], report["objective"], report["kept"]) == ("preference", "dpo", 1)
    shown = report["shown"][0]
    assert shown["trained"] == ["4<|im_end|>"] and shown["rejected"]["trained"] == ["5<|im_end|>"]


def test_plain_output_marks_what_trains(tmp_path, tiny_model_dir):
    path = write_jsonl(tmp_path / "data.jsonl", chat_lines(3))
    result = check(str(path), "--base-model", "builtin:tiny", "--show", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "would train" in result.stdout and "[[hi 0 hi 0.<|im_end|>]]" in result.stdout
    assert "kept 3 examples" in result.stdout
