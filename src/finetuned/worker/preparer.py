"""The preparer process: tokenises queued files ahead of their turn.

A job whose file is already tokenised starts training at once, and a file that
cannot train (no token carries loss) fails while it waits, not when it is due.
Like the training worker it runs in its own process group and dies with the
daemon; it never touches a job the daemon has handed to the worker.
"""

from __future__ import annotations

import logging
import os
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from finetuned.worker.main import detach, orders
from finetuned.worker.protocol import Failed, FailKind, Prepare, Prepared, Ready

log = logging.getLogger("finetuned.preparer")


def main(conn: Connection, ws_root: str, parent_pid: int) -> None:
    if not detach(parent_pid):
        return
    from finetuned.data import DataError, is_current, prepare
    from finetuned.logs import route_library_output, setup_logging
    from finetuned.models.loading import load_tokenizer, resolve_base
    from finetuned.workspace import Workspace

    ws = Workspace(Path(ws_root))
    setup_logging(ws, "training", stream=False)
    route_library_output()
    tokenizers: dict[str, Any] = {}
    conn.send(Ready(pid=os.getpid()))
    for order in orders(conn, Prepare):
        try:
            config = order.config
            if config.base_model not in tokenizers:
                tokenizers[config.base_model] = load_tokenizer(resolve_base(config.base_model, ws))
            tokenizer = tokenizers[config.base_model]
            out = ws.tokenized / order.job_id
            max_len = config.training.max_seq_len
            if not is_current(out, order.sha256, tokenizer, config.data, max_len):
                prepare(order.file, out, tokenizer, config.data, max_len)
            conn.send(Prepared(job_id=order.job_id))
        except DataError as exc:
            conn.send(Failed(job_id=order.job_id, kind=FailKind.DATA, reason=str(exc), report=exc.report))
        except Exception as exc:  # the worker prepares the file itself at the job's start
            log.exception("preparing job %s failed", order.job_id)
            conn.send(Failed(job_id=order.job_id, kind=FailKind.CRASH, reason=f"{type(exc).__name__}: {exc}"))
