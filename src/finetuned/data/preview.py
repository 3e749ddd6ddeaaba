"""Show one example the way training sees it, trained tokens marked.

    >>> print(render({"messages": [...]}, tokenizer))
    <|im_start|>user
    Hi<|im_end|>
    <|im_start|>assistant
    [[Hello!<|im_end|>]]

Masks are easy to get subtly wrong and invisible in a loss curve: this view
(after nanochat's `visualize_tokenization`) makes them checkable by eye.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np

from finetuned.config import DataSettings
from finetuned.data.examples import SFT, Renderer, form_of
from finetuned.data.formats import parse_record
from finetuned.data.masking import ChatRenderer, token_mask
from finetuned.data.preferences import Labelled
from finetuned.data.reader import FileReader
from finetuned.data.report import RecordProblem
from finetuned.data.tokenize import _backend

OPEN, CLOSE = "[[", "]]"


def encode_record(record: Any, tokenizer: Any, settings: DataSettings | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, loss mask) of one record, exactly as `prepare` builds them (before overlong handling);
    for preference data, of its first sequence (prompt + chosen, or prompt + the judged answer)."""
    return encode_example(record, tokenizer, settings)[0]


def encode_example(record: Any, tokenizer: Any, settings: DataSettings | None = None,
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(token ids, loss mask) of each sequence of one record, as `prepare` builds them: one, or two for a pair
    (chosen, rejected). An unpaired answer's second sequence pairs it with another record: not shown here."""
    settings = settings or DataSettings()
    fmt, payload = parse_record(record)
    renderer = ChatRenderer(tokenizer, train_on_prompt=settings.train_on_prompt and form_of(fmt) == SFT)
    render = Renderer(renderer, settings.system_prompt)
    example = render.labelled(payload, ()) if isinstance(payload, Labelled) else render.example(payload)
    sequences = example.sequences[:1] if isinstance(payload, Labelled) else example.sequences
    out = []
    for text, spans in sequences:
        encoding = _backend(tokenizer).encode(text, add_special_tokens=False)
        mask = token_mask(encoding, spans)
        mask[0] = 0
        out.append((np.asarray(encoding.ids, dtype=np.int64), mask))
    return out


def trained_spans(ids: Any, mask: Any, tokenizer: Any) -> list[str]:
    """The decoded text of each run of consecutive trained tokens."""
    return [tokenizer.decode(list(ids[a:b])) for a, b in _runs(mask) if mask[a]]


def render(path_or_record: Path | str | dict[str, Any], tokenizer: Any, settings: DataSettings | None = None) -> str:
    """One example as text with trained tokens inside [[ ]]; a path shows the file's first good record."""
    record = path_or_record if isinstance(path_or_record, dict) else _first_record(Path(path_or_record))
    ids, mask = encode_record(record, tokenizer, settings)
    return marked(ids, mask, tokenizer)


def marked(ids: Any, mask: Any, tokenizer: Any) -> str:
    """The decoded example with each run of trained tokens inside [[ ]]."""
    parts = []
    for a, b in _runs(mask):
        text = tokenizer.decode(ids[a:b].tolist())
        parts.append(f"{OPEN}{text}{CLOSE}" if mask[a] else text)
    return "".join(parts)


def _runs(mask: Any) -> list[tuple[int, int]]:
    mask = np.asarray(mask)
    edges = np.flatnonzero(np.diff(mask.astype(np.int8))) + 1
    bounds = [0, *edges.tolist(), len(mask)]
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def _first_record(path: Path) -> dict[str, Any]:
    for item in FileReader(path, max_line_bytes=DataSettings().max_line_bytes):
        if item.problem is None:
            try:
                parse_record(item.value)
            except RecordProblem:
                continue
            return item.value
    raise ValueError(f"{path} holds no usable record")
