"""Check a dropped file before it is queued: pure Python, no tokenizer, one streaming pass.

The daemon calls `validate_file` at ingestion; a file that fails goes to
`data/failed/` with `Validation.error` written beside it as NAME.error.json.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetuned.config import DataSettings
from finetuned.data.formats import Notes, parse_record
from finetuned.data.reader import FileReader, count_array, to_jsonl
from finetuned.data.report import KEEP_LINES, ProblemLog, RecordProblem, listed
from finetuned.fsio import NotARegularFile

log = logging.getLogger(__name__)

_DELIMITED = {".csv": "CSV", ".tsv": "TSV"}


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
    notes: list[dict[str, Any]] = field(default_factory=list)  # what trains differently than it may seem
    records: int = 0  # every record read, good and bad


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
    notes = Notes()
    try:
        fatal = _scan(reader, problems, seen, notes)
    except RecordProblem as problem:
        problems.add(problem.kind, problem.message, None, counts_as_line=False)
        fatal = True
    except NotARegularFile as exc:  # a FIFO would block open(), a device never end: the reader refused it
        problems.add("not_a_file", str(exc), None, counts_as_line=False)
        fatal = True
    except RecursionError:  # json recurses once per level: thousands of brackets are no record, and no crash
        problems.add("invalid_json", "a record is nested too deeply to read (JSON nested about 1000 levels or more)",
                     None, counts_as_line=False)
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
    records = examples + problems.bad_lines
    if ok:
        log.info(
            "%s: %d %s records%s",
            path.name,
            examples,
            fmt,
            f", {problems.bad_lines} bad lines skipped" if problems else "",
        )
        return Validation(True, fmt, examples, reader.sha256, warnings=report, notes=_notes(notes, fmt),
                          records=records)
    # A JSON array read as lines counts lines, not records: count the array's elements instead.
    array_records = count_array(path, settings.max_line_bytes) if reader.looks_like_array and not reader.array else None
    records = records if array_records is None else array_records
    if report is not None:
        report["error"] = _explain(path, reader, report["error"], examples == 0 and skip and not fatal, array_records)
    log.info("%s refused: %s", path.name, report["error"] if report else "?")
    return Validation(False, fmt, examples, reader.sha256, error=report, records=records)


def _explain(path: Path, reader: FileReader, error: str, nothing_good: bool, array_records: int | None) -> str:
    """The refusal in the words that fit what the file really is."""
    if array_records is not None:
        return (f"the file holds a JSON array of {array_records} records, not JSON Lines (one object per line); "
                f"only a .json file may hold an array: rename it {path.stem}.json, or write one record per line")
    if reader.looks_like_array and not reader.array:
        return ("the file holds a JSON array, not JSON Lines (one object per line); only a .json file may "
                "hold an array: " + error)
    if reader.object and reader.wrapper:
        key, count = reader.wrapper
        return (f"the file holds one JSON object whose '{key}' holds {count} records: save that array itself as "
                "the .json file, or one record per line as .jsonl")
    if path.suffix.lower() in _DELIMITED and not reader.looked_like_json:
        return (f"{path.name} is {_DELIMITED[path.suffix.lower()]}, a table: finetuned reads JSON Lines, one JSON "
                f"object per line; convert it with pandas: pd.read_csv({path.name!r}"
                f"{', sep=' + repr(chr(9)) if path.suffix.lower() == '.tsv' else ''}).{to_jsonl(path)}")
    if path.suffix.lower() in (".txt", ".text", ".md") and not reader.looked_like_json:
        return (f"{path.name} is plain text: finetuned reads JSON Lines, one JSON object per line; wrap each line "
                "as {\"text\": \"...\"} (e.g. jq -R '{text: .}' " + f"{path.name} > {path.stem}.jsonl)")
    return "no good record: " + error if nothing_good else error


def _notes(notes: Notes, fmt: str | None) -> list[dict[str, Any]]:
    out = ProblemLog()
    if notes.placeholders:
        found = ", ".join(sorted(notes.placeholders)[:5])
        out.add("placeholders", f"the data holds template placeholders ({found}) that nothing fills in: trained as "
                "they are, the model learns them literally; replace them before training (LLaMA-Factory's "
                "identity data expects this)", counts_as_line=False)
    if notes.unused_keys:
        keys = listed(sorted(notes.unused_keys))
        out.add("unused_keys", f"keys not used for training ({fmt} records): {keys}", counts_as_line=False)
    return out.problems()


def _scan(reader: FileReader, problems: ProblemLog, seen: dict[str, _Seen], notes: Notes) -> bool:
    """Read every record into `problems` and `seen` (format -> count, first lines); True if fatal."""
    fatal = False
    for item in reader:
        if item.problem is not None:
            problems.add(item.problem.kind, item.problem.message, item.line, counts_as_line=not item.fatal)
            fatal = fatal or item.fatal
            continue
        try:
            fmt, _payload = parse_record(item.value, notes)
        except RecordProblem as problem:
            if reader.object and problem.kind == "unknown_schema" and (wrapped := _wrapped_records(item.value)):
                reader.wrapper = wrapped
                problems.add("wrapped_records", f"the records are inside '{wrapped[0]}'", None, counts_as_line=False)
                return True
            problems.add(problem.kind, f"line {item.line}: {problem.message}", item.line)
            continue
        entry = seen.setdefault(fmt, _Seen())
        entry.count += 1
        if len(entry.lines) < KEEP_LINES:
            entry.lines.append(item.line)
    return fatal


def _wrapped_records(value: Any) -> tuple[str, int] | None:
    """{"data": [records...]}: the key holding the records, and how many."""
    if not isinstance(value, dict) or len(value) != 1:
        return None
    ((key, inner),) = value.items()
    if isinstance(inner, list) and inner and all(isinstance(r, dict) for r in inner):
        return key, len(inner)
    return None


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
