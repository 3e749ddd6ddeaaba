"""`prepare`: overlong policy, refusals, the on-disk result, and the real shared datasets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from data_helpers import chat, read_prepared, write_jsonl

from finetuned.data import DataError, is_current, load_meta, prepare, validate_file

END = "<|im_end|>"


def long_and_short(n_long: int = 3, n_short: int = 4) -> list[dict[str, Any]]:
    long_answer = " ".join(f"word{i}" for i in range(200))
    return [chat(("user", "Tell me everything."), ("assistant", long_answer))] * n_long + [
        chat(("user", "Hi"), ("assistant", "Hello."))
    ] * n_short


def test_overlong_examples_are_dropped_and_counted(tmp_path: Path, tokenizer: Any, settings: Any) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", long_and_short())
    summary = prepare(path, tmp_path / "out", tokenizer, settings(overlong="drop"), 128)
    assert (summary.examples, summary.dropped_overlong, summary.truncated) == (4, 3, 0)
    assert all(len(ids) <= 128 for ids, _ in read_prepared(tmp_path / "out"))
    assert load_meta(tmp_path / "out")["dropped_overlong"] == 3


def test_overlong_examples_are_truncated_and_counted(tmp_path: Path, tokenizer: Any, settings: Any) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", long_and_short())
    summary = prepare(path, tmp_path / "out", tokenizer, settings(overlong="truncate"), 128)
    assert (summary.examples, summary.dropped_overlong, summary.truncated) == (7, 0, 3)
    lengths = sorted(len(ids) for ids, _ in read_prepared(tmp_path / "out"))
    assert lengths[-3:] == [128, 128, 128] and summary.longest == 128


def test_truncation_that_cuts_every_answer_drops_the_example(tmp_path: Path, tokenizer: Any, settings: Any) -> None:
    long_question = " ".join(f"q{i}" for i in range(300))
    path = write_jsonl(
        tmp_path / "data.jsonl",
        [chat(("user", long_question), ("assistant", "ok")), chat(("user", "Hi"), ("assistant", "Hello."))],
    )
    summary = prepare(path, tmp_path / "out", tokenizer, settings(overlong="truncate"), 64)
    assert (summary.examples, summary.truncated, summary.dropped_no_loss) == (1, 1, 1)


def test_no_trained_token_refuses_the_file_with_a_report(tmp_path: Path, tokenizer: Any, settings: Any) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", long_and_short(n_long=3, n_short=0))
    with pytest.raises(DataError) as caught:
        prepare(path, tmp_path / "out", tokenizer, settings(), 64)
    report = caught.value.report
    assert report["file"] == "data.jsonl" and report["problems"][0]["kind"] == "no_loss_tokens"
    assert "3 longer than training.max_seq_len 64" in report["error"]
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*")), "nothing half-written is left"


def test_invalid_file_raises_the_validation_report(tmp_path: Path, tokenizer: Any) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"question": 1}\n')
    with pytest.raises(DataError) as caught:
        prepare(path, tmp_path / "out", tokenizer, None, 128)
    assert caught.value.report["problems"][0]["kind"] == "unknown_schema"


def test_skip_bad_lines_trains_the_good_lines(tmp_path: Path, tokenizer: Any, settings: Any) -> None:
    path = tmp_path / "data.jsonl"
    good = json.dumps(chat(("user", "Hi"), ("assistant", "Hello.")))
    path.write_text("\n".join([good, "{broken", good, '{"text": "other format"}', good]) + "\n")
    summary = prepare(path, tmp_path / "out", tokenizer, settings(skip_bad_lines=True), 128)
    assert (summary.examples, summary.skipped_lines) == (3, 2)
    warnings = load_meta(tmp_path / "out")["warnings"]
    assert {p["kind"]: p["lines"] for p in warnings["problems"]} == {
        "invalid_json": [2],
        "mixed_formats": [4],
    }


def test_meta_records_counts_source_and_settings(tmp_path: Path, tokenizer: Any, settings: Any) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", long_and_short(n_long=0, n_short=5))
    validation = validate_file(path)
    summary = prepare(path, tmp_path / "out", tokenizer, settings(), 256, validation=validation)
    meta = load_meta(tmp_path / "out")
    examples = read_prepared(tmp_path / "out")
    assert meta["examples"] == len(examples) == 5
    assert meta["tokens"] == sum(len(ids) for ids, _ in examples)
    assert meta["loss_tokens"] == sum(int(mask.sum()) for _, mask in examples)
    assert meta["sha256"] == validation.sha256 and meta["format"] == "chat" and meta["max_seq_len"] == 256
    assert meta["tokenizer"] == summary.tokenizer and len(summary.tokenizer) == 16
    assert is_current(tmp_path / "out", validation.sha256, tokenizer, settings(), 256)
    assert not is_current(tmp_path / "out", validation.sha256, tokenizer, settings(train_on_prompt=True), 256)
    assert not is_current(tmp_path / "out", validation.sha256, tokenizer, settings(), 512)


def test_prepare_replaces_an_older_preparation_whole(tmp_path: Path, tokenizer: Any) -> None:
    first = write_jsonl(tmp_path / "a.jsonl", [chat(("user", "Hi"), ("assistant", "Hello."))] * 3)
    second = write_jsonl(tmp_path / "b.jsonl", [{"text": "one document"}] * 2)
    prepare(first, tmp_path / "out", tokenizer, None, 128)
    prepare(second, tmp_path / "out", tokenizer, None, 128)
    assert load_meta(tmp_path / "out")["format"] == "text" and len(read_prepared(tmp_path / "out")) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "b.jsonl", "out"]


def test_a_file_changed_after_validation_is_refused(tmp_path: Path, tokenizer: Any) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [{"text": "a"}, {"text": "b"}])
    validation = validate_file(path)
    write_jsonl(path, [{"text": "c"}, {"text": "d"}])
    with pytest.raises(DataError, match="changed"):
        prepare(path, tmp_path / "out", tokenizer, None, 128, validation=validation)


def test_odd_names_prepare_fine(tmp_path: Path, tokenizer: Any) -> None:
    path = write_jsonl(tmp_path / "x; rm -rf ~ $(id) ✓ 'q\".jsonl", [{"text": "hello there"}])
    summary = prepare(path, tmp_path / "out dir ✓", tokenizer, None, 128)
    assert summary.source == path.name and summary.examples == 1


def test_real_alpaca_json_array_prepares(tmp_path: Path, tokenizer: Any, datasets: Path) -> None:
    summary = prepare(datasets / "alpaca_en_demo.json", tmp_path / "out", tokenizer, None, 1024)
    assert (summary.format, summary.examples, summary.dropped_overlong) == ("alpaca", 120, 0)
    assert 0.5 < summary.loss_share < 0.9
    first_ids, first_mask = read_prepared(tmp_path / "out")[0]
    trained = tokenizer.decode(first_ids[first_mask == 1].tolist())
    assert trained.startswith("Making crepes is an easy and delicious process!") and trained.endswith(END)


def test_real_c4_text_prepares(tmp_path: Path, tokenizer: Any, datasets: Path, settings: Any) -> None:
    dropped = prepare(datasets / "c4_demo.jsonl", tmp_path / "drop", tokenizer, settings(), 1024)
    cut = prepare(datasets / "c4_demo.jsonl", tmp_path / "cut", tokenizer, settings(overlong="truncate"), 1024)
    assert dropped.format == "text" and dropped.examples + dropped.dropped_overlong == 40
    assert dropped.dropped_overlong > 0, "c4 holds documents longer than 1024 tokens"
    assert (cut.examples, cut.truncated) == (40, dropped.dropped_overlong)
    for ids, mask in read_prepared(tmp_path / "drop"):
        assert mask[0] == 0 and mask[1:].all() and ids[-1] == tokenizer.eos_token_id


def test_arrays_have_the_documented_dtypes(tmp_path: Path, tokenizer: Any) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [{"text": "abc def"}] * 3)
    prepare(path, tmp_path / "out", tokenizer, None, 128)
    offsets = np.load(tmp_path / "out" / "offsets.npy")
    assert offsets.dtype == np.int64 and offsets[0] == 0 and len(offsets) == 4
    assert (tmp_path / "out" / "tokens.bin").stat().st_size == 4 * offsets[-1]
    assert (tmp_path / "out" / "mask.bin").stat().st_size == offsets[-1]


def test_read_ahead_keeps_order_and_raises_the_producers_error() -> None:
    from finetuned.data.examples import ahead as _ahead

    assert list(_ahead(iter(range(100)))) == list(range(100))

    def failing():
        yield 1
        raise ValueError("bad batch")

    out = []
    with pytest.raises(ValueError, match="bad batch"):
        for item in _ahead(failing()):
            out.append(item)
    assert out == [1]


def test_read_ahead_stopped_early_closes_its_source_without_hanging() -> None:
    import threading

    from finetuned.data.examples import ahead as _ahead

    closed = threading.Event()

    def endless():
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            closed.set()

    items = _ahead(endless())
    assert next(items) == 0
    items.close()  # what prepare does when a write fails mid-file
    assert closed.wait(5), "the producer thread closed the source generator"


def test_special_token_text_in_content_is_counted_and_warned(
    tmp_path: Path, tokenizer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    records = [chat(("user", "How do turns end?"), ("assistant", "With <|im_end|> after the answer.")),
               chat(("user", "Hi"), ("assistant", "Hello."))]
    path = write_jsonl(tmp_path / "special.jsonl", records)
    with caplog.at_level("WARNING"):
        summary = prepare(path, tmp_path / "prepared", tokenizer, None, 512)
    assert summary.special_token_text == 1
    assert load_meta(tmp_path / "prepared")["special_token_text"] == 1
    assert "1 examples spell a special token in their text (first seen: <|im_end|>)" in caplog.text


def test_a_file_that_loses_many_examples_says_so_and_past_the_limit_is_refused(
        tmp_path: Path, tokenizer: Any, settings: Any) -> None:
    short = chat(("user", "Hi"), ("assistant", "Hello."))
    long = chat(("user", "word " * 300), ("assistant", "Hello."))
    path = write_jsonl(tmp_path / "data.jsonl", [short] * 7 + [long] * 3)
    summary = prepare(path, tmp_path / "out", tokenizer, settings(), 128)
    (note,) = [n for n in summary.notes if n["kind"] == "data_loss"]
    assert "3 of 10 examples (30%)" in note["message"] and "training.max_seq_len 128" in note["message"]
    assert "the longest has 335 tokens" in note["message"] and "data.overlong" in note["message"], note["message"]
    assert load_meta(tmp_path / "out")["notes"] == summary.notes, "the job's record reads them from meta.json"
    with pytest.raises(DataError, match=r"more than data\.max_dropped_fraction 0\.2") as refused:
        prepare(path, tmp_path / "out2", tokenizer, settings(max_dropped_fraction=0.2), 128)
    assert refused.value.report["problems"][0]["kind"] == "data_loss"
    quiet = prepare(write_jsonl(tmp_path / "ok.jsonl", [short] * 30 + [long]), tmp_path / "out3", tokenizer,
                    settings(), 128)
    assert not [n for n in quiet.notes if n["kind"] == "data_loss"], "3% lost is not worth a warning"
