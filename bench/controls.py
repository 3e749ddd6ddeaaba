"""Control latencies of a real daemon: pause, resume, preemption, return.

    python bench/controls.py [--models tiny smollm2] [--tries 5]

Starts `finetuned run` on builtin:tiny and builtin:smollm2-135m-instruct, trains a
long job, and measures (median of --tries):

  pause     `.pause` touched -> checkpoint durable and `paused` in queue.json
  resume    `.pause` removed -> the next optimizer step finished
  preempt   priority file taken into the queue -> its first optimizer step finished
  return    the priority job's last step -> the preempted job's next step

beside the median step time, since the goal (issue 3) is "at most one training
step plus one second, no model reload". Times of steps come from the worker's
metrics lines (log_every_steps = 1). Prints a table and writes
bench/results/controls.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from finetuned.config import Config, save_config
from finetuned.workspace import Workspace

RESULTS = Path(__file__).parent / "results" / "controls.json"
MODELS = {
    "tiny": ("builtin:tiny", 2, 128),
    "smollm2": ("builtin:smollm2-135m-instruct", 1, 128),
}


def chat(n: int, tag: str) -> str:
    return "".join(
        json.dumps({"messages": [{"role": "user", "content": f"{tag} question {i}?"},
                                 {"role": "assistant", "content": f"{tag} answer {i}, done."}]}) + "\n"
        for i in range(n))


def wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise TimeoutError(what)


class Bench:
    def __init__(self, root: Path, model: str) -> None:
        base, batch, seq = MODELS[model]
        self.ws = Workspace.at(root)
        self.ws.create()
        config = Config(base_model=base)
        config.training.batch_size, config.training.max_seq_len = batch, seq
        config.training.log_every_steps, config.training.checkpoint_every_steps = 1, 10_000
        config.training.mode = "independent"
        config.data.packing, config.data.holdout_fraction = False, 0.0
        config.inbox.settle_seconds = 0.2
        save_config(self.ws.config_path, config)
        self.proc = subprocess.Popen([sys.executable, "-m", "finetuned", "run", "--root", str(root), "--no-monitor"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)

    def drop(self, name: str, text: str, priority: bool = False) -> None:
        folder = self.ws.inbox_priority if priority else self.ws.inbox_normal
        tmp = folder / f".{name}.part"
        tmp.write_text(text)
        tmp.rename(folder / name)

    def job(self, file: str) -> dict[str, Any] | None:
        for path in self.ws.jobs.glob("*.json"):
            try:
                record = json.loads(path.read_text())
            except ValueError:
                continue
            if record["file"] == file:
                return record
        return None

    def step_times(self, file: str) -> list[tuple[int, float]]:
        job = self.job(file)
        path = self.ws.metrics_file(job["id"]) if job else None
        if path is None or not path.exists():
            return []
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [(r["step"], r["time"]) for r in lines]

    def queue_status(self, file: str) -> str | None:
        try:
            doc = json.loads(self.ws.queue_json.read_text())
        except (OSError, ValueError):
            return None
        return next((e["status"] for e in doc["queue"] if e["file"] == file), None)


def measure(model: str, tries: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp) / "ws", model)
        try:
            bench.drop("long.jsonl", chat(4000, "long"))
            wait(lambda: len(bench.step_times("long.jsonl")) >= 3, 600, "training to start")
            out: dict[str, list[float]] = {"pause": [], "resume": [], "preempt": [], "return": []}
            for _ in range(tries):
                t0 = time.time()
                bench.ws.pause_file.touch()
                wait(lambda: bench.queue_status("long.jsonl") == "paused", 300, "pause")
                out["pause"].append(time.time() - t0)
                seen = len(bench.step_times("long.jsonl"))
                t0 = time.time()
                bench.ws.pause_file.unlink()
                wait(lambda seen=seen: len(bench.step_times("long.jsonl")) > seen, 300, "resume")
                out["resume"].append(bench.step_times("long.jsonl")[-1][1] - t0)
            for n in range(tries):
                name = f"urgent{n}.jsonl"
                bench.drop(name, chat(4, f"urgent{n}"), priority=True)
                wait(lambda name=name: bench.job(name), 60, "admission")
                t0 = time.time()
                first = wait(lambda name=name: bench.step_times(name), 300, "priority step")
                out["preempt"].append(first[0][1] - t0)
                wait(lambda name=name: (bench.job(name) or {}).get("status") == "completed", 300, "priority done")
                last = bench.step_times(name)[-1][1]
                back = wait(lambda last=last: [t for _, t in bench.step_times("long.jsonl") if t > last], 300, "return")
                out["return"].append(back[0] - last)
            steps = bench.step_times("long.jsonl")
            gaps = [b[1] - a[1] for a, b in itertools.pairwise(steps) if b[0] == a[0] + 1]
        finally:
            bench.close()
    result = {name: statistics.median(values) for name, values in out.items()}
    result["step"] = statistics.median(gaps)
    result["tries"] = tries
    result["raw"] = out
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--tries", type=int, default=5)
    args = parser.parse_args()
    results = {model: measure(model, args.tries) for model in args.models}
    print(f"\n{'model':<10} {'step s':>8} {'pause s':>8} {'resume s':>9} {'preempt s':>10} {'return s':>9}"
          "   (goal: each <= one step + 1 s)")
    for model, r in results.items():
        print(f"{model:<10} {r['step']:>8.2f} {r['pause']:>8.2f} {r['resume']:>9.2f} {r['preempt']:>10.2f} "
              f"{r['return']:>9.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(RESULTS.read_text())["results"] if RESULTS.exists() else {}
    RESULTS.write_text(json.dumps({"cpu_count": os.cpu_count(), "results": {**previous, **results}}, indent=2) + "\n")
    print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
