"""File primitives: names that fit the file system in bytes, writes that are whole or absent."""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import stat

import pytest
from helpers import fill

from finetuned.fsio import (
    NAME_MAX,
    NotARegularFile,
    atomic_write_json,
    fit_name,
    is_disk_full,
    name_bytes,
    open_regular,
    read_json,
    temp_path,
    unique_path,
)

LONG = [
    "a" * 234 + ".jsonl",
    "漢" * 78 + ".jsonl",  # 240 bytes in 78 + 6 characters: a character limit never sees it coming
    "données " * 40 + ".json",
    "x" * 300,  # no extension at all
    "a.b." + "é" * 200 + ".jsonl",
]


@pytest.mark.parametrize("name", LONG)
@pytest.mark.parametrize("limit", [NAME_MAX, 200, 64])
def test_a_long_name_is_shortened_within_the_limit_in_bytes(name: str, limit: int):
    fitted = fit_name(name, limit)
    assert name_bytes(fitted) <= limit
    assert fitted.encode("utf-8").decode("utf-8") == fitted, "never half a character"
    if "." in name[-6:]:
        assert fitted.endswith(name[name.rfind("."):]), "the extension says what kind of file it is"
    assert fitted.startswith(name[:8]), "a person still recognises it"


def test_short_names_are_kept_and_long_ones_stay_apart():
    assert fit_name("data.jsonl") == "data.jsonl"
    a, b = "q" * 300 + "1.jsonl", "q" * 300 + "2.jsonl"
    assert fit_name(a) != fit_name(b), "the hash of the whole name keeps names that share a start apart"
    assert fit_name(a) == fit_name(a)


def test_every_name_built_from_a_long_one_can_be_created(tmp_path):
    name = "漢" * 84 + ".jsonl"  # 258 bytes: could not even exist; what is built from it must
    room = NAME_MAX - len(".error.json")  # a data file leaves room for its report
    path = tmp_path / fit_name(name, room)
    path.write_text("{}\n")
    taken = unique_path(tmp_path, name, "20251116_014530_12", room)
    taken.write_text("{}\n")
    again = unique_path(tmp_path, name, "20251116_014530_12", room)
    again.write_text("{}\n")
    assert len({path, taken, again}) == 3
    report = path.with_name(path.name + ".error.json")
    atomic_write_json(report, {"error": "x"})  # its temporary is longer still
    assert read_json(report) == {"error": "x"}
    assert name_bytes(temp_path(report).name) <= NAME_MAX


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    """control/queue.json made a folder: the write fails, and leaves nothing behind."""
    target = tmp_path / "queue.json"
    target.mkdir()
    with pytest.raises(IsADirectoryError):
        atomic_write_json(target, {"queue": []})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["queue.json"]


def test_a_private_file_is_never_readable_by_others_even_for_a_moment(tmp_path):
    path = tmp_path / "config.json"
    atomic_write_json(path, {"monitor": {"token": "x" * 16}}, mode=0o600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    old = os.umask(0)
    try:
        atomic_write_json(path, {"monitor": {"token": "y" * 16}}, mode=0o600)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_name_that_is_not_utf8_is_still_written_as_json(tmp_path):
    odd = os.fsdecode(b"caf\xe9.jsonl")  # Latin-1 bytes, as an old archive leaves them
    atomic_write_json(tmp_path / "record.json", {"src": str(tmp_path / odd)})
    assert read_json(tmp_path / "record.json")["src"].endswith(odd), "read back as the same name"
    json.loads((tmp_path / "record.json").read_bytes().decode("utf-8"))  # and the file is plain UTF-8


def test_a_full_disk_is_recognised_whatever_library_says_it(small_disk, tiny_model_dir):
    """safetensors and tokenizers raise a plain Exception with the OS's words: still a full disk, never a crash."""
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer

    fill(small_disk / "filler")
    raised = []
    for write in (lambda: save_file({"w": torch.zeros(4096, 1024)}, str(small_disk / "adapter.safetensors")),
                  lambda: Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json")).save(
                      str(small_disk / "tokenizer.json"))):
        with pytest.raises(Exception) as caught:
            write()
        raised.append(caught.value)
    assert not any(isinstance(exc, OSError) for exc in raised), "the libraries' own exceptions, not OSError"
    assert all(is_disk_full(exc) for exc in raised), [str(exc) for exc in raised]


def test_a_full_disk_is_found_in_the_chain_of_causes_and_nothing_else_is_taken_for_one():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("publishing the adapter failed") from inner
    except RuntimeError as outer:
        assert is_disk_full(outer)
    assert is_disk_full(Exception("Error while serializing: IoError(Os { code: 28, kind: StorageFull })"))
    assert not is_disk_full(RuntimeError("CUDA out of memory"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))


def test_open_regular_reads_files_and_refuses_anything_else_without_blocking(tmp_path, monkeypatch):
    (tmp_path / "data.jsonl").write_bytes(b"x\n")
    with open_regular(tmp_path / "data.jsonl") as f:
        assert f.read() == b"x\n"
    os.mkfifo(tmp_path / "pipe.jsonl")  # no writer: a plain open() would wait forever
    (tmp_path / "folder.jsonl").mkdir()
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "data.jsonl")
    monkeypatch.chdir(tmp_path)  # a socket's path must fit 108 bytes
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("socket.jsonl")
        for name, kind in (("pipe.jsonl", "a named pipe (FIFO)"), ("folder.jsonl", "a folder"),
                           ("socket.jsonl", "a socket")):
            with pytest.raises(NotARegularFile, match=rf"^{re.escape(kind)}, not a regular file$"):
                open_regular(tmp_path / name)
    with open_regular(tmp_path / "link.jsonl") as f:
        assert f.read() == b"x\n"
    with pytest.raises(NotARegularFile, match="a symlink"):
        open_regular(tmp_path / "link.jsonl", follow=False)
