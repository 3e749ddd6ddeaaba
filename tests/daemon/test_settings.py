"""The daemon's settings: config.json re-read when it changes, checked before it is trusted, held when it
cannot train. The model check is the real one, run in this process instead of a child (`InlineChecker`)."""

from __future__ import annotations

import json
import logging
import os
import shutil

from helpers import InlineChecker, make_workspace, tiny_config

from finetuned.config import save_config
from finetuned.daemon.settings import Settings
from finetuned.workspace import Workspace


def settings_for(ws: Workspace) -> tuple[Settings, list[str]]:
    checks: list[str] = []
    return Settings(ws, ws.load_config(), lambda _root: InlineChecker(ws, checks)), checks


def edit(ws: Workspace, text: str) -> None:
    """Write config.json with a new modification time, as an editor would."""
    ws.config_path.write_text(text)
    st = ws.config_path.stat()
    os.utime(ws.config_path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def settle(settings: Settings) -> None:
    for _ in range(3):
        settings.refresh()


def test_good_settings_are_checked_once_and_an_edit_the_check_does_not_read_needs_no_new_check(
        tmp_path, tiny_model_dir):
    ws = make_workspace(tmp_path / "ws")
    settings, checks = settings_for(ws)
    assert not settings.ready, "nothing starts before the first check"
    settle(settings)
    assert settings.ready and settings.hold is None and checks == ["builtin:tiny"]
    config = ws.load_config()
    config.training.epochs = 3
    save_config(ws.config_path, config)
    edit(ws, ws.config_path.read_text())
    settle(settings)
    assert settings.ready and settings.config.training.epochs == 3 and checks == ["builtin:tiny"]


def test_a_broken_edit_holds_and_never_becomes_the_last_good_config(tmp_path, tiny_model_dir, caplog):
    ws = make_workspace(tmp_path / "ws")
    settings, _ = settings_for(ws)
    settle(settings)
    good = settings.config
    raw = json.loads(ws.config_path.read_text())
    raw["lora"]["target_modules"] = ["q_proj", "v_prj"]
    with caplog.at_level(logging.INFO, logger="finetuned.daemon"):
        edit(ws, json.dumps(raw))
        settle(settings)
        assert not settings.ready and "'v_prj' matches no module" in settings.hold
        edit(ws, "{not json")  # a worse edit: the last good settings are the ones before the broken one
        settle(settings)
        assert settings.invalid and "not valid JSON" in settings.invalid
        assert settings.config == good and settings.ready and settings.hold is None
        edit(ws, json.dumps(raw))
        settle(settings)
        assert not settings.ready
        raw["lora"]["target_modules"] = "all-linear"
        edit(ws, json.dumps(raw))
        settle(settings)
    assert settings.ready and settings.invalid is None
    holds = [r for r in caplog.records if r.getMessage().startswith("holding the queue")]
    assert len(holds) == 2, "one line per broken edit, not one a tick"
    assert any("the queue goes on" in r.getMessage() for r in caplog.records)


def test_a_missing_base_folder_holds_until_the_folder_appears(tmp_path, tiny_model_dir):
    config = tiny_config()
    config.base_model = "models/base/mine"
    ws = make_workspace(tmp_path / "ws", config)
    settings, checks = settings_for(ws)
    settle(settings)
    assert not settings.ready and "no such folder" in settings.hold and settings.good is None
    edit(ws, "[]")
    settle(settings)
    assert settings.invalid and not settings.ready, "no good settings to fall back on: still held"
    save_config(ws.config_path, config)
    edit(ws, ws.config_path.read_text())
    settle(settings)
    assert len(checks) == 1, "nothing changed that the check reads: not checked again"
    shutil.copytree(tiny_model_dir, ws.base_models / "mine")
    settle(settings)
    assert settings.ready and settings.hold is None and len(checks) == 2


class DyingChecker:
    """A checker the OOM killer takes before it answers."""

    stopping, pid, last_heard = False, None, 0.0

    def send(self, message: object) -> bool:
        return True

    def receive(self) -> list:
        return []

    def alive(self) -> bool:
        return False

    def exit_reason(self) -> str:
        return "worker died from SIGKILL (killed: out of memory?)"

    def shutdown(self, timeout: float = 0) -> None:
        pass


def test_a_model_checker_killed_once_is_started_again_and_its_verdict_decides(tmp_path, tiny_model_dir, caplog):
    """The real checker process, SIGKILLed mid-check: no hold; a new checker answers and the queue may go on."""
    import signal
    import time

    ws = make_workspace(tmp_path / "ws")
    settings = Settings(ws, ws.load_config())
    settings.refresh()
    killed = settings._handle
    assert killed is not None and killed.pid is not None
    os.kill(killed.pid, signal.SIGKILL)
    deadline = time.time() + 120
    with caplog.at_level(logging.WARNING, logger="finetuned.daemon"):
        while not settings.ready and time.time() < deadline:
            settings.refresh()
            assert settings.hold is None, settings.hold
            time.sleep(0.1)
    settings.close()
    assert settings.ready, "a new checker gave the verdict"
    assert "checking again" in caplog.text


def test_a_checker_that_dies_every_time_holds_the_queue_saying_so(tmp_path, tiny_model_dir, monkeypatch):
    import time

    import finetuned.daemon.settings as settings_module

    monkeypatch.setattr(settings_module, "CHECKER_BACKOFF_SECONDS", 0.01)
    ws = make_workspace(tmp_path / "ws")
    started: list[DyingChecker] = []
    settings = Settings(ws, ws.load_config(), lambda _root: started.append(DyingChecker()) or started[-1])
    deadline = time.time() + 10
    while settings.hold is None and time.time() < deadline:
        settings.refresh()
        time.sleep(0.02)
    assert len(started) == settings_module.CHECKER_ATTEMPTS
    assert settings.hold is not None and "died 4 times" in settings.hold and "SIGKILL" in settings.hold
    assert not settings.ready
