"""The settings the daemon works with: config.json, read when it changes and checked before it is trusted.

The daemon reads `config.json` again whenever the file changes (each tick stats it,
before any file is validated or job started). An edit that does not validate is logged
once, naming the key, and the last good settings stay in use. An edit that validates is
checked against the model (`models/check.py`, in a child process: the base model and its
tokenizer open, it is a causal language model, the LoRA targets exist, a starting
adapter fits). No job starts before that check passes; while it fails the daemon holds
the queue with its reason (files stay queued, nothing fails) and checks again when the
settings it covers change or the folders it read do (a base model copied in fixes a
missing one). Settings become "the last good ones" only once their check passed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from finetuned.config import Config, ConfigError, parse_config, repair_hint
from finetuned.models import builtin
from finetuned.models.loading import adapter_path, base_path
from finetuned.overrides import diff
from finetuned.processes.handle import Child, ChildHandle
from finetuned.processes.protocol import CheckModel, ModelChecked, Shutdown
from finetuned.workspace import Workspace

log = logging.getLogger("finetuned.daemon")


CHECKER = "finetuned.worker.checker"
# A checker that dies without a verdict (the OOM killer, a stray signal) is started again, after 2, 4, 8 s...:
# a transient death says nothing about the settings. Only this many deaths in a row hold the queue.
CHECKER_ATTEMPTS = 4
CHECKER_BACKOFF_SECONDS = 2.0


def start_checker(ws_root: str) -> Child:
    return ChildHandle(ws_root, CHECKER, "model checker", lazy=False)


def _folder_signature(folder: Path) -> list[tuple[str, int, int]]:
    """Names, sizes and times of a folder's files: a model copied in, or changed, changes it."""
    try:
        return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file())
    except OSError:
        return []


def fingerprint(config: Config, ws: Workspace) -> str:
    """What the model check depends on: the settings it reads and the folders it opens."""
    t = config.training
    parts: list[object] = [config.base_model, config.method, config.lora.target_modules, t.init_adapter]
    if not builtin.is_builtin(config.base_model):  # a built-in is ours: written once, never changed
        parts.append(_folder_signature(base_path(config.base_model, ws)))
    if t.init_adapter:
        parts.append(_folder_signature(adapter_path(t.init_adapter, ws)))
    return json.dumps(parts, default=str)


