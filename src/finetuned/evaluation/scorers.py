"""Whether one answer passes its case. Generated answers are compared stripped of surrounding whitespace."""

from __future__ import annotations

import json
import re
from typing import Any

from finetuned.evaluation.suites import Case


def passes(case: Case, answer: str) -> bool:
    """exact, contains, regex and json; `choice` is scored by likelihood (runner.py), never here."""
    answer = answer.strip()
    if case.scorer == "exact":
        return answer == case.expected.strip()
    if case.scorer == "contains":
        return case.expected in answer
    if case.scorer == "regex":
        return re.search(case.expected, answer) is not None
    if case.scorer == "json":
        return _json_passes(case, answer)
    raise ValueError(f"{case.scorer} is scored by likelihood, not by its answer")


def _json_passes(case: Case, answer: str) -> bool:
    value = _json_in(answer)
    if value is _NOTHING:
        return False
    if case.keys and not (isinstance(value, dict) and all(key in value for key in case.keys)):
        return False
    if case.expected is None:
        return True
    expected = json.loads(case.expected) if isinstance(case.expected, str) else case.expected
    return value == expected


_NOTHING = object()


def _json_in(answer: str) -> Any:
    """The answer as JSON, or its first fenced code block's (models like to wrap it in ```json)."""
    fenced = re.search(r"```(?:json)?\s*\n(.*?)```", answer, re.DOTALL)
    for text in (answer, fenced.group(1) if fenced else None):
        if text is None:
            continue
        try:
            return json.loads(text)
        except ValueError:
            continue
    return _NOTHING
