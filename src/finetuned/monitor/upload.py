"""Putting an uploaded file into the inbox the way a careful person would.

The body is streamed to a hidden `.part` name (the inbox ignores those), capped in
size, flushed to disk, then linked under its final name in one step: the daemon never
sees half a file, and an existing file is never overwritten. Names are counted in
bytes, as the file system counts them: one too long to be a file name is refused.
"""

from __future__ import annotations

import os
import re
import unicodedata
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from finetuned.config import ConfigError
from finetuned.errors import FinetunedError
from finetuned.fsio import NAME_MAX, fsync_dir, is_disk_full, name_bytes, remove_file
from finetuned.overrides import MAX_SETTINGS_BYTES, check_overrides, is_sidecar, parse_settings
from finetuned.workspace import Workspace

EXTENSIONS = (".jsonl", ".json")
# In UTF-8 bytes: a file name's limit less room for `_N`, the name a second upload of it gets.
MAX_NAME_BYTES = NAME_MAX - 15
_UNSAFE = re.compile(r"[^\w.+()@,=-]+")  # \w is unicode-aware: accented names stay readable


class UploadError(FinetunedError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def safe_name(raw: str) -> str:
    """The base name only, in a harmless alphabet, not hidden, with a .jsonl or .json extension."""
    name = _UNSAFE.sub("_", unicodedata.normalize("NFC", raw.replace("\\", "/").split("/")[-1]))
    ext = next((e for e in EXTENSIONS if name.lower().endswith(e)), None)
    if ext is None:
        raise UploadError(415, f"'{raw[:80]}' is not a .jsonl or .json file")
    stem = name[: -len(ext)].strip("._ ") or "upload"  # a leading dot would hide it from the inbox forever
    name = stem + ext
    if name_bytes(name) > MAX_NAME_BYTES:
        raise UploadError(400, f"the file name is {name_bytes(name)} bytes long in UTF-8; the monitor takes names "
                               f"of up to {MAX_NAME_BYTES} bytes: rename the file, or copy it into the inbox")
    return name


def _final_path(folder: Path, name: str, part: Path) -> Path:
    """Link `part` under `name`, or `stem_2.ext`, `stem_3.ext`...: a link fails rather than overwrite."""
    ext = ".jsonl" if name.endswith(".jsonl") else ".json"
    stem = name[: -len(ext)]
    for n in range(1, 10_000):
        candidate = folder / (name if n == 1 else f"{stem}_{n}{ext}")
        try:
            os.link(part, candidate)
        except FileExistsError:
            continue
        except OSError:  # a file system without hard links: check, then rename (a race we accept there)
            if candidate.exists():
                continue
            os.rename(part, candidate)
        return candidate
    raise UploadError(409, f"too many files named like {name} in {folder.name}/")


PART_PREFIX = ".upload-"


def _too_big(settings: bool, max_bytes: int) -> str:
    if settings:
        return f"a file's settings are a few keys: this is over {max_bytes // 1024} KiB"
    return (f"the file is over the upload limit of {max_bytes / 2**20:.0f} MB (monitor.max_upload_mb); "
            "copy it into the inbox instead")


def clear_parts(folders: list[Path]) -> None:
    """Remove the parts of uploads a dead daemon cut short (only the monitor's own: a user's .part is theirs)."""
    for folder in folders:
        for part in folder.glob(f"{PART_PREFIX}*.part"):
            remove_file(part)


async def receive(chunks: AsyncIterator[bytes], ws: Workspace, folder: Path, raw_name: str,
                  max_bytes: int) -> tuple[Path, int]:
    """Stream `chunks` into `folder`; returns the final path and its size. A file's settings
    (`NAME.jsonl.config.json`) are checked whole before they are kept, as the daemon would check them."""
    name = safe_name(raw_name)
    settings = is_sidecar(name)
    if settings:
        max_bytes = min(max_bytes, MAX_SETTINGS_BYTES)
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / f"{PART_PREFIX}{uuid.uuid4().hex}.part"  # not named after the file: any name's part fits
    size = 0
    try:
        with open(part, "wb") as f:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise UploadError(413, _too_big(settings, max_bytes))
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        if size == 0:
            raise UploadError(400, "the file is empty")
        if settings:
            try:
                check_overrides(parse_settings(part.read_bytes(), name), name, ws)
            except ConfigError as exc:
                raise UploadError(400, str(exc)) from None
        final = _final_path(folder, name, part)
        fsync_dir(folder)
        return final, size
    except OSError as exc:
        if is_disk_full(exc):
            raise UploadError(507, "the disk is full: the file was not kept; free space and try again") from None
        raise
    finally:
        remove_file(part)