class Settings:
    def __init__(self, ws: Workspace, config: Config,
                 checker_factory: Callable[[str], Child] = start_checker) -> None:
        self.ws = ws
        self.config = config  # what validation, tokenising and the next job use
        self.checker_factory = checker_factory
        self.good: Config | None = None  # the last settings whose check passed
        self.invalid: str | None = None  # config.json does not validate (one line naming the key)
        self.hold: str | None = None  # why no job may start: the settings' check failed
        self.summary = ""  # what the last passing check found ("llama, 2 layers, ...")
        self._stamp = self._file_stamp()
        self._key = ""  # the fingerprint of the settings in use
        self._checked: str | None = None  # the fingerprint of the last finished check
        self._passed: str | None = None  # ... of the last one that passed
        self._pending: str | None = None  # ... of the one running now
        self._handle: Child | None = None
        self._retiring: list[Child] = []
        self._deaths = 0  # checkers in a row that died without a verdict
        self._retry_at = 0.0  # when the next checker may start after one died

    @property
    def checking(self) -> bool:
        return self._pending is not None or self._retry_at > time.time()

    @property
    def ready(self) -> bool:
        """The settings in use passed their check: a job may start."""
        return self._pending is None and self.hold is None and self._key == self._passed

    # --- config.json ----------------------------------------------------
    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.ws.config_path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def _reread(self) -> None:
        path = self.ws.config_path
        try:
            config = parse_config(json.loads(path.read_text(encoding="utf-8")), path)
        except FileNotFoundError:
            self._invalid(f"{path}: missing")
            return
        except (ValueError, UnicodeDecodeError) as exc:
            self._invalid(f"{path}: not valid JSON: {exc}")
            return
        except ConfigError as exc:
            self._invalid(f"{exc} ({repair_hint(exc)})")
            return
        if self.invalid is not None:
            log.info("%s is valid again", path)
        self.invalid = None
        if config != self.config:
            log.info("config.json changed: %s", "; ".join(diff(self.config, config)))
            self.config = config

    def _invalid(self, message: str) -> None:
        if message != self.invalid:
            kept = "keeping the last good settings" if self.good is not None else "keeping the settings read before"
            log.error("%s; %s", message, kept)
        self.invalid = message
        if self.good is not None:
            self.config = self.good  # never the settings of an edit whose check failed

    # --- the model check ------------------------------------------------
    def refresh(self) -> bool:
        """Read config.json if it changed, collect a check, start one if due; True when something changed."""
        before = (self.config, self.invalid, self.hold, self._pending)
        self._retiring = [h for h in self._retiring if h.alive()]
        stamp = self._file_stamp()
        if stamp != self._stamp:
            self._stamp = stamp
            self._reread()
        self._key = fingerprint(self.config, self.ws)
        self._collect()
        if self._key == self._passed and self.hold is None:
            self.good = self.config  # an edit of what the check does not read is as good as the last
        if self._pending is None and self._key != self._checked and time.time() >= self._retry_at:
            self._submit(self._key)
        return before != (self.config, self.invalid, self.hold, self._pending)

    def _submit(self, key: str) -> None:
        if self._handle is None or not self._handle.alive():
            self._handle = self.checker_factory(str(self.ws.root))
        self._handle.send(CheckModel(key=key, config=self.config))
        self._pending = key

    def _collect(self) -> None:
        handle = self._handle
        if handle is None or self._pending is None:
            return
        for report in handle.receive():
            if isinstance(report, ModelChecked) and report.key == self._pending:
                self._answer(report.key, report.error, report.summary)
                return
        if not handle.alive():
            self._handle = None
            self._deaths += 1
            reason = handle.exit_reason()
            if self._deaths < CHECKER_ATTEMPTS:
                delay = CHECKER_BACKOFF_SECONDS * 2 ** (self._deaths - 1)
                log.warning("the model check did not answer (%s); checking again in %.0fs", reason, delay)
                self._pending, self._retry_at = None, time.time() + delay
                return
            self._answer(self._pending, f"the model check died {self._deaths} times without an answer (last: "
                                        f"{reason}); it runs again when config.json or the model folder changes, "
                                        "or at the next start", "")

    def _answer(self, key: str, error: str | None, summary: str) -> None:
        self._pending, self._checked, self._deaths, self._retry_at = None, key, 0, 0.0
        if key != self._key:
            return  # the settings changed meanwhile: they are checked next
        if error is None:
            if self.hold is not None:
                log.info("the settings can train now (%s); the queue goes on", summary)
            elif summary != self.summary:
                log.info("base model %s checked: %s", self.config.base_model, summary)
            self.good, self.hold, self.summary, self._passed = self.config, None, summary, key
            self._retire()
        elif error != self.hold:
            log.error("holding the queue: %s (files stay queued; fix config.json or the model folder)", error)
            self.hold = error

    def refuse(self, error: str) -> None:
        """The worker found the settings cannot train (a folder changed after the check): hold as if checked."""
        if error != self.hold:
            log.error("holding the queue: %s (files stay queued; fix config.json or the model folder)", error)
        self.hold, self.good, self._passed = error, None, None
        self._checked = self._key = fingerprint(self.config, self.ws)

    def _retire(self) -> None:
        """The checker's work is done for now: it exits (without the daemon waiting for it)."""
        if self._handle is not None:
            self._handle.stopping = True
            self._handle.send(Shutdown())
            self._retiring.append(self._handle)
            self._handle = None

    def abandon(self) -> None:
        """The disk is full: the checker goes at once; a check it was running is asked again later."""
        for handle in [*self._retiring, *([self._handle] if self._handle else [])]:
            handle.abandon()
        self._handle, self._retiring = None, []
        if self._pending is not None:
            self._pending = self._checked = None

    def close(self) -> None:
        for handle in [*self._retiring, *([self._handle] if self._handle else [])]:
            handle.shutdown()
        self._handle, self._retiring = None, []
