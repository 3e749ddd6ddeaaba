"""llama.cpp's own GGUF converter, `convert_hf_to_gguf.py`, fetched once at a pinned version and checked by hash.

finetuned writes no converter: it runs llama.cpp's, taken from the llama-cpp-python
sdist on PyPI, which vendors llama.cpp. The sdist is fetched with pip (so pip's own
configuration applies: index, mirror, proxy), its sha256 checked against the pin, and
only the converter's Python files are kept in the user's cache (`folder()`): the script,
its `conversion/` package, its own gguf-py (the script puts it ahead of the installed
gguf: the two are released together, and differ from the gguf on PyPI) and llama.cpp's
LICENSE. Offline, the sdist file put in `folder()` by hand is used the same way.

The converter runs as a subprocess of this Python. It imports torch, numpy, safetensors
and transformers (finetuned's own dependencies), and sentencepiece for every Llama-family
model, even one without a tokenizer.model (a dependency of finetuned for that reason);
mistral-common only for Mistral's own checkpoint format, which finetuned never writes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections import deque
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from finetuned.fsio import publish_dir, sha256_file
from finetuned.lifecycle.errors import LifecycleError
from finetuned.models.builtin import cache_home

PACKAGE = "llama-cpp-python"
VERSION = "0.3.36"
SDIST = f"llama_cpp_python-{VERSION}.tar.gz"
SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SCRIPT = "convert_hf_to_gguf.py"
OUT_TYPES = ("f16", "q8_0")
SOURCE_RECORD = "SOURCE.json"

_VENDORED = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
_KEEP = (SCRIPT, "LICENSE", "conversion/", "gguf-py/gguf/")
_TENSOR_LINE = re.compile(r"^INFO:hf-to-gguf:([\w.]+),\s.*-->")
_ERROR_LINE = re.compile(r"^(?:ERROR:[\w.-]+:|[\w.]*(?:Error|Exception): )(.+)$")
_MISSING_MODULE = re.compile(r"No module named '([\w.]+)'")


class ConverterError(LifecycleError):
    """llama.cpp's converter could not be obtained, or could not convert the model."""


def folder() -> Path:
    """Where the sdist is fetched to (or put by hand) and the converter kept."""
    return cache_home() / "llama.cpp"


def converter_dir() -> Path:
    return folder() / VERSION


def ready() -> Path | None:
    """The converter script if it is already in the cache."""
    script = converter_dir() / SCRIPT
    return script if script.is_file() else None


def fetch_hint() -> str:
    return (f"on a machine that reaches PyPI: pip download --no-deps --no-binary :all: {PACKAGE}=={VERSION} -d DIR, "
            f"then copy DIR/{SDIST} into {folder()}/ and export again")


def _last_error(lines: list[str]) -> str:
    for line in reversed(lines):
        if line.startswith("ERROR:") or "Error" in line:
            return line.removeprefix("ERROR: ").strip()
    return next((line.strip() for line in reversed(lines) if line.strip()), "no output")


def _download(into: Path) -> Path:
    """The pinned sdist, fetched by pip into `into`."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "--progress-bar", "off", f"{PACKAGE}=={VERSION}", "-d", str(into)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConverterError(f"could not fetch llama.cpp's converter ({PACKAGE} {VERSION}): {exc}; "
                             f"{fetch_hint()}") from None
    found = into / SDIST
    if done.returncode != 0 or not found.is_file():
        why = _last_error((done.stderr + done.stdout).splitlines())
        raise ConverterError(f"could not fetch llama.cpp's converter ({PACKAGE} {VERSION} from PyPI): {why}; "
                             f"{fetch_hint()}")
    return found


def _verify(sdist: Path, placed: bool) -> None:
    found = sha256_file(sdist)
    if found == SHA256:
        return
    what = f"sha256 {found[:16]}..., not the pinned {SHA256[:16]}... of {PACKAGE} {VERSION}"
    if placed:
        raise ConverterError(f"{sdist} has {what}: delete it and export again to fetch it anew, or {fetch_hint()}")
    raise ConverterError(f"the {SDIST} pip fetched has {what}; nothing was kept (is pip's index a mirror that "
                         "changed the file?)")


def _extract(sdist: Path, out: Path) -> None:
    """Only the converter's files, each written as a plain file under `out` (no links, no paths outside it)."""
    written = 0
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar:
            if not member.isfile() or not member.name.startswith(_VENDORED):
                continue
            relative = PurePosixPath(member.name[len(_VENDORED):])
            if not str(relative).startswith(_KEEP) or ".." in relative.parts or relative.is_absolute():
                continue
            source = tar.extractfile(member)
            assert source is not None  # a regular file
            target = out.joinpath(*relative.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink)
            written += 1
    if not (out / SCRIPT).is_file() or not (out / "gguf-py" / "gguf" / "__init__.py").is_file():
        raise ConverterError(f"{sdist} does not hold llama.cpp's {SCRIPT} and gguf-py where {PACKAGE} {VERSION} "
                             f"has them ({written} files taken)")


