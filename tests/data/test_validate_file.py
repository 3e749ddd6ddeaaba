"""Bad input: every fault a dropped file can have, and the report that names it.

Each case checks the problem's kind, its first line numbers and its count, since
that is what a user reads in NAME.error.json to fix the file.
"""

from __future__ import annotations

import json
import os
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from data_helpers import chat, write_jsonl

from finetuned.data import validate_file

GOOD = chat(("user", "Hi"), ("assistant", "Hello."))
GOOD_LINE = json.dumps(GOOD)


def lines(*items: Any) -> bytes:
    return "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in items).encode()


def problem(report: dict[str, Any], kind: str) -> dict[str, Any]:
    found = [p for p in report["problems"] if p["kind"] == kind]
    assert found, f"no {kind} problem in {report['problems']}"
    return found[0]


def check_report_shape(report: dict[str, Any], name: str) -> None:
    assert set(report) == {"file", "error", "problems", "good_lines", "bad_lines"}
    assert report["file"] == name
    assert report["error"] and "\n" not in report["error"], "the summary is one line"
    for p in report["problems"]:
        assert set(p) == {"kind", "message", "lines", "count"} and p["count"] >= 1
    json.dumps(report)  # it must serialise as NAME.error.json


BAD_FILES = [
    # name, content, kind, first lines, count
    ("empty.jsonl", b"", "empty_file", [], 1),
    ("blank.jsonl", b"\n   \n\t\n\n", "blank_file", [], 1),
    ("latin1.jsonl", lines(GOOD) + '{"text": "café"}\n'.encode("latin-1") + lines(GOOD), "not_utf8", [2], 1),
    ("utf16.jsonl", (GOOD_LINE + "\n").encode("utf-16"), "not_utf8", [1], 1),
    ("binary.jsonl", bytes(range(256)) * 64, "binary", [1], 1),
    ("array.jsonl", (json.dumps([GOOD, GOOD]) + "\n").encode(), "array_line", [1], 1),
    ("pretty_array.jsonl", json.dumps([GOOD, GOOD], indent=2).encode(), "invalid_json", [1, 2, 3, 4, 5], 25),
    ("truncated.jsonl", lines(GOOD, GOOD) + GOOD_LINE[:25].encode(), "truncated", [3], 1),
    (
        "mixed.jsonl",
        lines(GOOD, GOOD, {"instruction": "a", "output": "b"}, GOOD, {"text": "t"}),
        "mixed_formats",
        [3, 5],
        2,
    ),
    ("unknown.jsonl", lines(GOOD, {"question": "q", "answer": "a"}, {"q": 1}), "unknown_schema", [2, 3], 2),
    ("no_assistant.jsonl", lines(GOOD, chat(("system", "s"), ("user", "u"))), "no_assistant", [2], 1),
    ("bad_role.jsonl", lines(chat(("user", "u"), ("bot", "b")), GOOD), "bad_role", [1], 1),
    (
        "bad_content.jsonl",
        lines(
            GOOD,
            {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": 5}]},
            {"messages": [{"role": "user", "content": ["u"]}, {"role": "assistant", "content": "a"}]},
        ),
        "bad_content",
        [2, 3],
        2,
    ),
    ("not_object.jsonl", lines(GOOD, 42, '"a string"'), "not_object", [2, 3], 2),
    ("bad_json.jsonl", lines(GOOD) + b"{'single': 'quotes'}\n" + lines(GOOD), "invalid_json", [2], 1),
    (
        "bad_sharegpt.jsonl",
        lines({"conversations": [{"from": "human", "value": "u"}, {"from": "robot", "value": "v"}]}),
        "bad_role",
        [1],
        1,
    ),
    ("empty_array.json", b"[]", "no_records", [], 1),
    ("open_array.json", b'[\n{"text": "a"},\n{"text": "b"}', "truncated", [3], 1),
]


@pytest.mark.parametrize(
    ("name", "content", "kind", "first_lines", "count"), BAD_FILES, ids=[case[0] for case in BAD_FILES]
)
def test_bad_file_is_refused_with_kind_lines_and_count(
    tmp_path: Path, name: str, content: bytes, kind: str, first_lines: list[int], count: int
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    result = validate_file(path)
    assert not result.ok
    check_report_shape(result.error, name)
    found = problem(result.error, kind)
    assert found["lines"] == first_lines
    assert found["count"] == count
    print(json.dumps(result.error, indent=2))


def test_error_report_counts_good_and_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    records = [GOOD] * 3 + [{"foo": 1}] * 8 + [chat(("user", "u"))]
    path.write_bytes(lines(*records))
    report = validate_file(path).error
    assert (report["good_lines"], report["bad_lines"]) == (3, 9)
    unknown = problem(report, "unknown_schema")
    assert unknown["lines"] == [4, 5, 6, 7, 8] and unknown["count"] == 8, "first five line numbers, full count"
    assert report["error"].startswith("9 of 12 records bad: unknown_schema (8 lines, first line 4)")


def test_jsonl_that_is_a_json_array_says_so(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps([GOOD, GOOD], indent=2))
    assert "JSON array" in validate_file(path).error["error"]


def test_good_jsonl_gives_format_count_and_sha256(tmp_path: Path) -> None:
    import hashlib

    path = write_jsonl(tmp_path / "data.jsonl", [GOOD] * 7)
    with open(path, "a") as f:
        f.write("\n\n")  # blank lines are fine
    result = validate_file(path)
    assert (result.ok, result.format, result.examples, result.error) == (True, "chat", 7, None)
    assert result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_last_line_without_newline_is_fine_when_complete(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(lines(GOOD) + GOOD_LINE.encode())
    assert validate_file(path).examples == 2


def test_crlf_line_ends_and_utf8_bom_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "windows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + lines(GOOD, GOOD).replace(b"\n", b"\r\n"))
    assert validate_file(path).examples == 2


def test_json_array_file_is_accepted(datasets: Path) -> None:
    """LLaMA-Factory keeps data as one JSON array in a .json file: the real alpaca demo."""
    result = validate_file(datasets / "alpaca_en_demo.json")
    assert (result.ok, result.format, result.examples) == (True, "alpaca", 120)


@pytest.mark.parametrize("first_text", ["short", "x" * 9000], ids=["short-records", "first-record-over-8KiB"])
def test_json_lines_saved_as_json_are_read_as_json_lines(tmp_path: Path, first_text: str) -> None:
    """`datasets.Dataset.to_json("x.json")` writes JSON Lines by default, under a .json name."""
    path = tmp_path / "x.json"
    path.write_bytes(lines({"text": first_text}, {"text": "two"}, {"text": "three"}))
    result = validate_file(path)
    assert (result.ok, result.format, result.examples) == (True, "text", 3), result.error


def test_one_pretty_printed_record_in_a_json_file_is_still_one_record(tmp_path: Path) -> None:
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"text": "x" * 9000}, indent=2))
    result = validate_file(path)
    assert (result.ok, result.examples) == (True, 1), result.error


