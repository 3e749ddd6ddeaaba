"""A job's checkpoints from the loop's side: written for the world it trains in, read back whichever wrote them.

One process, or ranks that all hold the weights (ddp): the main rank writes the checkpoint
(worker/tensors.py, off the training thread), with every rank's random state in it. Sharded
weights (fsdp): every rank writes its shards at once (worker/sharded.py). Either kind resumes on
any number of ranks. A full disk pauses the line before a write (the daemon shows why).
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import torch

from finetuned import disk
from finetuned.checkpoints import TrainingProgress, is_sharded
from finetuned.config import Config, ConfigError
from finetuned.processes.protocol import WAITING_FOR_DISK, Checkpoint, Phase
from finetuned.worker import tensors
from finetuned.worker.cache import Loaded
from finetuned.worker.world import World
from finetuned.workspace import Workspace

log = logging.getLogger(__name__)

DISK_POLL_SECONDS = 5.0


class Saver:
    def __init__(self, ws: Workspace, job_id: str, world: World) -> None:
        self.ws, self.job_id, self.world = ws, job_id, world
        self.job_dir = ws.job_checkpoints(job_id)
        self.writer = tensors.Writer()

    def save(self, progress: TrainingProgress, loaded: Loaded, optimizer: torch.optim.Optimizer, config: Config,
             wait: bool) -> str:
        """Checkpoint; with `wait` it is durable on return, else it is written beside the next steps.

        Every rank calls it (each one's random state goes into the file); the main rank writes: the weights
        and the optimizer state are the same on every rank.
        """
        rngs = self.world.gather(tensors.rng_state()) if self.world.size > 1 else None
        if self.world.sharded:
            return self._save_sharded(progress, loaded, optimizer, config, rngs)
        if not self.world.main:
            return ""
        snap = tensors.snapshot(progress, loaded.trainable(), optimizer, rngs)
        self._wait_for_space(disk.checkpoint_bytes(snap.weight_bytes), config)
        path = self.writer.save(self.job_dir, snap, config.lifecycle.keep_checkpoints, wait)
        self.report_written()
        return str(path)

    def _save_sharded(self, progress: TrainingProgress, loaded: Loaded, optimizer: torch.optim.Optimizer,
                      config: Config, rngs: list[dict[str, Any]] | None) -> str:
        """Every rank writes its shards, at once (the write is a collective: it cannot run beside the steps)."""
        from finetuned.worker import sharded

        rng = tensors.rng_record(rngs) if self.world.main else None
        if self.world.main:
            params = loaded.trainable().values()
            self._wait_for_space(disk.checkpoint_bytes(sum(p.numel() * p.element_size() for p in params)), config)
        path = sharded.save(self.job_dir, progress.model_copy(), loaded.model, optimizer, rng,
                            config.lifecycle.keep_checkpoints)
        self.world.report(Checkpoint(job_id=self.job_id, step=progress.step, path=str(path)))
        return str(path)

    def restore(self, path: Path, loaded: Loaded, optimizer: torch.optim.Optimizer) -> None:
        """Weights and optimizer state from a checkpoint, whichever world wrote it and however this one holds
        them."""
        if is_sharded(path) or self.world.sharded:
            from finetuned.worker import sharded

            sharded.restore(path, loaded.model, optimizer)
            return
        copy_weights(loaded, tensors.load_weights(path))
        tensors.load_optimizer(path, optimizer)

    def join(self) -> None:
        """Every write durable, and reported."""
        self.writer.join()
        self.report_written()

    def report_written(self) -> None:
        for step, path in self.writer.written():
            self.world.report(Checkpoint(job_id=self.job_id, step=step, path=str(path)))

    def _wait_for_space(self, need: int, config: Config) -> None:
        """A full disk pauses the line (the daemon shows why) instead of failing a write half-way."""
        minimum = config.lifecycle.min_free_gb
        while not disk.enough_space(self.job_dir, need, minimum):
            with contextlib.suppress(ConfigError):  # a user may lower the threshold instead of freeing space
                minimum = self.ws.load_config().lifecycle.min_free_gb
            if disk.enough_space(self.job_dir, need, minimum):
                break
            reason = (f"{WAITING_FOR_DISK}: {disk.free_gb(self.job_dir):.2f} GB free, a checkpoint needs "
                      f"{need / 2**30:.2f} GB plus lifecycle.min_free_gb {minimum:g} GB")
            log.warning("job %s: %s", self.job_id, reason)
            self.world.report(Phase(job_id=self.job_id, phase=WAITING_FOR_DISK, reason=reason))
            time.sleep(DISK_POLL_SECONDS)


def copy_weights(loaded: Loaded, weights: dict[str, torch.Tensor]) -> None:
    params = loaded.trainable()
    missing = set(params) - set(weights)
    if missing:
        raise tensors.CheckpointMismatch(f"checkpoint lacks {len(missing)} weights, e.g. {sorted(missing)[0]}")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(weights[name])
