"""Base-model versions: `models/base/NAME-vN/`, each with a `version.json` saying what it is.

A version is a plain Hugging Face folder (safetensors and the tokenizer), so it
loads anywhere with `from_pretrained`. Its `version.json` names the version it
was merged onto, the adapters and jobs merged, the data files with their
sha256, the steps and tokens trained, the date and a hash of the weights: the
metadata whose absence once let a cleanup delete weeks of training.

The original base model of a line is version 0: the first time the line moves
on, it gets a `version.json` describing where it came from.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from finetuned.fsio import atomic_write_json, read_json
from finetuned.lifecycle.errors import LifecycleError
from finetuned.models import builtin
from finetuned.models.loading import ModelError, base_path, resolve_base, weights_hash
from finetuned.timestamps import now_text
from finetuned.workspace import Workspace

log = logging.getLogger(__name__)

VERSION_FILE = "version.json"
FORMAT = 1
_SHORT_REF = re.compile(r"^v?(\d+)$")


class Version(BaseModel):
    """The content of `version.json`; unknown keys are kept, so older code reads newer files."""

    model_config = ConfigDict(extra="allow")

    format: int = FORMAT
    id: str  # the folder's name: NAME-vN, or the original folder's name for version 0
    name: str  # the line: the root model's name
    version: int
    parent: str | None = None  # the version this one was merged onto
    parent_hash: str | None = None
    base_model: str  # what config.json's base_model says to train on this version
    origin: str | None = None  # version 0: where the original came from
    created: str = Field(default_factory=now_text)
    note: str = ""
    weights_hash: str | None = None
    dtype: str | None = None
    adapters: list[dict[str, Any]] = Field(default_factory=list)  # merged here: job, method, steps, ...
    jobs: list[dict[str, Any]] = Field(default_factory=list)  # every job whose training is in the adapter
    data: list[dict[str, Any]] = Field(default_factory=list)  # their files and sha256
    steps: int = 0  # trained into this version on top of its parent
    tokens: int = 0
    total_steps: int = 0  # since version 0
    total_tokens: int = 0
    evaluation: dict[str, Any] | None = None  # its scores on the suites in evals/ (lifecycle/gate.py)
    path: Path | None = Field(default=None, exclude=True)
    recorded: bool = Field(default=True, exclude=True)  # False: version 0 without its version.json yet


def is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").exists()


def base_folder(ws: Workspace, base_model: str) -> Path:
    """Where `base_model` lives, without writing a built-in out (resolve_base's rule)."""
    return base_path(base_model, ws)


def read_version(folder: Path) -> Version | None:
    path = folder / VERSION_FILE
    if not path.exists():
        return None
    try:
        version = Version.model_validate(read_json(path))
    except (OSError, ValueError, ValidationError) as exc:
        log.warning("unreadable %s: %s", path, exc)
        return None
    version.path = folder
    return version


def root_record(folder: Path, base_model: str, with_hash: bool) -> Version:
    """Version 0 of a line: an original base model that has no version.json yet."""
    name = folder.name
    origin = base_model if builtin.is_builtin(base_model) else str(folder.resolve())
    note = f"original base model ({origin})"
    version = Version(
        id=folder.name, name=name, version=0, base_model=base_model, origin=origin, note=note,
        weights_hash=weights_hash(folder) if with_hash else None, dtype=model_dtype(folder),
    )
    version.path = folder
    version.recorded = False
    return version


def model_dtype(folder: Path) -> str | None:
    try:
        config = read_json(folder / "config.json")
    except (OSError, ValueError):
        return None
    return config.get("dtype") or config.get("torch_dtype")


def write_version(folder: Path, version: Version) -> None:
    atomic_write_json(folder / VERSION_FILE, version.model_dump(mode="json"))


def describe(ws: Workspace, base_model: str) -> Version:
    """The version `base_model` names, read from its version.json or described as an unrecorded version 0."""
    folder = base_folder(ws, base_model)
    found = read_version(folder)
    if found is not None:
        return found
    return root_record(folder, base_model, with_hash=False)


def ensure_recorded(ws: Workspace, base_model: str) -> Version:
    """`describe`, writing version 0's version.json first if it has none (a built-in is written out)."""
    try:
        folder = resolve_base(base_model, ws)
    except ModelError as exc:
        raise LifecycleError(str(exc)) from None
    found = read_version(folder)
    if found is not None:
        return found
    version = root_record(folder, base_model, with_hash=True)
    try:
        write_version(folder, version)
        version.recorded = True
        log.info("recorded %s as version 0 of the line %s", folder, version.name)
    except OSError as exc:  # a read-only original elsewhere: the record is still computed each time
        log.warning("could not write %s: %s", folder / VERSION_FILE, exc)
    return version


def list_versions(ws: Workspace, current_base: str | None = None) -> list[Version]:
    """Every model folder under models/base (and the current base, if it lives elsewhere), by line and number."""
    found: dict[Path, Version] = {}
    if ws.base_models.is_dir():
        for folder in sorted(ws.base_models.iterdir()):
            if folder.name.startswith(".") or not is_model_folder(folder):
                continue
            found[folder.resolve()] = read_version(folder) or root_record(
                folder, _builtin_name(folder.name) or folder.name, with_hash=False)
    if current_base is not None:
        folder = base_folder(ws, current_base)
        if folder.resolve() not in found and is_model_folder(folder):
            found[folder.resolve()] = describe(ws, current_base)
    return sorted(found.values(), key=lambda v: (v.name, v.version, v.id))


def _builtin_name(folder_name: str) -> str | None:
    """A folder named like a built-in under models/base was written out from it."""
    return builtin.PREFIX + folder_name if folder_name in builtin.BUILDERS else None


def find(ws: Workspace, ref: str, current_base: str) -> Version:
    """A version by id (`tiny-v2`), by number in the current line (`v2`, `2`), or by folder path."""
    versions = list_versions(ws, current_base)
    for version in versions:
        if ref == version.id:
            return version
    line = describe(ws, current_base).name
    short = _SHORT_REF.match(ref)
    number = int(short.group(1)) if short else None
    if ref.startswith(line + "-v") and ref[len(line) + 2:].isdigit():
        number = int(ref[len(line) + 2:])
    if number is not None:
        for version in versions:
            if version.name == line and version.version == number:
                return version
    path = Path(ref).expanduser()
    if is_model_folder(path):
        return read_version(path) or root_record(path, str(path.resolve()), with_hash=False)
    known = ", ".join(v.id for v in versions) or "none"
    raise LifecycleError(f"no version '{ref}' (known: {known})")


def next_id(ws: Workspace, name: str) -> tuple[str, int]:
    """The next free NAME-vN: one past every number used, by a folder or a record."""
    pattern = re.compile(rf"^\.?{re.escape(name)}-v(\d+)(\.tmp)?$")
    used = [0]
    if ws.base_models.is_dir():
        for folder in ws.base_models.iterdir():
            match = pattern.match(folder.name)
            if match:
                used.append(int(match.group(1)))
    used += [v.version for v in list_versions(ws) if v.name == name]
    n = max(used) + 1
    while (ws.base_models / f"{name}-v{n}").exists():
        n += 1
    return f"{name}-v{n}", n


def lineage(ws: Workspace, version: Version, current_base: str) -> list[Version]:
    """The version and its ancestors, newest first (stops where a parent is missing)."""
    chain = [version]
    seen = {version.id}
    while chain[-1].parent and chain[-1].parent not in seen:
        try:
            parent = find(ws, chain[-1].parent, current_base)
        except LifecycleError:
            break
        seen.add(parent.id)
        chain.append(parent)
    return chain
