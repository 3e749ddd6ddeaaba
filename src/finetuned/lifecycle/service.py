"""A systemd user unit that keeps the daemon running across reboots: `finetuned service install`.

The unit sends SIGTERM to the daemon alone (`KillMode=mixed`): the daemon then
checkpoints the job and stops its worker itself, within `TimeoutStopSec`. With
the default `KillMode=control-group` systemd would signal the worker too, and
the steps since its last checkpoint would be lost.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
from pathlib import Path

from finetuned.fsio import atomic_write_bytes, remove_file
from finetuned.workspace import Workspace

log = logging.getLogger(__name__)

# Long enough for one optimizer step plus a checkpoint of a full fine-tune (GBs) on a slow disk.
DEFAULT_STOP_TIMEOUT = 600
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def unit_name(ws: Workspace) -> str:
    """`finetuned-NAME-HASH.service`: the folder's name to read, and a hash of its whole path, so two workspaces
    with the same folder name (~/a/training, ~/b/training) never share, or overwrite, one unit."""
    digest = hashlib.sha256(str(ws.root).encode("utf-8")).hexdigest()[:8]
    return f"finetuned-{_UNSAFE.sub('-', ws.root.name).strip('-') or 'workspace'}-{digest}.service"


def _legacy_name(ws: Workspace) -> str:
    """The name units had before the hash; `uninstall` still removes one that was written for this workspace."""
    return f"finetuned-{_UNSAFE.sub('-', ws.root.name).strip('-') or 'workspace'}.service"


def default_unit_dir() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "systemd" / "user"


def _quote(arg: str) -> str:
    """One ExecStart word: systemd expands % and $, and splits on spaces unless quoted."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if re.search(r"[\s\"'\\;]", arg):
        return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return arg


def unit_text(ws: Workspace, python: str | None = None, stop_timeout: int = DEFAULT_STOP_TIMEOUT) -> str:
    python = python or sys.executable
    root = str(ws.root)
    command = " ".join(_quote(a) for a in (python, "-m", "finetuned", "run", "--root", root))
    return f"""# Written by `finetuned service install` for the workspace {root}.
# Start: systemctl --user daemon-reload && systemctl --user enable --now {unit_name(ws)}
# Remove: systemctl --user disable --now {unit_name(ws)} && finetuned service uninstall --root {root}
[Unit]
Description=finetuned fine-tuning daemon for {root.replace('%', '%%')}
Documentation=file://{root.replace('%', '%%')}/config.json

[Service]
Type=simple
WorkingDirectory={root.replace('%', '%%')}
Environment=PYTHONUNBUFFERED=1
ExecStart={command}
Restart=on-failure
RestartSec=10
# SIGTERM to the daemon only: it checkpoints the current job and stops its worker itself.
KillMode=mixed
KillSignal=SIGTERM
TimeoutStopSec={stop_timeout}

[Install]
WantedBy=default.target
"""


def install(ws: Workspace, unit_dir: Path | None = None, python: str | None = None,
            stop_timeout: int = DEFAULT_STOP_TIMEOUT) -> Path:
    """Write (or rewrite) the unit file; returns its path. Starting it is the user's systemctl call."""
    folder = unit_dir or default_unit_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / unit_name(ws)
    atomic_write_bytes(path, unit_text(ws, python, stop_timeout).encode("utf-8"))
    log.info("wrote %s", path)
    return path


def uninstall(ws: Workspace, unit_dir: Path | None = None) -> Path | None:
    """Remove the unit file; returns its path, or None when there was none."""
    folder = unit_dir or default_unit_dir()
    path = folder / unit_name(ws)
    if not path.exists():
        path = folder / _legacy_name(ws)
        try:
            ours = f"for the workspace {ws.root}.\n" in path.read_text(encoding="utf-8")
        except OSError:
            return None
        if not ours:
            return None  # another workspace's unit of the same folder name: not ours to remove
    remove_file(path)
    return path


def enable_command(ws: Workspace) -> str:
    return f"systemctl --user daemon-reload && systemctl --user enable --now {unit_name(ws)}"
