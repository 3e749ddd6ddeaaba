"""Whether `distributed` can train here: the devices torchrun's ranks need, or the Ray cluster Ray Train needs.

For Ray: the cluster answers at `distributed.ray.address`, it holds the resources of
`num_workers` workers, and every node sees this workspace at the same path (checkpoints and
the token cache are written by whichever node holds rank 0, and read by all). Nothing on disk
changes: a node's probe reads `config.json` and asks whether the checkpoint folder is writable.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from pathlib import Path
from typing import Any

from finetuned.config import DistributedSettings, RaySettings
from finetuned.worker.on_ray import unreachable
from finetuned.workspace import Workspace

log = logging.getLogger(__name__)

PROBE_SECONDS = 60.0  # a node that cannot answer in this long is reported as unreachable


def torchrun_problems(settings: DistributedSettings) -> tuple[str, str]:
    """(level, message): OK, WARN or FAIL for `nproc_per_node` ranks on this machine."""
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


def ray_problems(ws: Workspace, settings: RaySettings) -> tuple[str, str]:
    """(level, message): OK, WARN or FAIL for a Ray Train run on the cluster at `settings.address`."""
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
