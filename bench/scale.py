"""One rank beside two, in one run: training throughput, and what the ranks exchange per optimizer step.

    python bench/scale.py [--model tiny|smollm2] [--examples 240] [--rounds 2] [--iters 300] [--nproc 2]

training     the real daemon trains the same file, alternating (--rounds): one process (launcher none),
             torchrun with 1 rank, torchrun with --nproc ranks. Real tokens/s and seconds per step are
             medians over each run's logged steps after the first three; "start" is the seconds from
             the drop to the first step (the group's start and model load); threads/rank is what torch
             computes with (one process: every core; torchrun: the agent's share, cores / ranks).
collectives  --nproc ranks under torchrun (gloo on CPUs, NCCL on GPUs) time what the recipe exchanges
             per optimizer step (median over --iters): the daemon's order (broadcast of one int64 from
             rank 0), the step's loss and metrics (a gather of a few floats per rank), and the model's LoRA
             gradients (all-reduce in buckets; their size is printed).

Prints a table and writes bench/results/scale.json. On a multi-GPU machine `--nproc 4` measures four.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "scale.json"
MODELS = {"tiny": ("builtin:tiny", 4, 128), "smollm2": ("builtin:smollm2-135m-instruct", 4, 256)}
WARMUP_STEPS = 3


def chat(n: int) -> str:
    return "".join(json.dumps({"messages": [
        {"role": "user", "content": f"Question {i}: what is {i} plus {i % 7}?"},
        {"role": "assistant", "content": f"{i} plus {i % 7} is {i + i % 7}. " * (1 + i % 3)}]}) + "\n"
        for i in range(n))


# --- collectives: this script again, once per rank, under torchrun ------------------------------
def collectives(model: str, iters: int, out: Path) -> None:
    import torch
    import torch.distributed as dist

    from finetuned.config import Config
    from finetuned.models.builtin import materialize
    from finetuned.models.loading import add_lora, load_model
    from finetuned.worker.ranks import Ranks, join_group

    device = join_group()
    world = Ranks(None, device)  # rank 0 without a daemon: the order is always "go on", its cost the same
    base = MODELS[model][0]
    folder = world.from_main(lambda: materialize(base, Path(os.environ["SCALE_BASE_DIR"])))
    torch.manual_seed(0)
    net = add_lora(load_model(folder, "lora", device), Config(base_model=base).lora)
    params = [p for p in net.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p)

    def timed(fn: Any) -> float:
        times = []
        for _ in range(iters):
            world.barrier()  # every rank starts together: the time is the exchange, not a rank's lag
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    result = {
        "ranks": world.size, "backend": dist.get_backend(), "device": str(device),
        "order_us": timed(lambda: world.order(0)) * 1e6,
        "totals_us": timed(lambda: world.gather((0.0, "", {"rewards/margins": (0.0, 1.0)}))) * 1e6,
        "gradients_ms": timed(lambda: world.sync_gradients(params)) * 1e3,
        "gradient_mb": sum(p.numel() * p.element_size() for p in params) / 2**20,
    }
    if world.main:
        out.write_text(json.dumps(result))
    world.barrier()  # no rank tears the group down while another still uses it
    dist.destroy_process_group()


def measure_collectives(model: str, iters: int, nproc: int, base_dir: Path) -> dict[str, Any]:
    out = base_dir.parent / "collectives.json"
    env = {**os.environ, "SCALE_BASE_DIR": str(base_dir)}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                    __file__, "--collectives-out", str(out), "--model", model, "--iters", str(iters)],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


# --- training: the real daemon ------------------------------------------------------------------
def train(root: Path, model: str, examples: int, launcher: str, nproc: int) -> dict[str, Any]:
    from finetuned.config import Config, save_config
    from finetuned.workspace import Workspace

    base, batch, seq = MODELS[model]
    ws = Workspace.at(root)
    ws.create()
    config = Config(base_model=base)
    t = config.training
    t.batch_size, t.max_seq_len, t.log_every_steps, t.checkpoint_every_steps = batch, seq, 1, 10_000
    t.mode, config.lora.dropout, config.data.holdout_fraction, config.previews.every_steps = "independent", 0, 0, 0
    config.inbox.settle_seconds = 0.2
    config.distributed.launcher, config.distributed.nproc_per_node = launcher, nproc
    save_config(ws.config_path, config)
    proc = subprocess.Popen([sys.executable, "-m", "finetuned", "run", "--root", str(root), "--no-monitor"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        tmp = ws.inbox_normal / ".data.part"
        tmp.write_text(chat(examples))
        dropped = time.time()
        tmp.rename(ws.inbox_normal / "data.jsonl")
        record = _wait_done(ws)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    lines = [json.loads(line) for line in ws.metrics_file(record["id"]).read_text().splitlines()]
    steady = lines[WARMUP_STEPS:] or lines
    cores = os.cpu_count() or 1
    threads = int(os.environ.get("OMP_NUM_THREADS", 0)) or (cores if launcher == "none" else max(1, cores // nproc))
    return {
        "steps": len(lines), "threads_per_rank": threads,
        "start_s": lines[0]["time"] - lines[0]["step_seconds"] - dropped,
        "tokens_per_s": statistics.median(r["tokens_per_second"] for r in steady),
        "step_s": statistics.median(r["step_seconds"] for r in steady),
        "final_loss": lines[-1]["loss"],
    }


def _wait_done(ws: Any, timeout: float = 3600) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for path in ws.jobs.glob("*.json"):
            try:
                record = json.loads(path.read_text())
            except ValueError:
                continue
            if record["status"] in ("completed", "failed"):
                if record["status"] == "failed":
                    raise RuntimeError(f"the job failed: {record.get('reason')}")
                return record
        time.sleep(0.2)
    raise TimeoutError("the job did not finish")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", choices=list(MODELS))
    parser.add_argument("--examples", type=int, default=240)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--collectives-out", type=Path, help=argparse.SUPPRESS)  # one rank of the collectives run
    args = parser.parse_args()
    if args.collectives_out:
        collectives(args.model, args.iters, args.collectives_out)
        return
    setups = [("one process", "none", 1), ("torchrun, 1 rank", "torchrun", 1),
              (f"torchrun, {args.nproc} ranks", "torchrun", args.nproc)]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in setups}
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = Path(tmp) / "base"
        comm = measure_collectives(args.model, args.iters, args.nproc, base_dir)
        for r in range(args.rounds):  # alternating: a drift of the machine's load hits every setup alike
            for name, launcher, nproc in setups:
                runs[name].append(train(Path(tmp) / f"ws-{r}-{launcher}-{nproc}", args.model, args.examples,
                                        launcher, nproc))
    table = {name: {key: statistics.median(run[key] for run in done) for key in done[0]}
             for name, done in runs.items()}
    step = table[setups[-1][0]]["step_s"]
    print(f"\n{args.model}, {args.examples} examples, {args.rounds} round(s), {os.cpu_count()} cores")
    print(f"{'setup':<20} {'threads/rank':>12} {'tokens/s':>9} {'s/step':>8} {'start s':>8} {'final loss':>11}")
    for name, row in table.items():
        print(f"{name:<20} {row['threads_per_rank']:>12.0f} {row['tokens_per_s']:>9.1f} {row['step_s']:>8.3f} "
              f"{row['start_s']:>8.1f} {row['final_loss']:>11.5f}")
    print(f"\nper optimizer step on {comm['ranks']} ranks ({comm['backend']}, {comm['device']}):")
    print(f"  order broadcast   {comm['order_us']:>8.1f} us  ({100 * comm['order_us'] / 1e6 / step:.3f}% of a step)")
    print(f"  loss + metrics    {comm['totals_us']:>8.1f} us")
    print(f"  gradients         {comm['gradients_ms']:>8.2f} ms  ({comm['gradient_mb']:.1f} MB of LoRA gradients)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"model": args.model, "examples": args.examples, "rounds": args.rounds,
                                   "cpu_count": os.cpu_count(), "training": table, "runs": runs,
                                   "collectives": comm}, indent=2) + "\n")
    print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
