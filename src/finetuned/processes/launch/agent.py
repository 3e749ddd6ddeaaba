"""A training worker of several ranks, seen from the daemon as one child process on one pipe.

The daemon starts this agent as it starts a single worker (processes/child.py: its own process
group, killed with the daemon). The agent asks its launcher to run the ranks (torchrun's elastic
launcher in its main thread, or a Ray Train run), and the `Relay` thread (relay.py) carries the
daemon's orders to rank 0 and rank 0's reports back, so rank 0 speaks the protocol a single worker
speaks. When the group fails, the agent reports the job in flight as crashed, with the failed rank
and its error. Every rank dies with the agent, and the agent with the daemon: a SIGKILL of the
daemon leaves no rank behind.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from finetuned.config import DistributedSettings
from finetuned.processes.launch import launcher_for

if TYPE_CHECKING:
    from finetuned.processes.link import Link
    from finetuned.workspace import Workspace


def serve(ws: Workspace, link: Link, settings_json: str) -> None:
    settings = DistributedSettings.model_validate_json(settings_json)
    sys.exit(launcher_for(settings).run(link.conn, ws, settings))
