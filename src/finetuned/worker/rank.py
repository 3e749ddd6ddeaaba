"""One rank of a training group: `python -m finetuned.worker.rank WS_ROOT` under torchrun, or `on_ray` in a
Ray Train worker (processes/launch/).

The group's agent (a child of the daemon) runs the launcher and relays the daemon's pipe. Each rank
dies with the agent (the parent-death signal, and the parent check of rank 0's `Link` at every step
boundary); rank 0 connects to the agent and reads the orders, every rank takes them from rank 0
(`Ranks.next_order`) and trains each job with the loop a single worker runs. `@record` hands a
rank's exception to torchrun, which the agent turns into the job's reason.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch.distributed
from torch.distributed.elastic.multiprocessing.errors import record

from finetuned.logs import FORMAT, OneLine, route_library_output, setup_logging
from finetuned.processes.child import die_with_parent
from finetuned.processes.launch.group import AGENT_PID, STRATEGY, connect, connect_from_environment
from finetuned.processes.link import GATE_ENV
from finetuned.worker.main import train_orders
from finetuned.workspace import Workspace


@record
def main(argv: list[str]) -> None:
    from finetuned.worker.ranks import Ranks, join_group

    agent = int(os.environ[AGENT_PID])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides how to stop
    die_with_parent()
    if os.getppid() != agent:
        return  # the agent died before the parent-death signal was set: nothing to serve
    ws = Workspace(Path(argv[0]))
    rank = int(os.environ["RANK"])
    _logging(ws, rank)
    device = join_group()
    world = Ranks(connect_from_environment(agent) if rank == 0 else None, device, os.environ[STRATEGY])
    train_orders(ws, world, world.next_order)
    world.barrier()  # no rank tears the group down while another still uses it
    torch.distributed.destroy_process_group()


def on_ray(config: dict[str, Any]) -> None:
    """One Ray Train worker: a rank like torchrun's, its orders from rank 0."""
    import ray.train
    import ray.train.torch

    from finetuned.worker.ranks import Ranks

    ws = Workspace(Path(config["root"]))
    rank = ray.train.get_context().get_world_rank()
    if config.get("gate"):  # the tests' step gate (processes/link.py): workers get the driver's, not its environment
        os.environ[GATE_ENV] = config["gate"]
    _logging(ws, rank)
    # Ray ends its workers with the driver: no parent to watch here.
    link = connect(tuple(config["address"]), config["key"], None) if rank == 0 else None
    world = Ranks(link, ray.train.torch.get_device(), config["strategy"])
    train_orders(ws, world, world.next_order)


def _logging(ws: Workspace, rank: int) -> None:
    setup_logging(ws, "training", stream=False)
    route_library_output()
    quiet_unless_main(rank)


def quiet_unless_main(rank: int) -> None:
    """Rank 0 logs what a single worker logs; the others only their warnings and errors, named."""
    if rank == 0:
        return
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    for handler in root.handlers:
        handler.setFormatter(OneLine(FORMAT.replace("%(name)s", f"rank {rank} %(name)s")))


if __name__ == "__main__":
    main(sys.argv[1:])
