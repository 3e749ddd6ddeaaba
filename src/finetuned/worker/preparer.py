"""The preparer process: tokenises queued files ahead of their turn.

A job whose file is already tokenised starts training at once, and a file that
cannot train (no token carries loss) fails while it waits, not when it is due.
Like the training worker it runs in its own process group and dies with the
daemon; it never touches a job the daemon has handed to the worker.

daemon -> preparer   prepare {job_id, file, sha256, config}    shutdown {}
preparer -> daemon   ready {pid}    prepared {job_id}    failed {job_id, reason, data_error}
"""

from __future__ import annotations

import logging
import os
import signal
from multiprocessing.connection import Connection
from pathlib import Path

from finetuned.worker.main import die_with_parent
from finetuned.worker.protocol import msg

log = logging.getLogger("finetuned.preparer")


def main(conn: Connection, ws_root: str, parent_pid: int) -> None:
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    if os.getppid() != parent_pid:
        return
    from finetuned.config import Config
    from finetuned.data import DataError, is_current, prepare
    from finetuned.logs import setup_logging
    from finetuned.models.loading import load_tokenizer, resolve_base
    from finetuned.workspace import Workspace

    ws = Workspace(Path(ws_root))
    setup_logging(ws.root, "training", stream=False)
    tokenizers: dict[str, object] = {}
    conn.send(msg("ready", pid=os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message["type"] == "shutdown":
            return
        job_id = message["job_id"]
        try:
            config = Config.model_validate(message["config"])
            if config.base_model not in tokenizers:
                tokenizers[config.base_model] = load_tokenizer(resolve_base(config.base_model, ws.base_models))
            tokenizer = tokenizers[config.base_model]
            out = ws.tokenized / job_id
            max_len = config.training.max_seq_len
            if not is_current(out, message["sha256"], tokenizer, config.data, max_len):
                prepare(Path(message["file"]), out, tokenizer, config.data, max_len)
            conn.send(msg("prepared", job_id=job_id))
        except DataError as exc:
            conn.send(msg("failed", job_id=job_id, reason=str(exc), data_error=exc.report))
        except Exception as exc:  # the worker prepares the file itself at the job's start
            log.exception("preparing job %s failed", job_id)
            conn.send(msg("failed", job_id=job_id, reason=f"{type(exc).__name__}: {exc}", data_error=None))
