"""The preparer process: tokenises queued files ahead of their turn.

A job whose file is already tokenised starts training at once, and a file that
cannot train (no token carries loss) fails while it waits, not when it is due.
A child program (processes/child.py): it never touches a job the daemon has handed to the worker.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from finetuned.processes.protocol import Failed, FailKind, Prepare, Prepared

if TYPE_CHECKING:
    from finetuned.processes.link import Link
    from finetuned.workspace import Workspace

log = logging.getLogger("finetuned.preparer")


def serve(ws: Workspace, link: Link) -> None:
    from finetuned.data import DataError, is_current, prepare
    from finetuned.models.loading import load_tokenizer, resolve_base

    tokenizers: dict[str, Any] = {}
    for order in link.orders(Prepare):
        try:
            config = order.config
            if config.base_model not in tokenizers:
                tokenizers[config.base_model] = load_tokenizer(resolve_base(config.base_model, ws))
            tokenizer = tokenizers[config.base_model]
            out = ws.tokenized / order.job_id
            max_len = config.training.max_seq_len
            if not is_current(out, order.sha256, tokenizer, config.data, max_len):
                prepare(order.file, out, tokenizer, config.data, max_len)
            link.send(Prepared(job_id=order.job_id))
        except DataError as exc:
            link.send(Failed(job_id=order.job_id, kind=FailKind.DATA, reason=str(exc), report=exc.report))
        except Exception as exc:  # the worker prepares the file itself at the job's start
            log.exception("preparing job %s failed", order.job_id)
            link.send(Failed(job_id=order.job_id, kind=FailKind.CRASH, reason=f"{type(exc).__name__}: {exc}"))
