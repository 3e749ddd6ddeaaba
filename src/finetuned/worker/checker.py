"""The model checker process: can the workspace's settings train? Asked at start-up and after each change.

It runs `models/check.py` (which imports torch and transformers, so not in the daemon),
answers each `CheckModel` with a `ModelChecked`, and exits when told or when the daemon
goes. Like the other children it has its own process group and dies with the daemon.
"""

from __future__ import annotations

import logging
import os
from multiprocessing.connection import Connection
from pathlib import Path

from finetuned.worker.main import detach, orders
from finetuned.worker.protocol import CheckModel, ModelChecked, Ready

log = logging.getLogger("finetuned.checker")


def main(conn: Connection, ws_root: str, parent_pid: int) -> None:
    if not detach(parent_pid):
        return
    from finetuned.logs import route_library_output, setup_logging
    from finetuned.models.check import check_base_model
    from finetuned.models.loading import ModelError
    from finetuned.workspace import Workspace

    ws = Workspace(Path(ws_root))
    setup_logging(ws, "training", stream=False)
    route_library_output()
    conn.send(Ready(pid=os.getpid()))
    for order in orders(conn, CheckModel):
        try:
            checked = check_base_model(order.config, ws)
            conn.send(ModelChecked(key=order.key, error=None, summary=checked.summary))
        except ModelError as exc:
            conn.send(ModelChecked(key=order.key, error=str(exc)))
        except Exception as exc:  # a check that crashes says so, in one line; the daemon holds on it
            log.exception("checking the base model crashed")
            conn.send(ModelChecked(key=order.key, error=f"checking the base model failed: {type(exc).__name__}: "
                                                       f"{str(exc).splitlines()[0] if str(exc) else ''}"))
