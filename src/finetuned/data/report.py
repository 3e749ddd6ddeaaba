"""Problems found in a data file, collected into the report users read.

Every stage (reading, validation, tokenisation) records problems the same way,
so `NAME.error.json` has one shape whatever found the fault:

    {"file", "error": one-line summary,
     "problems": [{"kind", "message", "lines": [first few], "count"}],
     "good_lines", "bad_lines"}

Memory stays bounded on files with millions of bad lines: per kind we keep the
first message, the first few line numbers and a count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from finetuned.errors import FinetunedError

# Line numbers kept per kind: enough to find the pattern, small enough to read.
KEEP_LINES = 5


class DataError(FinetunedError):
    """A file that cannot be trained; `report` is the content for NAME.error.json."""

    def __init__(self, report: dict[str, Any]) -> None:
        super().__init__(report["error"])
        self.report = report


# Not a FinetunedError: control flow inside parsing, always folded into a report or a DataError.
class RecordProblem(Exception):
    """One record is unusable: `kind` names the fault for grouping, `message` explains it."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass
class _Entry:
    kind: str
    message: str
    lines: list[int] = field(default_factory=list)
    count: int = 0


class ProblemLog:
    """Problems grouped by kind, in the order each kind was first seen."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self.bad_lines = 0

    def __bool__(self) -> bool:
        return bool(self._entries)

    def add(self, kind: str, message: str, line: int | None = None, *, counts_as_line: bool = True) -> None:
        entry = self._entries.get(kind)
        if entry is None:
            entry = self._entries[kind] = _Entry(kind, message)
        entry.count += 1
        if line is not None and len(entry.lines) < KEEP_LINES:
            entry.lines.append(line)
        if counts_as_line:
            self.bad_lines += 1

    def add_group(self, kind: str, message: str, lines: list[int], count: int) -> None:
        """Record `count` bad lines of one kind at once (found after the scan, e.g. a minority format)."""
        entry = self._entries.get(kind)
        if entry is None:
            entry = self._entries[kind] = _Entry(kind, message)
        entry.lines = sorted(entry.lines + lines)[:KEEP_LINES]
        entry.count += count
        self.bad_lines += count

    def _ordered(self) -> list[_Entry]:
        # Whole-file problems first, then by the first line each kind was seen on: the reading order.
        return sorted(self._entries.values(), key=lambda e: e.lines[0] if e.lines else 0)

    def problems(self) -> list[dict[str, Any]]:
        return [
            {"kind": e.kind, "message": e.message, "lines": list(e.lines), "count": e.count} for e in self._ordered()
        ]

    def summary(self, good_lines: int) -> str:
        """One line: what is wrong and where it starts."""
        parts = []
        for e in self._ordered():
            where = f"line {e.lines[0]}" if e.lines else "whole file"
            times = f" ({e.count} lines, first {where})" if e.count > 1 else f" ({where})"
            parts.append(f"{e.kind}{times}")
        if not self._entries:
            return "no problem"
        first = self._ordered()[0]
        if len(self._entries) == 1 and first.count == 1:
            return first.message
        total = good_lines + self.bad_lines
        head = f"{self.bad_lines} of {total} records bad" if total else "bad file"
        return f"{head}: " + ", ".join(parts)

    def report(self, file: str, good_lines: int, error: str | None = None) -> dict[str, Any]:
        return {
            "file": file,
            "error": error or self.summary(good_lines),
            "problems": self.problems(),
            "good_lines": good_lines,
            "bad_lines": self.bad_lines,
        }


_KINDS = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array", dict: "an object"}


def kind_of(value: Any) -> str:
    """What a JSON value is, in the words of an error message."""
    return "null" if value is None else _KINDS.get(type(value), type(value).__name__)


def listed(names: list[str], most: int = 8) -> str:
    """Names for a message, the first `most` of them, saying how many more there are."""
    shown = ", ".join(names[:most])
    return f"{shown} and {len(names) - most} more" if len(names) > most else shown


def file_report(file: str, kind: str, message: str) -> dict[str, Any]:
    """A report for a problem of the whole file (a symlink, a duplicate), not of its lines."""
    problems = ProblemLog()
    problems.add(kind, message, counts_as_line=False)
    return problems.report(file, 0, error=message)
