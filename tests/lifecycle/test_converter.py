"""llama.cpp's converter: fetched with pip at the pinned version, checked by hash, only its Python files kept;
offline, a file put in the cache by hand; every way it cannot be had is one line that says what to do."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest
from lifecycle_helpers import cli

from finetuned.lifecycle import converter
from finetuned.lifecycle.converter import ConverterError


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty per-user cache, for this test and the processes it starts."""
    monkeypatch.setenv("FINETUNED_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pip as on a machine that reaches no index (its configured find-links folders replaced by an empty one)."""
    (tmp_path / "no-links").mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no-links"))


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_fetched_from_pypi_checked_and_only_the_converter_kept(cache, tmp_path, monkeypatch, converter_sdist):
    script = converter.ensure()
    assert script == cache / "llama.cpp" / converter.VERSION / "convert_hf_to_gguf.py"
    kept = _files(script.parent)
    assert {"convert_hf_to_gguf.py", "LICENSE", "SOURCE.json", "conversion/__init__.py", "conversion/llama.py",
            "gguf-py/gguf/__init__.py", "gguf-py/gguf/gguf_writer.py"} <= kept
    assert all(name.split("/")[0] in ("convert_hf_to_gguf.py", "LICENSE", "SOURCE.json", "conversion", "gguf-py")
               for name in kept)
    assert sorted(p.name for p in script.parent.parent.iterdir()) == [converter.VERSION], "no sdist, no leftovers"

    # Offline: the sdist fetched elsewhere (the run's own download), as the error message says, and put in the
    # cache by hand.
    monkeypatch.setenv("FINETUNED_CACHE", str(tmp_path / "second"))
    converter.folder().mkdir(parents=True)
    shutil.copyfile(converter_sdist, converter.folder() / converter.SDIST)
    (tmp_path / "no-links").mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no-links"))
    assert _files(converter.ensure().parent) == kept
    assert not (converter.folder() / converter.SDIST).exists(), "unpacked and checked: removed"


@pytest.mark.e2e
def test_unreachable_index_is_one_line_naming_the_fix(cache, offline, trained, tmp_path):
    with pytest.raises(ConverterError) as caught:
        converter.ensure()
    message = str(caught.value)
    assert message.startswith(f"could not fetch llama.cpp's converter ({converter.PACKAGE} {converter.VERSION}")
    assert f"pip download --no-deps --no-binary :all: {converter.PACKAGE}=={converter.VERSION}" in message
    assert str(converter.folder()) in message and "\n" not in message
    assert converter.ready() is None and list(converter.folder().iterdir()) == [], "nothing half-fetched"

    done = cli("export", "base", str(tmp_path / "out"), "--format", "gguf", "--root", str(trained.root))
    assert done.returncode == 1 and done.stderr.startswith("error: could not fetch llama.cpp's converter")
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".*.tmp"))


def test_a_sdist_with_another_hash_is_refused_and_left_alone(cache, offline):
    fake = io.BytesIO()
    with tarfile.open(fileobj=fake, mode="w:gz") as tar:
        body = b"print('not llama.cpp')\n"
        member = tarfile.TarInfo(f"llama_cpp_python-{converter.VERSION}/vendor/llama.cpp/convert_hf_to_gguf.py")
        member.size = len(body)
        tar.addfile(member, io.BytesIO(body))
    placed = converter.folder() / converter.SDIST
    placed.parent.mkdir(parents=True)
    placed.write_bytes(fake.getvalue())
    with pytest.raises(ConverterError, match=rf"has sha256 \w+\.\.\., not the pinned {converter.SHA256[:16]}"):
        converter.ensure()
    assert placed.read_bytes() == fake.getvalue() and converter.ready() is None


def test_doctor_says_whether_the_converter_is_at_hand(cache, offline, gguf_converter, monkeypatch):
    from finetuned.lifecycle.doctor import OK, check_gguf_converter

    check = check_gguf_converter()
    assert check.level == OK and "not fetched yet" in check.message and "pip download" in check.message
    monkeypatch.setenv("FINETUNED_CACHE", str(gguf_converter.parents[2]))  # the cache it was fetched into
    check = check_gguf_converter()
    assert check.level == OK and check.message.endswith(f"ready in {gguf_converter.parent}")


def test_a_converter_failure_is_told_in_one_line():
    from finetuned.lifecycle.converter import _reason

    traceback = ["INFO:hf-to-gguf:Loading model: x", "Traceback (most recent call last):", '  File "c.py", line 1',
                 "ModuleNotFoundError: No module named 'sentencepiece'"]
    assert _reason(traceback) == "it needs the Python package sentencepiece (pip install sentencepiece)"
    assert _reason(["ERROR:hf-to-gguf:Model OPTForCausalLM is not supported"]) == \
        "Model OPTForCausalLM is not supported"
    assert _reason(["Traceback (most recent call last):", "ValueError: bad shape"]) == "bad shape"
