"""The one way finetuned writes a wall-clock time into a record: local time, to the second, sortable."""

from __future__ import annotations

from datetime import datetime


def now_text() -> str:
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S")
