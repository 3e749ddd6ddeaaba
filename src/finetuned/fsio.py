"""Crash-safe file primitives: every state file goes through here.

A reader must never see half a file, even after SIGKILL or a power cut, so
writes go to a temporary name in the same folder, are flushed and fsynced,
then renamed over the target; the folder is fsynced so the rename itself is
durable.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Any, BinaryIO

# fsync makes a write survive a power cut. Only a test about logic, not durability, turns it off.
DURABLE = True
# Bytes in one file name on the file systems Linux users keep data on (ext4, xfs, btrfs, tmpfs):
# a name built from a user's name (a prefix, a suffix, a temporary) must fit it, counted in bytes.
NAME_MAX = 255
_HASH_CHARS = 12
_MAX_EXTENSION = 16


def name_bytes(name: str) -> int:
    """The length of a file name as the file system counts it (UTF-8 bytes; undecodable bytes as they were)."""
    return len(os.fsencode(name))


def text_name(name: str) -> str:
    """A name fit to show and to write into JSON: bytes that are not UTF-8 become U+FFFD."""
    return os.fsencode(name).decode("utf-8", "replace")


def _cut(text: str, limit: int) -> str:
    """The longest start of `text` within `limit` bytes, never half a character."""
    out, used = [], 0
    for char in text:
        size = name_bytes(char)
        if used + size > limit:
            break
        out.append(char)
        used += size
    return "".join(out)


def fit_name(name: str, limit: int = NAME_MAX) -> str:
    """`name` when it fits in `limit` bytes; else its start, `~`, a hash of the whole name, and its extension.

    The hash keeps two long names that share a start apart; the extension keeps the file's kind.
    """
    if name_bytes(name) <= limit:
        return name
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:_HASH_CHARS]
    dot = name.rfind(".")
    ext = name[dot:] if dot > 0 and name_bytes(name[dot:]) <= _MAX_EXTENSION else ""
    head = _cut(name[: len(name) - len(ext)], limit - name_bytes(ext) - 1 - len(digest))
    return f"{head}~{digest}{ext}"


def temp_path(path: Path, tag: str = "tmp") -> Path:
    """A hidden temporary beside `path`, `.NAME.PID.TAG`, shortened to fit when NAME is long."""
    suffix = f".{os.getpid()}.{tag}"
    return path.with_name(fit_name(f".{path.name}", NAME_MAX - len(suffix)) + suffix)


# How the Rust libraries (safetensors, tokenizers) say it: they raise a plain Exception carrying the OS's words.
_FULL_WORDS = re.compile(rf"No space left on device|Disk quota exceeded|StorageFull|QuotaExceeded"
                         rf"|os error ({errno.ENOSPC}|{errno.EDQUOT})\b")


def is_disk_full(exc: BaseException) -> bool:
    """The file system (or the user's quota) has no room left: wait for space, never fail the work.

    Whatever library raised it: an OSError with ENOSPC or EDQUOT, or an error that carries only the OS's
    words, anywhere in the chain of causes."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if _FULL_WORDS.search(str(current)):
            return True
        current = current.__cause__ or current.__context__
    return False


def fsync_dir(path: Path) -> None:
    if not DURABLE:
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, mode: int | None = None) -> None:
    """Replace `path` with `data` in one step; `mode` (e.g. 0o600) is set before any byte is written.

    A write that fails (a full disk, a folder where the file should be) leaves the old file
    and no temporary behind.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 if mode is None else mode)
        with open(fd, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)  # a temporary left by a dead writer kept its own mode
            f.write(data)
            f.flush()
            if DURABLE:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def json_bytes(obj: Any) -> bytes:
    text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    try:
        return text.encode()
    except UnicodeEncodeError:  # a file name that is not UTF-8 (kept as surrogates): escaped, still valid JSON
        return (json.dumps(obj, indent=2) + "\n").encode()


def atomic_write_json(path: Path, obj: Any, mode: int | None = None) -> None:
    atomic_write_bytes(path, json_bytes(obj), mode)


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def kind_of(mode: int) -> str:
    """What a folder entry is, in words: what someone put where a file was expected."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISLNK(mode):
        return "a symlink"
    return "a file"


class NotARegularFile(OSError):
    """A FIFO, socket, device or folder where a file was expected."""


def open_regular(path: Path, follow: bool = True) -> BinaryIO:
    """`path` open for reading, only if it is a regular file (`follow=False`: not through a symlink either).

    Others may put anything under a name in the inbox: opening a FIFO with no writer would wait
    forever, a device may act on being opened, a socket cannot be. So what the name is is looked at
    first, and opened only if it is a file; O_NONBLOCK makes open() return at once whatever is there
    by then, and fstat sees what was opened: a name swapped after the look cannot slip past it.
    """
    mode = (os.stat if follow else os.lstat)(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotARegularFile(f"{kind_of(mode)}, not a regular file")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFile(f"{kind_of(mode)}, not a regular file")
        os.set_blocking(fd, True)
        return open(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def durable_rename(src: Path, dst: Path) -> None:
    """Rename within one file system and make both folders' entries durable."""
    os.replace(src, dst)
    fsync_dir(Path(dst).parent)
    if Path(src).parent != Path(dst).parent:
        fsync_dir(Path(src).parent)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under root (a checkpoint before its final rename)."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def publish_dir(tmp: Path, final: Path) -> None:
    """Make a fully written folder appear under its final name in one step."""
    fsync_tree(tmp)
    os.rename(tmp, final)
    fsync_dir(final.parent)


def remove_file(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def unique_path(folder: Path, name: str, tag: str, limit: int = NAME_MAX) -> Path:
    """`folder/name`, or `folder/stem.TAG.ext` when that name is taken, never overwriting; within `limit` bytes."""
    candidate = folder / fit_name(name, limit)
    if not candidate.exists() and not candidate.is_symlink():
        return candidate
    stem, dot, ext = candidate.name.partition(".")
    n = 1
    while True:
        suffix = tag if n == 1 else f"{tag}-{n}"
        candidate = folder / fit_name(f"{stem}.{suffix}{dot}{ext}", limit)
        if not candidate.exists() and not candidate.is_symlink():
            return candidate
        n += 1
