"""Helpers shared by the data pipeline tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from finetuned.config import DataSettings
from finetuned.data.tokenize import MASK, OFFSETS, TOKENS

SHARED_DATASETS = Path(__file__).parents[2] / ".." / "shared" / "datasets"


class Settings(DataSettings):
    """DataSettings plus the data options this package reads (to be added to config.py itself)."""

    packing: bool = True
    overlong: Literal["drop", "truncate"] = "drop"
    skip_bad_lines: bool = False
    max_holdout: int = 200
    max_line_bytes: int = 64 * 2**20


def write_jsonl(path: Path, records: Iterable[Any]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def read_prepared(out_dir: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every prepared example as (token ids, loss mask), read straight from the arrays on disk."""
    tokens = np.fromfile(out_dir / TOKENS, dtype=np.uint32)
    mask = np.fromfile(out_dir / MASK, dtype=np.uint8)
    offsets = np.load(out_dir / OFFSETS)
    return [(tokens[a:b].astype(np.int64), mask[a:b]) for a, b in itertools.pairwise(offsets)]


def chat(*turns: tuple[str, str]) -> dict[str, Any]:
    return {"messages": [{"role": role, "content": content} for role, content in turns]}
