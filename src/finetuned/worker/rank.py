"""One rank of a training group, as torchrun starts it: `python -m finetuned.worker.rank WS_ROOT`.

The group's agent (worker/group.py, the daemon's child) runs torchrun and relays the daemon's
pipe. Each rank dies with the agent (the parent-death signal, and the parent check of rank 0's
`Link` at every step boundary); rank 0 connects to the agent and reads the orders, every rank
takes them from rank 0 (`Ranks.next_order`) and trains each job with the recipe a single worker
runs. `@record` hands a rank's exception to torchrun, which the agent turns into the job's reason.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from multiprocessing.connection import Client
from pathlib import Path

import torch.distributed
from torch.distributed.elastic.multiprocessing.errors import record

from finetuned.logs import FORMAT, route_library_output, setup_logging
from finetuned.worker.main import Link, die_with_parent, serve

# Set by the agent for its ranks: where rank 0 finds it, the key that proves the rank is its own, its pid.
AGENT_ADDRESS = "FINETUNED_AGENT_ADDRESS"
AGENT_KEY = "FINETUNED_AGENT_KEY"
AGENT_PID = "FINETUNED_AGENT_PID"
STRATEGY = "FINETUNED_STRATEGY"  # distributed.strategy: ddp or fsdp


def connect(parent_pid: int | None) -> Link:
    """Rank 0's line to the daemon, through the agent."""
    conn = Client(os.environ[AGENT_ADDRESS], authkey=bytes.fromhex(os.environ[AGENT_KEY]))
    return Link(conn, parent_pid)


@record
def main(argv: list[str]) -> None:
    from finetuned.worker.ranks import Ranks, join_group
    from finetuned.workspace import Workspace

    agent = int(os.environ[AGENT_PID])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides how to stop
    die_with_parent()
    if os.getppid() != agent:
        return  # the agent died before the parent-death signal was set: nothing to serve
    ws = Workspace(Path(argv[0]))
    rank = int(os.environ["RANK"])
    setup_logging(ws, "training", stream=False)
    route_library_output()
    quiet_unless_main(rank)
    device = join_group()
    world = Ranks(connect(agent) if rank == 0 else None, device, os.environ[STRATEGY])
    serve(ws, world, world.next_order)
    world.barrier()  # no rank tears the group down while another still uses it
    torch.distributed.destroy_process_group()


def quiet_unless_main(rank: int) -> None:
    """Rank 0 logs what a single worker logs; the others only their warnings and errors, named."""
    if rank == 0:
        return
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    for handler in root.handlers:
        handler.setFormatter(logging.Formatter(FORMAT.replace("%(name)s", f"rank {rank} %(name)s"),
                                               "%Y-%m-%d %H:%M:%S"))


if __name__ == "__main__":
    main(sys.argv[1:])
