"""The world of several ranks on two real gloo processes: orders, sums and failures reach every rank."""

from __future__ import annotations

import multiprocessing as mp
import pickle
import traceback
from pathlib import Path

from finetuned.processes.protocol import Yield, YieldReason

SIZE = 2


def _rank(rank: int, store: str, out: str, conn) -> None:
    """One rank: joins the group through a file store, answers each question, writes what it saw."""
    import torch
    import torch.distributed as dist

    from finetuned.processes.link import Link
    from finetuned.worker.ranks import Ranks

    seen: dict[str, object] = {}
    try:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=SIZE)
        world = Ranks(Link(conn, None) if rank == 0 else None, torch.device("cpu"))
        seen["orders"] = [world.order(step) for step in range(3)]
        seen["total"] = world.total(torch.tensor([1.0, rank + 1.0])).tolist()
        param = torch.nn.Parameter(torch.zeros(3))
        param.grad = torch.full((3,), float(rank + 1))
        frozen_grad = torch.nn.Parameter(torch.zeros(2))  # no gradient on this rank: counts as zeros
        if rank == 1:
            frozen_grad.grad = torch.ones(2)
        world.sync_gradients([param, frozen_grad])
        seen["grads"] = [param.grad.tolist(), frozen_grad.grad.tolist()]
        seen["gather"] = world.gather({"rank": rank})
        seen["from_main"] = world.from_main(lambda: f"made by rank {world.rank}")
        try:
            world.from_main(lambda: int("not a number"))
        except Exception as exc:
            seen["error"] = f"{type(exc).__name__}: {exc}"
        world.barrier()
        dist.destroy_process_group()  # as worker/rank.py does: gloo's threads left at exit abort the process
    except Exception:
        seen["crash"] = traceback.format_exc()
    Path(out).write_bytes(pickle.dumps(seen))


def test_every_rank_gets_rank_0s_orders_sums_and_failures(tmp_path):
    ctx = mp.get_context("spawn")
    daemon_end, worker_end = ctx.Pipe()
    daemon_end.send(Yield(YieldReason.PAUSE))  # rank 0 reads it at its first step boundary
    procs = [ctx.Process(target=_rank, args=(r, str(tmp_path / "store"), str(tmp_path / f"rank{r}"),
                                             worker_end if r == 0 else None)) for r in range(SIZE)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    seen = [pickle.loads((tmp_path / f"rank{r}").read_bytes()) for r in range(SIZE)]
    for rank, s in enumerate(seen):
        assert "crash" not in s, s.get("crash")
        assert s["orders"] == [Yield(YieldReason.PAUSE), None, None], "the same order at the same step"
        assert s["total"] == [2.0, 3.0]
        assert s["grads"] == [[3.0, 3.0, 3.0], [1.0, 1.0]]
        assert s["gather"] == [{"rank": 0}, {"rank": 1}]
        assert s["from_main"] == "made by rank 0"
        expected = "ValueError" if rank == 0 else "RuntimeError: rank 0 failed: ValueError"
        assert s["error"].startswith(expected), s["error"]
