"""The base model kept loaded across jobs: what makes the next job start in seconds, not minutes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from finetuned.config import Config
from finetuned.models import memory, precision
from finetuned.models.check import check_base_model
from finetuned.models.loading import add_lora, load_model, weights_hash
from finetuned.models.precision import Precision
from finetuned.worker.tensors import seed_all
from finetuned.worker.world import World
from finetuned.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    """A base model in memory, with its trainable weights as they were when loaded."""

    key: tuple[Any, ...]
    base_path: Path
    base_hash: str
    model: torch.nn.Module
    tokenizer: Any
    fresh: dict[str, torch.Tensor] = field(default_factory=dict)  # trainable weights at their start
    dirty: bool = False  # weights differ from `fresh`
    precision: Precision = "fp32"  # what forward passes compute in (models/precision.py)
    precision_reason: str = ""  # why, for each job's log line

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}


class ModelCache:
    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.loaded: Loaded | None = None

    def get(self, config: Config, world: World, on_load: Callable[[], None]) -> Loaded:
        """The model `config` trains, reusing the loaded one when base, method and adapter shape match.

        A full fine-tune changes the base weights themselves, so once trained it is loaded again.
        Settings that cannot train raise ModelError (one line) before anything is loaded.
        """
        chosen, why = precision.resolve(config.training.precision, world.device)
        key = (config.base_model, config.method, config.lora.model_dump_json(), config.training.seed,
               config.training.activation_checkpointing, config.training.init_adapter, str(world.device), chosen)
        loaded = self.loaded
        if loaded is not None and loaded.key == key and not (config.method == "full" and loaded.dirty):
            return loaded
        self.drop()  # free the old model before loading the next
        if world.sharded and config.method == "qlora":
            raise ValueError("distributed.strategy fsdp does not shard a 4-bit (qlora) base: use ddp")
        on_load()
        # A built-in is written out once, by the main rank; the others read the folder it wrote.
        checked = world.from_main(lambda: check_base_model(config, self.ws))
        started = time.time()
        seed_all(config.training.seed)  # LoRA's initial weights depend on it
        model = load_model(checked.path, config.method, world.device, config.training.activation_checkpointing,
                           place=not world.sharded, precision=chosen)
        if config.method in ("lora", "qlora"):
            model = add_lora(model, config.lora, checked.adapter)
        if memory.injector() is not None:  # tests: out-of-memory at chosen forwards (FINETUNED_INJECT_OOM)
            memory.hook(model)
        world.prepare(model)  # sharded worlds split the weights over the ranks here, before anything copies them
        fresh = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        self.loaded = Loaded(key, checked.path, weights_hash(checked.path), model, checked.tokenizer, fresh,
                             precision=chosen, precision_reason=why)
        log.info("loaded %s (%s) in %.1fs", config.base_model, config.method, time.time() - started)
        return self.loaded

    def drop(self) -> None:
        self.loaded = None