def test_json_array_reports_the_line_of_a_bad_element(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps([GOOD, chat(("user", "no answer")), GOOD], indent=2))
    report = validate_file(path).error
    no_assistant = problem(report, "no_assistant")
    assert no_assistant["lines"] == [14], "the line where the second element starts"


def test_json_array_streams_elements_across_buffer_refills(tmp_path: Path) -> None:
    """Elements larger than the read buffer (1 MiB) are still parsed, in bounded memory."""
    big = {"text": "x" * (3 * 2**20)}
    path = tmp_path / "big.json"
    path.write_text(json.dumps([big, {"text": "short"}, big]))
    result = validate_file(path)
    assert (result.ok, result.examples, result.format) == (True, 3, "text"), result.error


def test_c4_demo_jsonl_is_accepted(datasets: Path) -> None:
    result = validate_file(datasets / "c4_demo.jsonl")
    assert (result.ok, result.format, result.examples) == (True, "text", 40)


def write_long_line(path: Path, size: int, tail: bytes = b"") -> None:
    chunk = b"a" * 2**24
    with open(path, "wb") as f:
        f.write(b'{"text": "')
        for _ in range(size // len(chunk)):
            f.write(chunk)
        f.write(b'"}\n' + tail)


def measure(path: Path, settings: Any = None) -> tuple[Any, float, int]:
    tracemalloc.start()
    started = time.monotonic()
    try:
        result = validate_file(path, settings)
        return result, time.monotonic() - started, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_200_mb_single_line_is_refused_without_reading_it_whole(tmp_path: Path, settings: Any) -> None:
    path = tmp_path / "one line.jsonl"
    write_long_line(path, 200 * 2**20)
    result, seconds, peak = measure(path)
    assert not result.ok
    assert problem(result.error, "line_too_long")["lines"] == [1]
    assert result.error["error"] == "line 1 is longer than 64 MiB"
    assert peak < 160 * 2**20, f"peak Python memory {peak / 2**20:.0f} MiB: the line was read whole"
    assert seconds < 5
    # Memory follows the cap, not the line.
    result, seconds, peak = measure(path, settings(max_line_bytes=4 * 2**20))
    assert result.error["error"] == "line 1 is longer than 4 MiB"
    assert peak < 12 * 2**20


def test_sparse_10_gb_file_is_refused_fast(tmp_path: Path) -> None:
    """Mostly NUL bytes: the first 8 KiB give it away as binary, nothing more is read."""
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as f:
        f.write(b'{"text": "')
        f.truncate(10 * 2**30)
    result, seconds, peak = measure(path)
    assert not result.ok and problem(result.error, "binary")["lines"] == [1]
    assert result.sha256 is None, "reading stopped early: no digest of a file not read"
    assert seconds < 2 and peak < 16 * 2**20


def test_sparse_10_gb_single_line_with_a_text_head_is_refused_fast(tmp_path: Path) -> None:
    """A head of real text hides the NULs from the binary check: the line cap stops the read."""
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as f:
        f.write(b'{"text": "' + b"a" * 2**16)
        f.truncate(10 * 2**30)
    result, seconds, peak = measure(path)
    assert not result.ok and problem(result.error, "line_too_long")["lines"] == [1]
    assert result.sha256 is None
    assert seconds < 5 and peak < 160 * 2**20


def test_skip_bad_lines_skips_an_over_long_line_in_bounded_memory(tmp_path: Path, settings: Any) -> None:
    path = tmp_path / "data.jsonl"
    write_long_line(path, 48 * 2**20, tail=lines(GOOD, GOOD))
    result, _seconds, peak = measure(path, settings(skip_bad_lines=True, max_line_bytes=2**20))
    assert result.ok and result.examples == 2 and result.error is None
    assert problem(result.warnings, "line_too_long")["lines"] == [1]
    assert peak < 16 * 2**20
    assert result.sha256 is not None


def test_skip_bad_lines_accepts_the_good_lines_and_warns(tmp_path: Path, settings: Any) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(lines(GOOD, {"x": 1}, GOOD, "not json", GOOD, {"text": "other format"}))
    result = validate_file(path, settings(skip_bad_lines=True))
    assert (result.ok, result.examples, result.error) == (True, 3, None)
    check_report_shape(result.warnings, "data.jsonl")
    assert result.warnings["bad_lines"] == 3
    assert {p["kind"]: p["lines"] for p in result.warnings["problems"]} == {
        "unknown_schema": [2],
        "invalid_json": [4],
        "mixed_formats": [6],
    }


def test_skip_bad_lines_still_refuses_a_file_with_no_good_line(tmp_path: Path, settings: Any) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(lines({"x": 1}, {"y": 2}))
    result = validate_file(path, settings(skip_bad_lines=True))
    assert not result.ok and result.error["error"].startswith("no good record")


def test_skip_bad_lines_does_not_rescue_a_binary_file(tmp_path: Path, settings: Any) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(lines(GOOD) + b"\x00\x01\x02")
    assert not validate_file(path, settings(skip_bad_lines=True)).ok


@pytest.mark.parametrize(
    "name",
    [
        "my data.jsonl",
        "données ✓ 日本.jsonl",
        "x; rm -rf ~ $(id) `id` 'q\" &.jsonl",
        "-starts-with-dash.jsonl",
    ],
)
def test_odd_file_names_are_handled_as_plain_names(tmp_path: Path, name: str) -> None:
    path = write_jsonl(tmp_path / name, [GOOD, GOOD])
    assert validate_file(path).examples == 2
    bad = tmp_path / ("bad " + name)
    bad.write_bytes(b"{")
    assert validate_file(bad).error["file"] == bad.name


def test_validation_does_not_touch_the_file(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [GOOD])
    before = (path.read_bytes(), os.stat(path).st_mtime_ns)
    validate_file(path)
    assert (path.read_bytes(), os.stat(path).st_mtime_ns) == before


def test_what_is_not_a_readable_regular_file_is_refused_not_raised(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    for path in (fifo, folder):
        assert problem(validate_file(path).error, "not_a_file")["count"] == 1
    assert problem(validate_file(tmp_path / "gone.jsonl").error, "unreadable")["count"] == 1


@pytest.mark.parametrize("name", ["deep.jsonl", "deep.json", "deep-object.json"])
def test_json_nested_past_the_parser_s_depth_is_refused_not_raised(tmp_path: Path, name: str) -> None:
    deep = b"[" * 50_000 + b"]" * 50_000
    body = {"deep.jsonl": b'{"text": ' + deep + b"}\n", "deep.json": b"[" + deep + b"]",
            "deep-object.json": b'{"a": ' + deep + b"}"}[name]
    (tmp_path / name).write_bytes(body)
    result = validate_file(tmp_path / name)
    assert not result.ok and "nested too deeply" in result.error["error"], result.error
