"""What the launchers of several ranks share: the daemon's child is their agent (agent.py), which relays
the daemon's pipe to rank 0; rank 0 connects back with the address and key the agent gives it."""

from __future__ import annotations

import os
from datetime import timedelta
from multiprocessing.connection import Client

from finetuned.config import DistributedSettings
from finetuned.processes.handle import ChildHandle
from finetuned.processes.link import Link

AGENT = "finetuned.processes.launch.agent"
# Set by the agent for its ranks: where rank 0 finds it, the key that proves the rank is its own, its pid.
AGENT_ADDRESS = "FINETUNED_AGENT_ADDRESS"
AGENT_KEY = "FINETUNED_AGENT_KEY"
AGENT_PID = "FINETUNED_AGENT_PID"
STRATEGY = "FINETUNED_STRATEGY"  # distributed.strategy: ddp or fsdp
# Within a job a rank may wait long for rank 0 (previews, a full disk): a collective gives up only after
# this. A hung rank is the daemon's to find (control.step_timeout_seconds) and to kill with its group.
COLLECTIVE_TIMEOUT = timedelta(days=1)


class Group:
    """A launcher of several ranks: the daemon's training child is their agent."""

    name: str

    def world_size(self, settings: DistributedSettings) -> int:
        raise NotImplementedError

    def child(self, ws_root: str, settings: DistributedSettings) -> ChildHandle:
        name = f"training group ({self.name}, {self.world_size(settings)} ranks)"
        return ChildHandle(ws_root, AGENT, name, settings.model_dump_json(), lazy=False)


def connect(address: object, key: str, parent_pid: int | None) -> Link:
    """Rank 0's line to the daemon, through the agent's relay."""
    return Link(Client(address, authkey=bytes.fromhex(key)), parent_pid)  # type: ignore[arg-type]


def connect_from_environment(parent_pid: int) -> Link:
    """Rank 0 of torchrun: the agent's address and key are in its environment."""
    return connect(os.environ[AGENT_ADDRESS], os.environ[AGENT_KEY], parent_pid)
