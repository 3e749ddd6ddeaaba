"""strategy "fsdp": the weights, gradients and optimizer state sharded over the ranks (FSDP2, `fully_shard`).

For what does not fit one device: a full fine-tune, or LoRA on a large base. Each decoder layer is a
`fully_shard` unit, and a root unit (`Root`) holds the rest (embeddings, final norm, output layer);
its forward is the objective's loss, so FSDP gathers each unit's weights just before it computes and
frees them after, and reduce-scatters the gradients in the backward pass. Gradients are summed, not
averaged (each rank's loss is already its share of the whole step's mean, data/loader.py `part`), and every
rank runs the same passes: `shard` gives each rank a part of every micro-batch.

Checkpoints are sharded: every rank writes its shards of the trainable weights and the optimizer
state with torch.distributed.checkpoint into `checkpoint-STEP.tmp/sharded/`; rank 0 adds every rank's
random state and state.json and renames the folder, so it is complete or absent as any checkpoint.
DCP reshards on load: a job saved on 4 ranks resumes on 2, or on one process (which reads a sharded
checkpoint without a process group), and a checkpoint of one process loads into sharded weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard

from finetuned.checkpoints import OPTIMIZER, RNG, SHARDED, STATE, WEIGHTS, TrainingProgress, is_sharded, path_for, prune
from finetuned.fsio import atomic_write_json, publish_dir, remove_tree
from finetuned.worker.objectives import Objective
from finetuned.worker.tensors import CheckpointMismatch

TRAINABLE = StateDictOptions(ignore_frozen_params=True)  # a checkpoint holds what trains, as weights.safetensors
# Setting: the frozen weights are absent on purpose. The trainable ones are checked: DCP refuses a key the
# checkpoint lacks, and load_whole compares the names itself.
INTO = StateDictOptions(ignore_frozen_params=True, strict=False)


class Root(torch.nn.Module):
    """The root FSDP unit: the model, with the objective's loss as its forward."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.objective: Objective | None = None

    def forward(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert self.objective is not None, "set the job's objective first"
        return self.objective.loss(self.model, batch)


class Through:
    """The job's objective, computed through the root's forward (the only way FSDP gathers its weights)."""

    def __init__(self, objective: Objective, root: Root) -> None:
        self.objective = objective
        self.name = objective.name
        root.objective = objective

    def units(self, batch: Any) -> int:
        return self.objective.units(batch)

    def loss(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return model(batch)


def shard_model(model: torch.nn.Module, device: torch.device) -> Root:
    """Shard `model` in place over every rank: one unit per decoder layer, the rest in the root."""
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for layer in base.get_decoder().layers:
        fully_shard(layer, mesh=mesh)
    root = Root(model)
    fully_shard(root, mesh=mesh)
    for module in root.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)  # sum: each rank's loss is its share of the step's mean
            module.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no pre-multiplied sum)
    return root


def save(job_dir: Path, progress: TrainingProgress, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         rng: dict[str, Any] | None, keep: int) -> Path:
    """Every rank writes its shards; rank 0 (the one with `rng`) completes the folder. Returns its path."""
    final = path_for(job_dir, progress.step)
    if (final / STATE).exists():
        return final  # this exact state is on disk already (a pause right after a periodic save)
    tmp = final.with_name(final.name + ".tmp")
    main = rng is not None
    if main:
        remove_tree(tmp)
        remove_tree(final)  # a folder without state.json is debris
        tmp.mkdir(parents=True)
    dist.barrier()  # the folder exists before any rank writes into it
    weights, optim = get_state_dict(model, optimizer, options=TRAINABLE)
    dcp.save({"model": weights, "optim": optim}, checkpoint_id=tmp / SHARDED)
    if main:  # DCP's save returns on the coordinator once every rank's shards are written
        torch.save(rng, tmp / RNG)
        atomic_write_json(tmp / STATE, progress.model_dump())
        publish_dir(tmp, final)
        prune(job_dir, keep)
    return final


def restore(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Weights and optimizer state of any checkpoint where either is sharded: the checkpoint, or the weights."""
    if is_sharded(path):
        load(path, model, optimizer)
    else:
        from safetensors.torch import load_file

        load_whole(load_file(path / WEIGHTS), torch.load(path / OPTIMIZER, weights_only=False), model, optimizer)


def load(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Weights and optimizer state from a sharded checkpoint, into sharded weights or whole ones."""
    weights, optim = get_state_dict(model, optimizer, options=TRAINABLE)  # the layout to fill
    state = {"model": weights, "optim": optim}
    dcp.load(state, checkpoint_id=path / SHARDED, no_dist=not dist.is_initialized())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"], options=INTO)


def load_whole(weights: dict[str, torch.Tensor], optimizer_state: dict[str, Any], model: torch.nn.Module,
               optimizer: torch.optim.Optimizer) -> None:
    """A checkpoint of one process (or of DDP) into sharded weights: each rank keeps its own shards."""
    full = StateDictOptions(full_state_dict=True, ignore_frozen_params=True, strict=False)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    missing = set(names) - set(weights)
    if missing:
        raise CheckpointMismatch(f"checkpoint lacks {len(missing)} weights, e.g. {sorted(missing)[0]}")
    by_name = {names[i]: s for i, s in optimizer_state["state"].items()}  # optimizer.pt counts parameters
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in optimizer_state["param_groups"]]
    set_state_dict(model, optimizer, model_state_dict=weights,
                   optim_state_dict={"state": by_name, "param_groups": groups}, options=full)


def full_weights(model: torch.nn.Module, trainable_only: bool) -> dict[str, torch.Tensor]:
    """Every rank calls it; every rank gets the whole weights, on the CPU (to publish the adapter or model)."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)
    weights, _ = get_state_dict(model, [], options=options)
    return weights
