"""The logs carry events, not library noise: known-harmless warnings go to the debug log alone."""

from __future__ import annotations

import logging
import warnings
from datetime import datetime

import pytest

from finetuned.logs import DEBUG_PREFIX, setup_logging
from finetuned.workspace import Workspace


@pytest.fixture
def logged(tmp_path):
    ws = Workspace.at(tmp_path / "ws")
    ws.create()
    setup_logging(ws, "daemon")
    yield ws
    logging.captureWarnings(False)
    logging.basicConfig(handlers=[logging.NullHandler()], force=True)


def test_harmless_library_noise_is_kept_out_of_the_log_and_stderr(logged, capsys):
    ws = logged
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("`is_gradient_checkpointing` is deprecated", FutureWarning, stacklevel=1)
        warnings.warn("an autograd kernel was not registered: this may lead to silently incorrect behavior",
                      UserWarning, stacklevel=1)
        warnings.warn("a warning nobody has seen before", UserWarning, stacklevel=1)
    logging.getLogger("bitsandbytes.backends.cpu.ops").warning(
        "Failed to load CPU gemm_4bit_forward from kernels-community: no module named kernels")
    logging.getLogger("finetuned.daemon").info("job 1: queued")
    daemon_log = ws.daemon_log().read_text()
    debug_log = ws.log_file(DEBUG_PREFIX, datetime.now().strftime("%Y%m%d")).read_text()
    stderr = capsys.readouterr().err
    assert "job 1: queued" in daemon_log and "a warning nobody has seen before" in daemon_log
    for noise in ("is deprecated", "silently incorrect behavior", "gemm_4bit_forward"):
        assert noise not in daemon_log and noise not in stderr, noise
        assert noise in debug_log, noise


def test_a_message_is_one_printable_line_and_a_traceback_keeps_its_lines(logged):
    log = logging.getLogger("finetuned.daemon")
    log.info("job 1: %s queued", "a\nFORGED\x1b[2J\u202e.jsonl")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("job 2: %s crashed", "b\r.jsonl")
    text = logged.daemon_log().read_text()
    assert "job 1: a\\nFORGED\\x1b[2J\\u202e.jsonl queued" in text and "job 2: b\\r.jsonl crashed" in text
    assert "\x1b" not in text and "\r" not in text and "\nFORGED" not in text
    assert "\nTraceback (most recent call last):\n" in text and "ValueError: boom" in text
