"""What evaluation costs a training job: the same job with suites off, within their budget, and unbounded.

    python bench/eval_cost.py [--model builtin:tiny] [--steps 60] [--every 10] [--cases 16] [--rounds 2]

The real recipe runs in-process on the Alpaca demo set; a suite of `--cases` prompts from the
same set (scored `contains`, answers of `evaluation.max_new_tokens` tokens) plus four `choice`
cases runs every `--every` steps. Three settings, alternated `--rounds` times:

  off         no suites
  budgeted    evaluation.budget 0.1 (the default): a round is skipped while evaluation is ahead
  unbounded   evaluation.budget 1.0: every round runs, to show what the budget saves

Reported per setting (medians over rounds): training tokens/s over the steps alone, end-to-end
tokens/s from the first step to the end (suites, checkpoints included), the rounds run, and
evaluation's share of training time (the end-of-job round, which always runs, apart). The
goal: the budgeted share stays within the budget. Writes bench/results/eval_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from finetuned.config import Config, save_config
from finetuned.models.builtin import materialize
from finetuned.processes.protocol import Completed, Step, Train
from finetuned.queue.job import Job, JobStatus
from finetuned.worker.cache import ModelCache
from finetuned.worker.recipe import run_job
from finetuned.worker.world import Solo
from finetuned.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
ALPACA = REPO.parent / "shared" / "datasets" / "alpaca_en_demo.json"
RESULTS = REPO / "bench" / "results" / "eval_cost.json"
SETTINGS = {"off": None, "budgeted": 0.1, "unbounded": 1.0}


def suite(cases: int) -> list[dict[str, Any]]:
    rows = json.loads(ALPACA.read_text())[-cases:]
    generated = [{"prompt": r["instruction"], "expected": (r["output"].split() or ["."])[0], "scorer": "contains"}
                 for r in rows]
    choices = [{"prompt": r["instruction"], "choices": [r["output"][:40], "I cannot help with that."],
                "expected": r["output"][:40], "scorer": "choice"} for r in rows[:4]]
    return generated + choices


def run(base: Path, work: Path, name: str, budget: float | None, a: argparse.Namespace) -> dict[str, Any]:
    ws = Workspace.at(work / f"ws-{name}-{time.monotonic_ns()}")
    ws.create()
    config = Config(base_model=str(base))
    config.training.batch_size, config.training.max_seq_len, config.training.max_steps = 4, 256, a.steps
    config.training.checkpoint_every_steps = 10_000
    config.training.log_every_steps = 1
    config.data.holdout_fraction, config.data.overlong = 0.0, "truncate"
    config.previews.every_steps = 0
    config.evaluation.every_steps, config.evaluation.max_new_tokens = a.every, a.max_new_tokens
    if budget is not None:
        config.evaluation.budget = budget
        ws.evals.mkdir()
        (ws.evals / "alpaca.jsonl").write_text("".join(json.dumps(c) + "\n" for c in suite(a.cases)))
    save_config(ws.config_path, config)
    reports: list[tuple[float, Any]] = []
    world = Solo(lambda m: reports.append((time.perf_counter(), m)), lambda _step: None)
    job = Job(id="bench", file=ALPACA.name, order=1.0, path=str(ALPACA), status=JobStatus.TRAINING)
    run_job(ws, Train(job=job, file=ALPACA, config=config), ModelCache(ws), world)
    steps = [(t, m) for t, m in reports if isinstance(m, Step)]
    done = next(t for t, m in reports if isinstance(m, Completed))
    lines = [json.loads(line) for line in ws.metrics_file("bench").read_text().splitlines()]
    rounds = [line for line in lines if "eval_seconds" in line]
    during = sum(r["eval_seconds"] for r in rounds if r["step"] < a.steps)
    train = sum(m.step_seconds for _, m in steps)
    tokens = steps[-1][1].tokens
    first = steps[0][0] - steps[0][1].step_seconds
    return {"train_tokens_per_s": tokens / train, "end_to_end_tokens_per_s": tokens / (done - first),
            "rounds": len(rounds), "eval_share": during / train,
            "final_round_s": next((r["eval_seconds"] for r in rounds if r["step"] == a.steps), 0.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    a = parser.parse_args()
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        base = materialize(a.model, Path(tmp) / "base")
        for _ in range(a.rounds):
            for name, budget in SETTINGS.items():
                results[name].append(run(base, Path(tmp), name, budget, a))
    summary = {name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
               for name, runs in results.items()}
    off = summary["off"]["train_tokens_per_s"]
    print(f"\n{a.model}: {a.steps} steps, suites of {a.cases}+4 cases every {a.every} steps, {a.rounds} rounds")
    print(f"{'setting':<11} {'train tok/s':>12} {'end-to-end tok/s':>17} {'vs off':>7} {'rounds':>7} "
          f"{'eval share':>11} {'budget':>7} {'final round s':>14}")
    for name, row in summary.items():
        budget = SETTINGS[name]
        print(f"{name:<11} {row['train_tokens_per_s']:>12.0f} {row['end_to_end_tokens_per_s']:>17.0f} "
              f"{row['end_to_end_tokens_per_s'] / off:>6.2f}x {row['rounds']:>7.0f} {row['eval_share']:>10.1%} "
              f"{'-' if budget is None else f'{budget:.0%}':>7} {row['final_round_s']:>14.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"cpu_count": os.cpu_count(), "args": vars(a), "summary": summary,
                                   "runs": results}, indent=2) + "\n")
    print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
