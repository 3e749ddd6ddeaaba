"""Check a dropped file before it is queued: pure Python, no tokenizer, one streaming pass.

The daemon calls `validate_file` at ingestion; a file that fails goes to
`data/failed/` with `Validation.error` written beside it as NAME.error.json.
"""

from __future__ import annotations

import logging
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetuned.config import DataSettings
from finetuned.data.formats import parse_record
from finetuned.data.reader import FileReader
from finetuned.data.report import KEEP_LINES, ProblemLog, RecordProblem

log = logging.getLogger(__name__)


@dataclass
class Validation:
    """What ingestion needs to know about a file.

    `examples` counts the good records (those of the file's format). `sha256` is
    None only when reading stopped early on a fatal fault (the file is refused).
    With skip_bad_lines a file with bad lines is still `ok`, and `warnings`
    reports the lines that will be left out, in the same shape as `error`.
    """

    ok: bool
    format: str | None
    examples: int
    sha256: str | None
    error: dict[str, Any] | None = None
    warnings: dict[str, Any] | None = None


@dataclass
class _Seen:
    count: int = 0
    lines: list[int] = field(default_factory=list)


def validate_file(path: Path, settings: DataSettings | None = None) -> Validation:
    """Check one file; never raises for what the file holds or for I/O errors reading it."""
    path = Path(path)
    settings = settings or DataSettings()
    skip = settings.skip_bad_lines
    reader = FileReader(path, max_line_bytes=settings.max_line_bytes, skip_long_lines=skip)
    problems = ProblemLog()
    seen: dict[str, _Seen] = {}
    try:
        # A FIFO or device would block open() or never end: only regular files are read.
        if not stat.S_ISREG(path.stat().st_mode):
            raise RecordProblem("not_a_file", "not a regular file")
        fatal = _scan(reader, problems, seen)
    except RecordProblem as problem:
        problems.add(problem.kind, problem.message, None, counts_as_line=False)
        fatal = True
    except OSError as exc:
        problems.add("unreadable", f"cannot read the file: {exc.strerror or exc}", None, counts_as_line=False)
        fatal = True

    fmt = _majority(seen, problems)
    examples = seen[fmt].count if fmt else 0
    if not fatal and not problems and not examples:
        fatal = True
        if reader.size == 0:
            problems.add("empty_file", "the file is empty", None, counts_as_line=False)
        elif reader.array:
            problems.add("no_records", "the JSON array is empty", None, counts_as_line=False)
        else:
            problems.add(
                "blank_file",
                f"the file has only blank lines ({reader.blank_lines})",
                None,
                counts_as_line=False,
            )

    report = problems.report(path.name, examples) if problems else None
    ok = not fatal and examples > 0 and (skip or not problems)
    if ok:
        log.info(
            "%s: %d %s records%s",
            path.name,
            examples,
            fmt,
            f", {problems.bad_lines} bad lines skipped" if problems else "",
        )
        return Validation(True, fmt, examples, reader.sha256, warnings=report)
    if report is not None and reader.looks_like_array and not reader.array:
        report["error"] = (
            "the file holds a JSON array, not JSON Lines (one object per line); only a .json file may "
            "hold an array: " + report["error"]
        )
    elif report is not None and examples == 0 and skip and not fatal:
        report["error"] = "no good record: " + report["error"]
    log.info("%s refused: %s", path.name, report["error"] if report else "?")
    return Validation(False, fmt, examples, reader.sha256, error=report)


def _scan(reader: FileReader, problems: ProblemLog, seen: dict[str, _Seen]) -> bool:
    """Read every record into `problems` and `seen` (format -> count, first lines); True if fatal."""
    fatal = False
    for item in reader:
        if item.problem is not None:
            problems.add(item.problem.kind, item.problem.message, item.line, counts_as_line=not item.fatal)
            fatal = fatal or item.fatal
            continue
        try:
            fmt, _payload = parse_record(item.value)
        except RecordProblem as problem:
            problems.add(problem.kind, f"line {item.line}: {problem.message}", item.line)
            continue
        entry = seen.setdefault(fmt, _Seen())
        entry.count += 1
        if len(entry.lines) < KEEP_LINES:
            entry.lines.append(item.line)
    return fatal


def _majority(seen: dict[str, _Seen], problems: ProblemLog) -> str | None:
    """The file's format: the one most records have. The others are reported as bad lines."""
    if not seen:
        return None
    fmt = max(seen, key=lambda name: seen[name].count)  # ties: the format seen first
    for other, entry in seen.items():
        if other != fmt:
            problems.add_group(
                "mixed_formats",
                f"{entry.count} record(s) are {other} but the file is {fmt} (first at line "
                f"{seen[fmt].lines[0]}); a file holds one format",
                entry.lines,
                entry.count,
            )
    return fmt
