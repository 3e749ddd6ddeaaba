"""Refusals and warnings that say the truth and the fix (issue 22, item 8).

Each case is a file as a user drops it, in the shape of a public dataset or of a common export
(fixtures/formats/README.md names the sources); the message must name what the file really is
and what to run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from data_helpers import chat, write_jsonl

from finetuned.config import DataSettings
from finetuned.data import DataError, check_file, prepare, validate_file

FIXTURES = Path(__file__).parents[1] / "fixtures" / "formats"
END = "<|im_end|>"
RECORDS = [{"instruction": "Say hi.", "output": "Hi!"}, {"instruction": "Say bye.", "output": "Bye!"},
           {"instruction": "Count to 2.", "output": "1, 2"}, {"instruction": "Say yes.", "output": "Yes."}]
TO_JSONL = 'orient="records", lines=True'


def error(path: Path) -> str:
    result = validate_file(path)
    assert not result.ok, f"{path.name} was accepted"
    return result.error["error"]


def test_nectar_ranked_answers_are_named_a_ranking_not_a_completion_record():
    result = validate_file(FIXTURES / "nectar.jsonl")
    assert not result.ok
    (problem,) = result.error["problems"]
    assert (problem["kind"], problem["count"]) == ("ranking", 2)
    message = problem["message"]
    assert "completion record" not in message
    assert "'answers'" in message and "rank" in message and "chosen" in message, message


def test_orca_dpo_pairs_question_is_the_prompt(tokenizer):
    report = check_file(FIXTURES / "orca_dpo_pairs.jsonl", tokenizer, DataSettings(), 512, 2)
    assert (report["ok"], report["format"], report["kept"]) == (True, "preference", 2), report
    first = report["shown"][0]
    assert "How many legs does a spider have?" in first["rendered"], "'question' is the user turn"
    assert "You are an AI assistant. Answer briefly." in first["rendered"], "'system' is the system turn"
    assert first["trained"] == ["A spider has eight legs." + END]


def test_parquet_is_named_with_the_conversion_to_run(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(RECORDS), path)
    message = error(path)
    assert "Parquet" in message and TO_JSONL in message and "read_parquet" in message, message


def test_csv_is_named_with_the_conversion_to_run(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("instruction,output\nSay hi.,Hi!\nSay bye.,Bye!\n")
    message = error(path)
    assert "CSV" in message and TO_JSONL in message and "read_csv" in message, message


@pytest.mark.parametrize("name", ["data.json", "data.jsonl"])
def test_pandas_default_to_json_columns_are_named_with_the_fix(tmp_path, name):
    """DataFrame.to_json() writes orient="columns": {"instruction": {"0": ..., "1": ...}, "output": {...}}."""
    columns = {key: {str(i): r[key] for i, r in enumerate(RECORDS)} for key in RECORDS[0]}
    path = tmp_path / name
    path.write_text(json.dumps(columns))
    message = error(path)
    assert "columns" in message and TO_JSONL in message, message
    assert "expected a string" not in message


def test_a_json_array_in_a_jsonl_file_counts_its_records(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(RECORDS, indent=2))
    result = validate_file(path)
    assert "JSON array of 4 records" in result.error["error"], result.error["error"]
    assert result.records == 4


def test_a_single_over_long_record_says_its_tokens_and_max_seq_len(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "one.jsonl", [chat(("user", "word " * 300), ("assistant", "Hello."))])
    with pytest.raises(DataError) as refused:
        prepare(path, tmp_path / "out", tokenizer, DataSettings(), 128)
    message = refused.value.report["error"]
    assert "training.max_seq_len 128" in message and "335 tokens" in message, message
    assert "data.overlong" in message


def test_special_token_text_alone_is_not_called_dropped_or_cut(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "special.jsonl",
                       [chat(("user", "How do turns end?"), ("assistant", "With <|im_end|> after the answer."))])
    summary = prepare(path, tmp_path / "out", tokenizer, DataSettings(), 512)
    (note,) = [n for n in summary.notes if n["kind"] == "data_loss"]
    assert "dropped or cut" not in note["message"] and "100%" not in note["message"], note["message"]
    assert "1 of 1 examples spell a special token" in note["message"], note["message"]


def test_long_key_lists_say_how_many_are_left_out(tmp_path):
    extra = {f"meta_{i:02d}": i for i in range(12)}
    ok = validate_file(write_jsonl(tmp_path / "extra.jsonl", [dict(chat(("user", "q"), ("assistant", "a")), **extra)]))
    (note,) = [n for n in ok.notes if n["kind"] == "unused_keys"]
    assert "meta_07" in note["message"] and "and 4 more" in note["message"], note["message"]
    unknown = error(write_jsonl(tmp_path / "unknown.jsonl", [extra]))
    assert "and 4 more" in unknown, unknown
