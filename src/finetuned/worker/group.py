"""A training worker of several ranks, seen from the daemon as one child process on one pipe.

The daemon starts this agent as it starts a single worker (its own process group, killed with
the daemon). The agent launches the ranks, in its main thread, with torchrun's elastic launcher
(`--standalone`: the rendezvous is torchrun's own, on this machine; no restarts: a rank that fails
fails the group, and the daemon retries the job from its last checkpoint on a new group, as for a
crashed single worker), or drives a Ray Train run on a cluster (worker/on_ray.py).

Rank 0 connects back to the agent (a socket only the agent's ranks can use: they get its address
and key from the agent's environment), and the `Relay` thread (worker/relay.py) carries the daemon's orders to rank 0
and rank 0's reports back, so rank 0 speaks the protocol a single worker speaks. When the group
fails, the agent reports the job in flight as crashed, with the failed rank and its error.

Every rank dies with the agent (parent-death signal; rank 0 also checks its parent at each step
boundary), and the agent with the daemon: a SIGKILL of the daemon leaves no rank behind. Nothing
here imports torch at module level: the daemon imports this module to name the entry point.
"""

from __future__ import annotations

import logging
import os
import sys
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from finetuned.config import DistributedSettings
from finetuned.worker.main import detach
from finetuned.worker.relay import Relay

log = logging.getLogger("finetuned.worker")

MONITOR_INTERVAL = 0.5  # seconds between torchrun's checks of its ranks: a dead rank is noticed this fast


def main(conn: Connection, ws_root: str, parent_pid: int, settings_json: str) -> None:
    if not detach(parent_pid):
        return
    from finetuned.logs import setup_logging
    from finetuned.workspace import Workspace

    settings = DistributedSettings.model_validate_json(settings_json)
    setup_logging(Workspace(Path(ws_root)), "training", stream=False)
    if settings.launcher == "ray":
        from finetuned.worker.on_ray import run_on_ray

        sys.exit(run_on_ray(conn, ws_root, settings))
    sys.exit(run_torchrun(conn, ws_root, settings))


def run_torchrun(conn: Connection, ws_root: str, settings: DistributedSettings) -> int:
    """`torchrun --standalone --nproc-per-node N -m finetuned.worker.rank WS_ROOT`, in this process."""
    import torch
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    from finetuned.worker.rank import AGENT_ADDRESS, AGENT_KEY, AGENT_PID, STRATEGY

    relay = Relay(conn)
    os.environ.update({AGENT_ADDRESS: relay.address, AGENT_KEY: relay.key.hex(), AGENT_PID: str(os.getpid()),
                       STRATEGY: settings.strategy})
    if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:
        # torchrun would give each CPU rank one thread: share the cores out instead.
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // settings.nproc_per_node))
    args = parse_args([
        "--standalone", f"--nproc-per-node={settings.nproc_per_node}", "--max-restarts=0",
        f"--monitor-interval={MONITOR_INTERVAL}", "-m", "finetuned.worker.rank", ws_root,
    ])
    log.info("starting %d ranks with torchrun (%s)", settings.nproc_per_node, settings.strategy)
    try:
        run(args)
    except ChildFailedError as exc:
        reason = group_failure(exc)
        log.error("the training group failed: %s", reason)
        relay.crashed(reason)
        return 1
    return 0


def group_failure(exc: Any) -> str:
    """One line for a failed torchrun group: which rank failed first, and how."""
    rank, failure = exc.get_first_failure()
    how = f"died from {failure.signal_name()}" if failure.exitcode < 0 else f"exited with code {failure.exitcode}"
    message = failure.message
    if isinstance(message, dict):  # the rank's error file, written by @record
        message = message.get("message", "")
    detail = f": {str(message).splitlines()[0]}" if message and "Signal" not in str(message) else ""
    hint = " (killed: out of memory?)" if failure.signal_name() == "SIGKILL" else ""
    return f"rank {rank} (pid {failure.pid}) {how}{hint}{detail}"
