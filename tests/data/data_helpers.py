"""Helpers shared by the data pipeline tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from finetuned.data.tokenize import MASK, OFFSETS, TOKENS

# Real public data as users hold it (the first records of LLaMA-Factory's demo files; see its README).
DATASETS = Path(__file__).parents[1] / "fixtures" / "datasets"


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
