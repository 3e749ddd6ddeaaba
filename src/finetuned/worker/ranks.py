"""A world of several processes under torch.distributed: rank 0 talks to the daemon, every rank trains.

torchrun (worker/rank.py `main`) or Ray Train (worker/rank.py `on_ray`) starts the processes and sets the
environment torch.distributed reads (RANK, WORLD_SIZE, MASTER_ADDR, ...): the process group comes
from their rendezvous, never from ours. Gloo on CPUs, NCCL on GPUs, one GPU per rank.

Data parallel, the way DDP is: the weights and the optimizer state are the same on every rank
(they start equal, from the same seed or checkpoint, and every rank applies the same summed
gradient), each rank computes a fixed part of every micro-batch (data/loader.py `part`), and the
gradients are summed once per optimizer step, after the last micro-batch (where DDP's `no_sync`
accumulation ends), in buckets of about `BUCKET_BYTES`. The loss goes around the model's
`forward` (logits only where loss is taken, worker/loss.py), which the DDP wrapper would not see.
With strategy fsdp each rank holds a part of the weights instead (worker/sharded.py), and FSDP
sums the gradients itself in the backward pass.

Per step the ranks exchange: the daemon's order (one int64, broadcast from rank 0), the gradients,
and the step's loss, metric sums and out-of-memory verdict (one small gather, worker/fitting.py).
bench/scale.py measures each.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from finetuned.processes.launch.group import COLLECTIVE_TIMEOUT
from finetuned.processes.link import Link
from finetuned.processes.protocol import Ask, Order, Report, Yield, YieldReason
from finetuned.worker.objectives import Objective

T = TypeVar("T")

BUCKET_BYTES = 25 * 2**20  # DDP's default bucket size
# Between jobs the ranks hear from rank 0 at least this often, whether an order came or not, so an idle
# group never waits in one collective for long.
KEEPALIVE_SECONDS = 60.0


def join_group() -> torch.device:
    """This rank's device, with the process group joined (Ray Train has joined it already)."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=COLLECTIVE_TIMEOUT,
                                device_id=device if cuda else None)
    return device


class Ranks:
    """One rank of the group; `link` is rank 0's line to the daemon (None on the other ranks, and on
    rank 0 where no daemon gives orders: a benchmark). `strategy`: ddp (every rank holds the weights)
    or fsdp (each holds a part, worker/sharded.py)."""

    def __init__(self, link: Link | None, device: torch.device, strategy: str = "ddp") -> None:
        self.rank = dist.get_rank()
        self.size = dist.get_world_size()
        self.device = device
        self.sharded = strategy == "fsdp"
        self._roots: weakref.WeakKeyDictionary[torch.nn.Module, Any] = weakref.WeakKeyDictionary()
        if link is not None and self.rank != 0:
            raise ValueError("rank 0 alone talks to the daemon")
        self._link = link
        self._code = torch.zeros(1, dtype=torch.int64, device=device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def next_order(self) -> Order:
        """The daemon's next order to the worker (train, shutdown), waited for by rank 0 and given to all."""
        assert self.rank != 0 or self._link is not None, "rank 0 has no line to the daemon"
        while True:
            box: list[Any] = [self._link.order_within(KEEPALIVE_SECONDS) if self._link is not None else None]
            dist.broadcast_object_list(box, src=0)
            if box[0] is not None:
                return box[0]
            if self._link is not None:
                self._link.check_parent()

    def order(self, step: int) -> Yield | Ask | None:
        if self._link is not None:
            order = self._link.poll(step)
            if isinstance(order, Ask):
                return order  # rank 0 answers it and asks again; the other ranks wait in the broadcast
            self._code.fill_(0 if order is None else order.reason.code)
        dist.broadcast(self._code, src=0)
        reason = YieldReason.from_code(int(self._code.item()))
        return Yield(reason) if reason is not None else None

    def yield_waiting(self) -> bool:
        return self._link is not None and self._link.yield_waiting()

    def report(self, message: Report) -> None:
        if self._link is not None:
            self._link.send(message)

    def sync_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        if self.sharded:
            return  # FSDP reduce-scattered them in the backward pass
        for bucket in _buckets(params):
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in bucket]
            flat = _flatten_dense_tensors(grads)
            dist.all_reduce(flat)
            for param, summed in zip(bucket, _unflatten_dense_tensors(flat, grads), strict=True):
                param.grad = summed

    def total(self, values: torch.Tensor) -> torch.Tensor:
        summed = values.detach().clone()
        dist.all_reduce(summed)
        return summed

    def gather(self, value: T) -> list[T]:
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, value)
        return out

    def from_main(self, fn: Callable[[], T]) -> T:
        error: Exception | None = None
        box: list[Any] = [None]
        if self.main:
            try:
                box[0] = (True, fn())
            except Exception as exc:  # every rank must learn of it, or the others wait forever
                error = exc
                box[0] = (False, f"{type(exc).__name__}: {exc}")
        dist.broadcast_object_list(box, src=0)
        ok, value = box[0]
        if error is not None:
            raise error
        if not ok:
            raise RuntimeError(f"rank 0 failed: {value}")
        return value

    def barrier(self) -> None:
        dist.barrier()

    def prepare(self, model: torch.nn.Module) -> None:
        if self.sharded:
            from finetuned.worker.sharded import shard_model

            self._roots[model] = shard_model(model, self.device)

    def runner(self, model: torch.nn.Module, objective: Objective) -> tuple[torch.nn.Module, Objective]:
        root = self._roots.get(model)
        if root is None:
            return model, objective
        from finetuned.worker.sharded import Through

        return root, Through(objective, root)


def _buckets(params: Sequence[torch.nn.Parameter]) -> list[list[torch.nn.Parameter]]:
    """Parameters in runs of one dtype and about BUCKET_BYTES: one all-reduce each."""
    buckets: list[list[torch.nn.Parameter]] = []
    size = 0
    for param in params:
        nbytes = param.numel() * param.element_size()
        if not buckets or buckets[-1][0].dtype != param.dtype or size + nbytes > BUCKET_BYTES:
            buckets.append([])
            size = 0
        buckets[-1].append(param)
        size += nbytes
    return buckets
