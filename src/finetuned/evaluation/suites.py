"""Suites of cases, read and checked the way data files are: a bad line is named, never skipped in silence.

    {"messages": [...] | "prompt": "...", "expected": "...",
     "scorer": "exact" | "contains" | "regex" | "json" | "choice",
     "choices": [...] (choice), "keys": [...] (json, optional)}

A suite's score is the share of its cases passed (logged as `eval/SUITE`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from finetuned.errors import FinetunedError
from finetuned.fsio import atomic_write_bytes

Scorer = Literal["exact", "contains", "regex", "json", "choice"]
SUFFIX = ".jsonl"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class EvalError(FinetunedError):
    """A suite that cannot be used; the message names the file and line."""


class Case(BaseModel):
    model_config = ConfigDict(extra="allow")

    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    expected: Any = None
    scorer: Scorer = "exact"
    choices: list[str] | None = None
    keys: list[str] | None = None  # json: the keys a good answer's object must have

    @model_validator(mode="after")
    def _complete(self) -> Case:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("a case needs 'messages' or 'prompt' (one of them)")
        if self.messages is not None:
            if not self.messages or not all(isinstance(m, dict) and "role" in m and "content" in m
                                            for m in self.messages):
                raise ValueError("'messages' must be a non-empty list of {role, content}")
            if self.messages[-1]["role"] == "assistant":
                raise ValueError("'messages' must end before the answer (its last turn is not the assistant's)")
        if self.scorer == "choice":
            if not self.choices or len(self.choices) < 2:
                raise ValueError("a 'choice' case needs 'choices' (two or more)")
            if self.expected not in self.choices:
                raise ValueError("a 'choice' case's 'expected' must be one of its 'choices'")
        elif self.scorer == "json":
            if self.expected is not None and not isinstance(self.expected, dict | list | str):
                raise ValueError("a 'json' case's 'expected' is the JSON an answer must equal, or absent")
        elif not isinstance(self.expected, str) or not self.expected:
            raise ValueError(f"a '{self.scorer}' case needs 'expected' (a non-empty string)")
        if self.scorer == "regex":
            try:
                re.compile(self.expected)
            except re.error as exc:
                raise ValueError(f"'expected' is not a regular expression: {exc}") from None
        return self

    def conversation(self) -> list[dict[str, Any]]:
        return self.messages if self.messages is not None else [{"role": "user", "content": self.prompt}]


class Suite(BaseModel):
    name: str
    cases: list[Case] = Field(default_factory=list)


def read_suite(path: Path) -> Suite:
    cases = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalError(f"{path.name}: cannot be read: {exc}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            cases.append(Case.model_validate(json.loads(line)))
        except ValueError as exc:  # JSONDecodeError and ValidationError alike
            raise EvalError(f"{path.name}, line {number}: {_describe(exc)}") from None
    if not cases:
        raise EvalError(f"{path.name}: no cases")
    return Suite(name=path.name.removesuffix(SUFFIX), cases=cases)


def _describe(exc: ValueError) -> str:
    if not isinstance(exc, ValidationError):
        return str(exc)
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"].removeprefix("Value error, ")


def load_suites(folder: Path) -> list[Suite]:
    """Every suite of the folder, by name; a suite that cannot be read raises EvalError naming its line."""
    if not folder.is_dir():
        return []
    return [read_suite(path) for path in sorted(folder.glob(f"*{SUFFIX}")) if not path.name.startswith(".")]


def add_suite(folder: Path, source: Path, name: str | None = None) -> Suite:
    """Check `source` and copy it into the folder as `NAME.jsonl` (atomically); returns the suite."""
    name = name or source.name.removesuffix(SUFFIX).removesuffix(".json")
    if not NAME.match(name):
        raise EvalError(f"'{name}' is not a suite name: letters, digits, '_', '-' and '.', at most 64")
    suite = read_suite(source).model_copy(update={"name": name})
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / f"{name}{SUFFIX}", source.read_bytes())
    return suite
