"""The training worker: a child of the daemon (or a rank of a group) that trains what it is told.

`serve` is the child program the daemon starts (processes/child.py detaches it and says Ready);
`train_orders` is the loop a single worker and every rank of a group run: one job at a time, until
the daemon says shut down.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

from finetuned.fsio import is_disk_full
from finetuned.processes.protocol import Failed, FailKind, Order, Shutdown, Train

if TYPE_CHECKING:
    from finetuned.processes.link import Link
    from finetuned.worker.world import World
    from finetuned.workspace import Workspace

log = logging.getLogger("finetuned.worker")


def serve(ws: Workspace, link: Link) -> None:
    from finetuned.worker.world import Solo

    train_orders(ws, Solo(link.send, link.poll, waiting=link.yield_waiting), link.next_order)


def train_orders(ws: Workspace, world: World, next_order: Callable[[], Order]) -> None:
    """Train what the daemon orders, one job at a time, until it says shut down.

    A job that crashes reaches the daemon as that job's failure. On several ranks the process then
    exits with the error: its partners may be waiting for it in a collective, so the whole group goes
    down, and the daemon retries the job on a new one from its last checkpoint.
    """
    from finetuned.worker.cache import ModelCache
    from finetuned.worker.recipe import run_job

    cache = ModelCache(ws)
    log.debug("worker pid %d serving", os.getpid())
    while True:
        order = next_order()
        if isinstance(order, Shutdown):
            return
        if not isinstance(order, Train):
            continue  # a yield with nothing training: nothing to yield
        try:
            run_job(ws, order, cache, world)
        except Exception as exc:  # a crash of one job must reach the daemon as that job's failure
            log.exception("job %s crashed", order.job.id)
            cache.drop()  # its state is unknown now: reload before the next job
            kind = FailKind.DISK if is_disk_full(exc) else FailKind.CRASH
            group = world.size > 1
            world.report(Failed(job_id=order.job.id, kind=kind, reason=f"{type(exc).__name__}: {exc}",
                                traceback=traceback.format_exc(), worker_exits=group))
            if group:
                raise
