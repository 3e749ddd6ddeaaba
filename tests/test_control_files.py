"""The control files' one owner: what each request does, which control wins, what is consumed."""

from __future__ import annotations

import pytest

from finetuned import controls
from finetuned.controls import Control
from finetuned.lock import WorkspaceLock
from finetuned.workspace import Workspace


@pytest.fixture
def ws(tmp_path) -> Workspace:
    ws = Workspace.at(tmp_path / "ws")
    ws.create()
    return ws


def test_requests_touch_the_files_a_person_would(ws):
    for control, path in ((Control.PAUSE, ws.pause_file), (Control.STOP, ws.stop_file), (Control.SKIP, ws.skip_file)):
        assert not path.exists()
        assert controls.request(ws, control) == controls.MESSAGES[control]
        assert path.exists() and controls.requested(ws, control)


def test_resume_lifts_a_pause_and_says_when_there_was_none(ws):
    assert controls.resume(ws) == controls.NOT_PAUSED
    controls.request(ws, Control.PAUSE)
    assert controls.paused(ws)
    assert controls.resume(ws) == controls.RESUMED
    assert not controls.paused(ws) and not ws.pause_file.exists()


def test_skip_beats_stop_beats_pause(ws):
    assert controls.pending(ws) is None
    controls.request(ws, Control.PAUSE)
    assert controls.pending(ws) is Control.PAUSE
    controls.request(ws, Control.STOP)
    assert controls.pending(ws) is Control.STOP
    controls.request(ws, Control.SKIP)
    assert controls.pending(ws) is Control.SKIP


def test_stop_and_skip_are_consumed_but_a_pause_never_is(ws):
    for control in Control:
        controls.request(ws, control)
        controls.consume(ws, control)
    assert controls.paused(ws), "a pause is a level: only the user (or resume) lifts it"
    assert not ws.stop_file.exists() and not ws.skip_file.exists()
    controls.request(ws, Control.STOP)
    controls.request(ws, Control.SKIP)
    assert controls.consume_stray(ws) == [Control.SKIP, Control.STOP]
    assert controls.pending(ws) is Control.PAUSE


def test_the_quiet_window_is_its_own_lock_not_the_users_pause(ws):
    assert not controls.quiet(ws)
    with WorkspaceLock(ws.quiet_lock):
        assert controls.quiet(ws)
        assert not controls.paused(ws)
    assert not controls.quiet(ws)
