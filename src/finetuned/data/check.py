"""`finetuned check`: a file validated, tokenised and rendered exactly as training would, with no daemon.

The report (SPEC section 8) says what the file is, what its job would keep and
drop and why, what is worth a warning, and shows a few examples with the text
that carries loss picked out. It runs the same `validate_file` and `prepare` a
job runs (the arrays go to a temporary folder), so what it says is what happens.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from finetuned.config import DataSettings
from finetuned.data.examples import PREFERENCE, SFT, UNPAIRED, form_of
from finetuned.data.formats import parse_record
from finetuned.data.preferences import Labelled
from finetuned.data.preview import encode_example, marked, trained_spans
from finetuned.data.reader import FileReader
from finetuned.data.report import DataError, RecordProblem
from finetuned.data.tokenize import prepare
from finetuned.data.validate import validate_file


def objective_of(fmt: str | None, pair_objective: str) -> str | None:
    """What a file of this format trains with: pairs take `preference.objective`, labelled answers KTO."""
    form = form_of(fmt) if fmt else None
    return {SFT: "sft", PREFERENCE: pair_objective, UNPAIRED: "kto", None: None}[form]


def check_file(path: Path, tokenizer: Any, settings: DataSettings, max_seq_len: int, show: int = 2,
               pair_objective: str = "dpo") -> dict[str, Any]:
    """The report of SPEC section 8's `finetuned check --json`, plus `ok` (whether the file would train)."""
    path = Path(path)
    validation = validate_file(path, settings)
    report: dict[str, Any] = {
        "file": path.name, "format": validation.format, "objective": objective_of(validation.format, pair_objective),
        "records": validation.records, "kept": 0, "dropped": {}, "problems": [], "warnings": [], "shown": [],
        "ok": False,
    }
    if not validation.ok:
        error = validation.error or {"error": "the file cannot be read", "problems": []}
        report.update(error=error["error"], problems=error["problems"])
        return report
    skipped = validation.warnings["problems"] if validation.warnings else []
    try:
        with tempfile.TemporaryDirectory(prefix="finetuned-check-") as tmp:
            summary = prepare(path, Path(tmp) / "out", tokenizer, settings, max_seq_len, validation=validation)
    except DataError as exc:
        report.update(error=str(exc), problems=exc.report.get("problems", []), warnings=skipped)
        return report
    dropped = {"bad_line": summary.skipped_lines, "overlong": summary.dropped_overlong,
               "no_trained_token": summary.dropped_no_loss}
    report.update(
        ok=True, kept=summary.examples, dropped={k: n for k, n in dropped.items() if n},
        truncated=summary.truncated, tokens=summary.tokens, trained_tokens=summary.loss_tokens,
        longest=summary.longest_seen, warnings=[*skipped, *summary.notes],
        shown=shown(path, tokenizer, settings, max_seq_len, show),
    )
    return report


def shown(path: Path, tokenizer: Any, settings: DataSettings, max_seq_len: int, n: int) -> list[dict[str, Any]]:
    """The first `n` good records as training sees them: the rendered text and its trained pieces, in order."""
    out: list[dict[str, Any]] = []
    if n <= 0:
        return out
    for item in FileReader(path, max_line_bytes=settings.max_line_bytes, skip_long_lines=True):
        if item.problem is not None:
            continue
        try:
            fmt, payload = parse_record(item.value)
            sequences = encode_example(item.value, tokenizer, settings)
        except RecordProblem:
            continue
        entries = [_shown(ids, mask, tokenizer, max_seq_len, settings) for ids, mask in sequences]
        entry = {"line": item.line, "format": fmt, **entries[0]}
        if len(entries) > 1:
            entry["rejected"] = entries[1]  # a pair: the first sequence is prompt + chosen
        if isinstance(payload, Labelled):
            entry["label"] = payload.desirable
        out.append(entry)
        if len(out) >= n:
            break
    return out


def _shown(ids: Any, mask: Any, tokenizer: Any, max_seq_len: int, settings: DataSettings) -> dict[str, Any]:
    if len(ids) > max_seq_len and settings.overlong == "truncate":
        ids, mask = ids[:max_seq_len], mask[:max_seq_len]
    return {"rendered": tokenizer.decode(ids.tolist()), "trained": trained_spans(ids, mask, tokenizer),
            "marked": marked(ids, mask, tokenizer), "tokens": len(ids)}