def ensure() -> Path:
    """The converter script, fetched, checked and unpacked into the cache on first use."""
    script = ready()
    if script is not None:
        return script
    try:
        return _fetch()
    except OSError as exc:  # a cache that cannot be written, a full disk
        raise ConverterError(f"could not set up llama.cpp's converter in {folder()}: {exc}") from None


def _fetch() -> Path:
    home = folder()
    home.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".fetch.", dir=home))
    try:
        placed = home / SDIST  # put there by hand (offline)
        sdist = placed if placed.is_file() else _download(work)
        _verify(sdist, sdist == placed)
        unpacked = work / "converter"
        _extract(sdist, unpacked)
        (unpacked / SOURCE_RECORD).write_text(json.dumps(
            {"package": PACKAGE, "version": VERSION, "sdist": SDIST, "sha256": SHA256}, indent=2) + "\n")
        try:
            publish_dir(unpacked, converter_dir())
        except OSError:
            if ready() is None:  # not another export publishing the same files first
                raise
        if sdist == placed:
            placed.unlink()  # its files are unpacked and checked; 75 MB less in the cache
    finally:
        shutil.rmtree(work, ignore_errors=True)
    script = ready()
    assert script is not None
    return script


def _reason(lines: list[str]) -> str:
    """The converter's failure in one line: its own ERROR, else the exception a traceback ends with."""
    for line in reversed(lines):
        missing = _MISSING_MODULE.search(line)
        if missing:
            module = missing.group(1).split(".")[0]
            return f"it needs the Python package {module} (pip install {module})"
        found = _ERROR_LINE.match(line.strip())
        if found:
            return found.group(1).strip()
    return next((line.strip() for line in reversed(lines) if line.strip()), "it stopped without a message")


def convert(model: Path, out_file: Path, out_type: str, progress: Callable[[str], None] | None = None,
            name: str | None = None) -> None:
    """Write `model` (a Hugging Face model folder) as the GGUF file `out_file`, weights as `out_type`. `name` is
    the model's `general.name`, what llama.cpp, LM Studio and Ollama show (else the converter takes the folder's
    name, which for a merged export is a temporary one)."""
    if out_type not in OUT_TYPES:
        raise ConverterError(f"unknown GGUF type '{out_type}' (known: {', '.join(OUT_TYPES)})")
    script = ensure()
    env = {key: value for key, value in os.environ.items() if key != "NO_LOCAL_GGUF"}  # its own gguf-py, always
    command = [sys.executable, str(script), str(model), "--outfile", str(out_file), "--outtype", out_type,
               *(["--model-name", name] if name else [])]
    tail: deque[str] = deque(maxlen=400)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                          text=True, errors="replace", env=env) as process:
        assert process.stdout is not None
        for line in process.stdout:
            tail.append(line.rstrip("\n"))
            tensor = _TENSOR_LINE.match(line)
            if tensor and progress is not None:
                progress(tensor.group(1))
        code = process.wait()
    if code != 0 or not out_file.is_file():
        raise ConverterError(f"llama.cpp's converter could not convert {model}: {_reason(list(tail))}")


def main() -> None:
    """`python -m finetuned.lifecycle.converter`: fetch the converter now (`make gguf-converter`)."""
    try:
        script = ensure()
    except ConverterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"llama.cpp's converter ({PACKAGE} {VERSION}, sha256 {SHA256[:12]}...) is ready: {script}")


if __name__ == "__main__":
    main()
