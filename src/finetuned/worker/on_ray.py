"""Training on a Ray cluster: the group's agent drives a Ray Train run whose workers are the ranks.

With `distributed.launcher: "ray"` the agent (worker/group.py) joins the cluster at
`distributed.ray.address` as a driver and runs a `TorchTrainer` of `num_workers` workers; Ray
Train joins them in one torch process group (gloo, or NCCL with `use_gpu`). Each worker runs
`train_loop`, the order loop of a torchrun rank; rank 0, wherever Ray placed it, connects back to
the agent over TCP (the address and a one-time key travel in the loop's config) and the relay
carries the daemon's pipe both ways.

Checkpoints, metrics and token caches are written where a single worker writes them, in the
workspace, which every node sees at the same path (a shared filesystem): the daemon reads them as
always. Ray keeps its own run state under `logs/ray/`. A lost worker or node is Ray Train's to
handle: `FailureConfig(max_failures=control.max_retries)` restarts the group, the relay gives the
new rank 0 the job in flight, which resumes from its last checkpoint, and the daemon shows the
restart and Ray's reason as the job's phase. Past the limit, `fit()` fails and the job in flight
crashes as with any worker. When the daemon kills the agent, Ray ends the run with its driver.
"""

from __future__ import annotations

import logging
import os
import socket
from multiprocessing.connection import Client, Connection
from pathlib import Path
from typing import Any

from finetuned.config import DistributedSettings
from finetuned.worker.main import GATE_ENV
from finetuned.worker.relay import Relay
from finetuned.workspace import Workspace

log = logging.getLogger("finetuned.worker")

CONNECT_SECONDS = 5.0


def train_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: a rank like torchrun's, its orders from rank 0."""
    import ray.train
    import ray.train.torch

    from finetuned.logs import route_library_output, setup_logging
    from finetuned.worker.main import Link, serve
    from finetuned.worker.rank import quiet_unless_main
    from finetuned.worker.ranks import Ranks

    ws = Workspace(Path(config["root"]))
    rank = ray.train.get_context().get_world_rank()
    if config.get("gate"):  # the tests' step gate (worker/main.py): workers get the driver's, not its environment
        os.environ[GATE_ENV] = config["gate"]
    setup_logging(ws, "training", stream=False)
    route_library_output()
    quiet_unless_main(rank)
    link = None
    if rank == 0:  # Ray ends its workers with the driver: no parent to watch here
        link = Link(Client(tuple(config["address"]), authkey=bytes.fromhex(config["key"])), None)
    world = Ranks(link, ray.train.torch.get_device(), config["strategy"])
    serve(ws, world, world.next_order)


def unreachable(address: str, timeout: float = CONNECT_SECONDS) -> str | None:
    """Why nothing answers at a `HOST:PORT` address, or None. `ray.init` would retry for minutes: this
    answers at once for the commonest mistake (a wrong address, a head node that is down)."""
    if address == "auto" or "://" in address or ":" not in address:
        return None  # Ray finds (or refuses) these itself, quickly
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return None
    except (OSError, ValueError) as exc:
        return f"nothing answers at {address} ({exc})"


def run_on_ray(conn: Connection, ws_root: str, settings: DistributedSettings) -> int:
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

    from finetuned.worker.ranks import COLLECTIVE_TIMEOUT
    from finetuned.worker.ray_failures import Failures

    ws = Workspace(Path(ws_root))
    retries = ws.load_config().control.max_retries
    ray_settings = settings.ray
    # Every interface: rank 0 may be on any node (it proves itself with the key); Ray names the address to use.
    relay = Relay(conn, ("0.0.0.0", 0), "AF_INET")
    problem = unreachable(ray_settings.address)
    if problem:
        relay.crashed(f"no Ray cluster: {problem}")
        return 1
    ray.init(address=ray_settings.address, logging_level=logging.WARNING)
    address = [ray.util.get_node_ip_address(), relay.address[1]]
    failures = Queue(actor_options={"num_cpus": 0})
    relay.on_reconnect = lambda: relay.restarting(f"Ray Train restarted the workers after {_drain(failures)}")
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"root": ws_root, "address": address, "key": relay.key.hex(),
                           "gate": os.environ.get(GATE_ENV), "strategy": settings.strategy},
        torch_config=TorchConfig(timeout_s=int(COLLECTIVE_TIMEOUT.total_seconds())),
        scaling_config=ScalingConfig(num_workers=ray_settings.num_workers, use_gpu=ray_settings.use_gpu,
                                     resources_per_worker=ray_settings.resources_per_worker or None),
        run_config=RunConfig(name=f"finetuned-{os.getpid()}", storage_path=str(ws.ray_storage),
                             failure_config=FailureConfig(max_failures=retries), callbacks=[Failures(failures)]),
    )
    log.info("starting %d Ray Train workers on %s", ray_settings.num_workers, ray_settings.address)
    try:
        trainer.fit()
    except Exception as exc:  # TrainingFailedError past max_failures, or the cluster gone
        reason = f"Ray Train failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        log.error("%s", reason)
        relay.crashed(reason)
        return 1
    return 0


def _drain(failures: Any) -> str:
    """What Ray Train's controller saw fail since the last restart (worker/ray_failures.py)."""
    seen = []
    while not failures.empty():
        seen.append(failures.get_nowait())
    return "; ".join(dict.fromkeys(seen)) or "a worker was lost"
