"""Read the JSON values of a data file as a stream, with bounded memory.

A user may drop anything: a 10 GB file with no newline, a UTF-16 export, a
zip renamed to .jsonl. Nothing here ever holds more than one line (capped at
`max_line_bytes`) or one array record in memory, and the SHA-256 of the file
is computed in the same pass, so ingestion reads each byte once.

Formats are not this module's business: it yields parsed JSON values (or the
reason a line could not be parsed) with their line numbers.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from finetuned.data.report import RecordProblem
from finetuned.fsio import open_regular

log = logging.getLogger(__name__)

HEAD_BYTES = 8192
CHUNK = 1 << 20
_UTF8_BOM = codecs.BOM_UTF8
_OTHER_BOMS = {
    codecs.BOM_UTF32_LE: "UTF-32",
    codecs.BOM_UTF32_BE: "UTF-32",
    codecs.BOM_UTF16_LE: "UTF-16",
    codecs.BOM_UTF16_BE: "UTF-16",
}
_WS = re.compile(r"[ \t\r\n]*")


@dataclass(slots=True)
class Item:
    """One record's place in the file: its parsed value, or the problem that kept it from parsing.

    `fatal` problems make the whole file unusable, even with skip_bad_lines.
    """

    line: int
    value: Any = None
    problem: RecordProblem | None = None
    fatal: bool = False


def human_bytes(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:g} {unit}" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class FileReader:
    """Iterate a .jsonl file (one value per line) or a .json file holding one array.

    After a full iteration `sha256` holds the file's digest; it stays None when
    reading stopped early (a fatal problem, or an over-long line that is not skipped).
    """

    def __init__(self, path: Path, *, max_line_bytes: int, skip_long_lines: bool = False) -> None:
        self.path = Path(path)
        self.max_line_bytes = max_line_bytes
        self.skip_long_lines = skip_long_lines
        self.sha256: str | None = None
        self.size = 0  # bytes read
        self.array = False  # the file is read as one JSON array (a .json file starting with "[")
        self.looks_like_array = False  # starts with "[" whatever its name
        self.object = False  # a .json file holding one JSON object, read whole (one record, or a wrapper)
        self.wrapper: tuple[str, int] | None = None  # that object's key holding an array of records, and their count
        self.looked_like_json = False  # some line starts like a JSON value
        self.blank_lines = 0

    def __iter__(self) -> Iterator[Item]:
        hasher = hashlib.sha256()
        with open_regular(self.path) as f:
            head = f.read(HEAD_BYTES)
            if problem := _sniff(head, self.path):
                yield Item(1, problem=problem, fatal=True)
                return
            stripped = head.removeprefix(_UTF8_BOM).lstrip()
            json_file = self.path.suffix.lower() == ".json"
            self.looks_like_array = stripped.startswith(b"[")
            self.array = self.looks_like_array and json_file
            if stripped.startswith(b"{") and json_file:  # JSON Lines named .json, or one pretty-printed object
                f.seek(0)  # the head read moved past the first line's start
                self.object = not _whole_json(f.readline(self.max_line_bytes + 1))
            f.seek(0)
            if self.array:
                lines = self._array(f, hasher)
            elif self.object:
                lines = self._object(f, hasher)
            else:
                lines = self._lines(f, hasher)
            complete = yield from lines
        if complete:
            self.sha256 = hasher.hexdigest()

    def _lines(self, f: IO[bytes], hasher: Any) -> Iterator[Item]:
        limit = self.max_line_bytes
        line_no = 0
        while raw := f.readline(limit + 1):
            line_no += 1
            hasher.update(raw)
            self.size += len(raw)
            ended = raw.endswith(b"\n")
            if not ended and len(raw) > limit:
                problem = RecordProblem("line_too_long", f"line {line_no} is longer than {human_bytes(limit)}")
                yield Item(line_no, problem=problem)
                if not self.skip_long_lines:
                    log.info("%s: stopped reading at over-long line %d", self.path.name, line_no)
                    return False
                self._skip_rest_of_line(f, hasher)
                continue
            if line_no == 1:
                raw = raw.removeprefix(_UTF8_BOM)
            body = raw.rstrip(b"\r\n")
            if not body.strip():
                self.blank_lines += 1
                continue
            self.looked_like_json = self.looked_like_json or body.lstrip()[:1] in (b"{", b"[", b'"')
            yield _parse_line(line_no, body, last=not ended)
        return True

    def _skip_rest_of_line(self, f: IO[bytes], hasher: Any) -> None:
        # Bounded chunks: the rest of a 10 GB line streams through the hash, never into memory.
        while chunk := f.readline(CHUNK):
            hasher.update(chunk)
            self.size += len(chunk)
            if chunk.endswith(b"\n"):
                return

    def _object(self, f: IO[bytes], hasher: Any) -> Iterator[Item]:
        """A .json file holding one pretty-printed object: one value, read whole within the line cap."""
        data = f.read(self.max_line_bytes + 1)
        hasher.update(data)
        self.size = len(data)
        if len(data) > self.max_line_bytes:
            yield Item(1, problem=RecordProblem(
                "line_too_long", f"the JSON object is longer than {human_bytes(self.max_line_bytes)}"), fatal=True)
            return False
        item = _parse_line(1, data.removeprefix(_UTF8_BOM), last=True)
        if item.problem is not None:
            item.fatal = True
        yield item
        return True

    def _array(self, f: IO[bytes], hasher: Any) -> Iterator[Item]:
        scanner = _ArrayScanner(f, hasher, self.max_line_bytes)
        try:
            yield from scanner.records()
        except RecordProblem as problem:
            yield Item(scanner.line_at(scanner.pos), problem=problem, fatal=True)
            return False
        finally:
            self.size = scanner.size
        return True


def count_array(path: Path, max_line_bytes: int) -> int | None:
    """The elements of the one JSON array the file holds, in bounded memory; None if it holds no whole array."""
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in _ArrayScanner(f, hashlib.sha256(), max_line_bytes).records())
    except (RecordProblem, OSError):
        return None


def _whole_json(line: bytes) -> bool:
    """The line is a JSON value by itself: the file is JSON Lines (pretty-printed JSON spans lines)."""
    try:
        json.loads(line.removeprefix(_UTF8_BOM))
    except ValueError:
        return False
    return True


def to_jsonl(path: Path) -> str:
    """The pandas call that writes a table as the JSON Lines finetuned reads, beside `path`."""
    return f'to_json({path.stem + ".jsonl"!r}, orient="records", lines=True, force_ascii=False)'


def _sniff(head: bytes, path: Path) -> RecordProblem | None:
    """Whole-file faults visible in the first bytes: other encodings, tables, binary files."""
    suffix = path.suffix.lower()
    if head.startswith(b"PAR1") or suffix == ".parquet":
        return RecordProblem("table_file", "the file is Parquet, a table: finetuned reads JSON Lines; convert it with "
                             f"pandas: pd.read_parquet({path.name!r}).{to_jsonl(path)}")
    if head.startswith(b"ARROW1") or suffix == ".arrow":
        return RecordProblem("table_file", "the file is an Arrow table: finetuned reads JSON Lines; convert it with "
                             f"datasets: Dataset.from_file({path.name!r}).to_json({path.stem + '.jsonl'!r})")
    for bom, name in _OTHER_BOMS.items():
        if head.startswith(bom):
            return RecordProblem("not_utf8", f"the file is {name}; save it as UTF-8")
    if b"\x00" in head:
        return RecordProblem("binary", "the file looks binary (NUL bytes in its first 8 KiB), not JSON Lines text")
    return None


def _parse_line(line_no: int, body: bytes, *, last: bool) -> Item:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Item(
            line_no,
            problem=RecordProblem(
                "not_utf8",
                f"line {line_no} is not UTF-8 (byte 0x{body[exc.start]:02x} at column {exc.start + 1})",
            ),
        )
    try:
        return Item(line_no, value=json.loads(text))
    except json.JSONDecodeError as exc:
        if last:
            # No closing newline and no valid JSON: the writer was cut off mid-record.
            return Item(
                line_no,
                problem=RecordProblem(
                    "truncated", f"the last line ({line_no}) is cut off: {exc.msg} (column {exc.colno})"
                ),
            )
        return Item(
            line_no,
            problem=RecordProblem("invalid_json", f"line {line_no} is not valid JSON: {exc.msg} (column {exc.colno})"),
        )


class _ArrayScanner:
    """Pull the elements of one top-level JSON array out of a file, a buffer at a time.

    `raw_decode` parses one element from a text buffer; when an element runs past
    the buffer the buffer grows geometrically (so re-parsing costs O(size)), up to
    the line cap. Syntax errors end the scan: inside an array there is no next
    line to resynchronise on.
    """

    def __init__(self, f: IO[bytes], hasher: Any, limit: int) -> None:
        self.f, self.hasher, self.limit = f, hasher, limit
        self.decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self.json = json.JSONDecoder()
        self.buf, self.pos, self.eof, self.size = "", 0, False, 0
        self.base_line, self.base = 1, 0  # buf[self.base] is on line base_line

    def line_at(self, pos: int) -> int:
        return self.base_line + self.buf.count("\n", self.base, pos)

    def _more(self) -> None:
        self.base_line, self.base = self.line_at(self.pos), 0
        self.buf, self.pos = self.buf[self.pos :], 0
        chunk = self.f.read(max(CHUNK, len(self.buf)))
        self.hasher.update(chunk)
        self.size += len(chunk)
        self.eof = not chunk
        try:
            text = self.decoder.decode(chunk, final=self.eof)
        except UnicodeDecodeError as exc:
            line = self.line_at(len(self.buf)) + chunk.count(b"\n", 0, exc.start)
            raise RecordProblem("not_utf8", f"line {line} is not UTF-8") from None
        if self.size == len(chunk) and text.startswith("\ufeff"):
            text = text[1:]
        self.buf += text

    def _skip_ws(self) -> None:
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf) or self.eof:
                return
            self._more()

    def _expect_more(self) -> None:
        if self.pos >= len(self.buf):
            raise RecordProblem(
                "truncated", f"the JSON array is not closed: the file ends at line {self.line_at(self.pos)}"
            )

    def records(self) -> Iterator[Item]:
        self._skip_ws()
        self.pos += 1  # the "[" the reader saw
        first = True
        while True:
            self._skip_ws()
            self._expect_more()
            if self.buf[self.pos] == "]":
                self.pos += 1
                self._skip_ws()
                if self.pos < len(self.buf):
                    raise RecordProblem(
                        "invalid_json", f"data after the end of the array at line {self.line_at(self.pos)}"
                    )
                return
            if not first:
                if self.buf[self.pos] != ",":
                    raise RecordProblem(
                        "invalid_json",
                        f"expected ',' or ']' between array elements at line {self.line_at(self.pos)}",
                    )
                self.pos += 1
                self._skip_ws()
                self._expect_more()
            first = False
            line = self.line_at(self.pos)
            value = self._element(line)
            yield Item(line, value=value)

    def _element(self, line: int) -> Any:
        while True:
            try:
                value, end = self.json.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                incomplete = _maybe_incomplete(exc, len(self.buf))
                if self.eof or not incomplete:
                    kind = "truncated" if self.eof and incomplete else "invalid_json"
                    raise RecordProblem(
                        kind,
                        f"the array element at line {line} is not valid JSON: {exc.msg} (line {self.line_at(exc.pos)})",
                    ) from None
            else:
                # A bare number may continue in the next chunk; objects and arrays end in a bracket.
                if end < len(self.buf) or self.eof or isinstance(value, (dict, list)):
                    self.pos = end
                    return value
            if len(self.buf) - self.pos > self.limit:
                raise RecordProblem(
                    "line_too_long",
                    f"the array element at line {line} is longer than {human_bytes(self.limit)}",
                )
            self._more()


def _maybe_incomplete(exc: json.JSONDecodeError, buffered: int) -> bool:
    return exc.msg.startswith("Unterminated string") or exc.pos >= buffered - 1
