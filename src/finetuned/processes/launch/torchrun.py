"""`distributed.launcher: torchrun`: `nproc_per_node` ranks on this machine, started by torchrun's elastic agent.

The agent runs torchrun in its main thread (`--standalone`: the rendezvous is torchrun's own, on this
machine; no restarts: a rank that fails fails the group, and the daemon retries the job from its last
checkpoint on a new group, as for a crashed single worker). Each rank is `python -m finetuned.worker.rank`.
"""

from __future__ import annotations

import logging
import os
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from finetuned.config import DistributedSettings
from finetuned.processes.launch.group import AGENT_ADDRESS, AGENT_KEY, AGENT_PID, STRATEGY, Group
from finetuned.processes.launch.relay import Relay

if TYPE_CHECKING:
    from finetuned.workspace import Workspace

log = logging.getLogger("finetuned.worker")

RANK = "finetuned.worker.rank"  # torchrun -m: one rank's program
MONITOR_INTERVAL = 0.5  # seconds between torchrun's checks of its ranks: a dead rank is noticed this fast


class Torchrun(Group):
    name = "torchrun"

    def world_size(self, settings: DistributedSettings) -> int:
        return settings.nproc_per_node

    def problems(self, ws: Workspace, settings: DistributedSettings) -> tuple[str, str]:
        """OK, WARN or FAIL for `nproc_per_node` ranks on this machine."""
        import torch
        import torch.distributed as dist

        n, strategy = settings.nproc_per_node, settings.strategy
        if not dist.is_available():
            return "FAIL", "this torch build has no torch.distributed"
        if torch.cuda.is_available():
            gpus = torch.cuda.device_count()
            if n > gpus:
                return "FAIL", f"nproc_per_node {n}, but {gpus} GPU(s) visible: one rank per GPU"
            if not dist.is_nccl_available():
                return "FAIL", "this torch build has no NCCL for GPU ranks"
            return "OK", f"torchrun: {n} ranks on {n} of {gpus} GPUs (nccl, {strategy})"
        cores = os.cpu_count() or 1
        if not dist.is_gloo_available():
            return "FAIL", "this torch build has no gloo for CPU ranks"
        note = f"torchrun: {n} ranks on the CPU (gloo, {strategy}), {max(1, cores // n)} of {cores} cores each"
        if n > cores:
            return "WARN", f"torchrun: {n} ranks on {cores} cores: more ranks than cores only slows training"
        return "OK", note

    def run(self, daemon: Connection, ws: Workspace, settings: DistributedSettings) -> int:
        """`torchrun --standalone --nproc-per-node N -m finetuned.worker.rank WS_ROOT`, in this process."""
        import torch
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
        from torch.distributed.run import parse_args, run

        relay = Relay(daemon)
        os.environ.update({AGENT_ADDRESS: relay.address, AGENT_KEY: relay.key.hex(), AGENT_PID: str(os.getpid()),
                           STRATEGY: settings.strategy})
        if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:
            # torchrun would give each CPU rank one thread: share the cores out instead.
            os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // settings.nproc_per_node))
        args = parse_args([
            "--standalone", f"--nproc-per-node={settings.nproc_per_node}", "--max-restarts=0",
            f"--monitor-interval={MONITOR_INTERVAL}", "-m", RANK, str(ws.root),
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
