"""The data options, read by attribute from a `DataSettings`-like object.

The pipeline takes `config.data` as it is; an option that the object does not
carry (an older config class, a `SimpleNamespace` in a script) gets the
default below, so the defaults live in one place on this side too.
"""

from __future__ import annotations

from typing import Any

DEFAULTS: dict[str, Any] = {
    "train_on_prompt": False,
    "system_prompt": None,
    "holdout_fraction": 0.05,
    "max_holdout": 200,
    "packing": True,
    "overlong": "drop",
    "skip_bad_lines": False,
    # One JSONL line (or one record of a .json array) larger than this is refused
    # without being read whole: memory stays bounded whatever the file holds.
    "max_line_bytes": 64 * 2**20,
}

OVERLONG_POLICIES = ("drop", "truncate")


def option(settings: Any, name: str) -> Any:
    """`settings.name`, or the pipeline's default when settings is None or lacks it."""
    value = getattr(settings, name, DEFAULTS[name]) if settings is not None else DEFAULTS[name]
    if name == "overlong" and value not in OVERLONG_POLICIES:
        raise ValueError(f"data.overlong must be one of {', '.join(OVERLONG_POLICIES)}, got {value!r}")
    return value
