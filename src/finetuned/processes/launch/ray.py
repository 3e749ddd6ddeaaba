"""`distributed.launcher: ray`: the agent drives a Ray Train run whose workers are the ranks.

The agent joins the cluster at `distributed.ray.address` as a driver and runs a `TorchTrainer` of
`num_workers` workers; Ray Train joins them in one torch process group (gloo, or NCCL with
`use_gpu`). Each worker runs the rank program `finetuned.worker.rank:on_ray`; rank 0, wherever Ray
placed it, connects back to the agent over TCP (the address and a one-time key travel in the loop's
config) and the relay carries the daemon's pipe both ways.

Checkpoints, metrics and token caches are written where a single worker writes them, in the
workspace, which every node sees at the same path (a shared filesystem). Ray keeps its own run state
under `logs/ray/`. A lost worker or node is Ray Train's to handle: `FailureConfig(max_failures=
control.max_retries)` restarts the group, the relay gives the new rank 0 the job in flight, which
resumes from its last checkpoint, and the daemon shows the restart and Ray's reason as the job's
phase. Past the limit, `fit()` fails and the job in flight crashes as with any worker. When the
daemon kills the agent, Ray ends the run with its driver.

`problems` (for `finetuned doctor`) checks that the cluster answers, holds the resources of
`num_workers` workers, and that every node sees this workspace at the same path; nothing on disk
changes: a node's probe reads `config.json` and asks whether the checkpoint folder is writable.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from finetuned.config import DistributedSettings, RaySettings
from finetuned.processes.child import entry
from finetuned.processes.launch.group import COLLECTIVE_TIMEOUT, Group
from finetuned.processes.launch.relay import Relay
from finetuned.processes.link import GATE_ENV
from finetuned.workspace import Workspace

log = logging.getLogger("finetuned.worker")

RANK = "finetuned.worker.rank:on_ray"  # one Ray Train worker's program
CONNECT_SECONDS = 5.0
PROBE_SECONDS = 60.0  # a node that cannot answer in this long is reported as unreachable


class OnRay(Group):
    name = "ray"

    def world_size(self, settings: DistributedSettings) -> int:
        return settings.ray.num_workers

    def problems(self, ws: Workspace, settings: DistributedSettings) -> tuple[str, str]:
        return ray_problems(ws, settings.ray)

    def run(self, daemon: Connection, ws: Workspace, settings: DistributedSettings) -> int:
        import ray
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer
        from ray.util.queue import Queue

        from finetuned.processes.launch.ray_failures import Failures

        retries = ws.load_config().control.max_retries
        ray_settings = settings.ray
        # Every interface: rank 0 may be on any node (it proves itself with the key); Ray names the address to use.
        relay = Relay(daemon, ("0.0.0.0", 0), "AF_INET")
        problem = unreachable(ray_settings.address)
        if problem:
            relay.crashed(f"no Ray cluster: {problem}")
            return 1
        ray.init(address=ray_settings.address, logging_level=logging.WARNING)
        address = [ray.util.get_node_ip_address(), relay.address[1]]
        failures = Queue(actor_options={"num_cpus": 0})
        relay.on_reconnect = lambda: relay.restarting(f"Ray Train restarted the workers after {_drain(failures)}")
        trainer = TorchTrainer(
            entry(RANK),
            train_loop_config={"root": str(ws.root), "address": address, "key": relay.key.hex(),
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


def _drain(failures: Any) -> str:
    """What Ray Train's controller saw fail since the last restart (ray_failures.py)."""
    seen = []
    while not failures.empty():
        seen.append(failures.get_nowait())
    return "; ".join(dict.fromkeys(seen)) or "a worker was lost"


def ray_problems(ws: Workspace, settings: RaySettings) -> tuple[str, str]:
    """OK, WARN or FAIL for a Ray Train run on the cluster at `settings.address`."""
    try:
        import ray
    except ImportError:
        return "FAIL", "launcher ray needs Ray on this machine: pip install 'finetuned[ray]'"
    problem = unreachable(settings.address)
    if problem:
        return "FAIL", f"no Ray cluster at {settings.address}: {problem}"
    try:
        ray.init(address=settings.address, logging_level=logging.ERROR, log_to_driver=False)
    except Exception as exc:  # ConnectionError, or whatever Ray raises for a bad address
        return "FAIL", f"no Ray cluster at {settings.address}: {exc}"
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        short = _missing_resources(ray.cluster_resources(), settings)
        if short:
            return "FAIL", f"{len(nodes)} node(s), but {settings.num_workers} workers need {short}"
        unreadable = _workspace_on_nodes(ray, ws, nodes)
        if unreadable:
            return "FAIL", f"the workspace is not shared with every node: {'; '.join(unreadable)}"
        gpu = ", GPUs" if settings.use_gpu else ""
        return "OK", (f"Ray at {settings.address}: {len(nodes)} node(s) see {ws.root}; room for "
                      f"{settings.num_workers} workers{gpu}")
    finally:
        ray.shutdown()


def _per_worker(settings: RaySettings) -> dict[str, float]:
    """What Ray Train reserves for one worker (its own default: one CPU; one GPU with use_gpu)."""
    need = dict(settings.resources_per_worker) or {"CPU": 1.0}
    if settings.use_gpu:
        need.setdefault("GPU", 1.0)
    return need


def _missing_resources(cluster: dict[str, float], settings: RaySettings) -> str:
    short = []
    for name, amount in _per_worker(settings).items():
        total = amount * settings.num_workers
        if cluster.get(name, 0.0) < total:
            short.append(f"{total:g} {name} (the cluster has {cluster.get(name, 0.0):g})")
    return ", ".join(short)


def probe(root: str, digest: str) -> tuple[str, str | None]:
    """Run on one node: (host, None) when it sees this workspace as it is here, else (host, what is wrong)."""
    ws = Workspace(Path(root))
    host = socket.gethostname()
    try:
        found = hashlib.sha256(ws.config_path.read_bytes()).hexdigest()
    except OSError as exc:
        return host, f"cannot read {ws.config_path}: {exc.strerror}"
    if found != digest:
        return host, f"{ws.config_path} differs from this machine's: another folder at the same path"
    if not os.access(ws.models if ws.models.exists() else ws.root, os.W_OK):
        return host, f"{ws.root} is not writable there"
    return host, None


def _workspace_on_nodes(ray: Any, ws: Workspace, nodes: list[dict[str, Any]]) -> list[str]:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    digest = hashlib.sha256(ws.config_path.read_bytes()).hexdigest()
    remote = ray.remote(num_cpus=0)(probe)
    pending = [remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
               .remote(str(ws.root), digest) for n in nodes]
    done, late = ray.wait(pending, num_returns=len(pending), timeout=PROBE_SECONDS)
    problems = [f"{host}: {problem}" for host, problem in ray.get(done) if problem]
    if late:
        problems.append(f"{len(late)} node(s) did not answer in {PROBE_SECONDS:.0f}s")
    return problems
