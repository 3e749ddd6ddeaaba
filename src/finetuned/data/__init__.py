"""The data pipeline: validate a dropped file, tokenise it to disk, serve batches to the trainer.

    validate_file(path, settings)                  -> Validation   (ingestion, no tokenizer)
    prepare(path, out_dir, tokenizer, settings, L) -> PrepareSummary (flat arrays on disk)
    JobData.open(out_dir, ...)                     -> step_batches(step), holdout_batches()
    render(record_or_path, tokenizer)              -> the example with trained tokens in [[ ]]
    check_file(path, tokenizer, settings, L)       -> what `finetuned check` reports

See docs/data.md for the formats, the loss policy and the error report.

The names that need torch (JobData, Batch) load on first use, so the daemon
can validate files without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from finetuned.data.chat import Chat, Message, ToolCall
from finetuned.data.check import check_file
from finetuned.data.formats import FORMATS, parse_record
from finetuned.data.preview import encode_record, render, trained_spans
from finetuned.data.report import DataError
from finetuned.data.tokenize import PrepareSummary, is_current, load_meta, prepare, tokenizer_fingerprint
from finetuned.data.validate import Validation, validate_file

if TYPE_CHECKING:
    from finetuned.data.batches import Batch, PreferenceBatch
    from finetuned.data.loader import JobData

_LAZY = {"Batch": "finetuned.data.batches", "PreferenceBatch": "finetuned.data.batches",
         "JobData": "finetuned.data.loader"}

__all__ = [
    "FORMATS",
    "Batch",
    "Chat",
    "DataError",
    "JobData",
    "Message",
    "PreferenceBatch",
    "PrepareSummary",
    "ToolCall",
    "Validation",
    "check_file",
    "encode_record",
    "is_current",
    "load_meta",
    "parse_record",
    "prepare",
    "render",
    "tokenizer_fingerprint",
    "trained_spans",
    "validate_file",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
