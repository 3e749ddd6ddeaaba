"""A benchmark before and after a change, side by side in one run: a git revision against the working tree.

    python bench/revisions.py REV BENCH [--rounds 3] [-- BENCH_ARGS...]
    python bench/revisions.py HEAD~5 train_cpu --rounds 3 -- --shapes tiny --steps 20
    python bench/revisions.py HEAD~5 controls -- --models tiny --tries 5

REV is exported (`git archive`) into a temporary folder beside this checkout, so its bench script and its
code run exactly as they were; the working tree runs as it is now. The two alternate, `--rounds` times
each (before, after, after, before, ...), so drift of a shared machine falls on both. Each run writes its
own `bench/results/BENCH.json`; every number in it is collected, and the table shows the median of each
side and the ratio after/before. Writes bench/results/revisions-BENCH.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def export(rev: str, into: Path) -> Path:
    """REV's files in `into/<name>`, with the checkout's neighbours (../shared) linked beside it."""
    tree = into / REPO.name
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    for neighbour in REPO.parent.iterdir():
        if neighbour.name != REPO.name and not neighbour.name.startswith("."):
            (into / neighbour.name).symlink_to(neighbour)
    return tree


def run(tree: Path, bench: str, args: list[str]) -> dict[str, Any]:
    """One run of `tree`'s bench on `tree`'s code; returns the JSON it wrote."""
    result = tree / "bench" / "results" / f"{bench}.json"
    result.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    subprocess.run([sys.executable, str(tree / "bench" / f"{bench}.py"), *args], cwd=tree, env=env, check=True)
    return json.loads(result.read_text())


def numbers(doc: Any, prefix: str = "") -> dict[str, float]:
    """Every number in a result document, keyed by its path (a.b.c); lists of raw samples are left out."""
    out: dict[str, float] = {}
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in ("args", "raw", "cpu_count"):
                continue
            out.update(numbers(value, f"{prefix}{key}."))
    elif isinstance(doc, int | float) and not isinstance(doc, bool):
        out[prefix.rstrip(".")] = float(doc)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the revision to compare against (e.g. HEAD~3, a commit)")
    parser.add_argument("bench", help="a script of bench/, without .py (train_cpu, controls, ...)")
    parser.add_argument("--rounds", type=int, default=3)
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    a = parser.parse_args(argv[:cut])
    a.args = argv[cut + 1:]  # everything after --: the bench script's own arguments
    samples: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
    with tempfile.TemporaryDirectory(dir=REPO.parent, prefix=".bench-revision-") as tmp:
        trees = {"before": export(a.rev, Path(tmp)), "after": REPO}
        for n in range(a.rounds):
            order = ("before", "after") if n % 2 == 0 else ("after", "before")
            for side in order:
                print(f"--- round {n + 1}/{a.rounds}: {side} ({a.rev if side == 'before' else 'working tree'})",
                      flush=True)
                for key, value in numbers(run(trees[side], a.bench, a.args)).items():
                    samples[side].setdefault(key, []).append(value)
        shutil.rmtree(trees["before"] / "bench" / "results", ignore_errors=True)
    keys = [k for k in samples["after"] if k in samples["before"]]
    width = max((len(k) for k in keys), default=10)
    print(f"\n{'figure':<{width}} {'before':>12} {'after':>12} {'after/before':>13}   (medians of {a.rounds} runs)")
    table = {}
    for key in keys:
        before, after = statistics.median(samples["before"][key]), statistics.median(samples["after"][key])
        ratio = after / before if before else float("nan")
        table[key] = {"before": before, "after": after, "ratio": ratio,
                      "before_runs": samples["before"][key], "after_runs": samples["after"][key]}
        print(f"{key:<{width}} {before:>12.4g} {after:>12.4g} {ratio:>12.3f}x")
    out = REPO / "bench" / "results" / f"revisions-{a.bench}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rev": a.rev, "bench": a.bench, "args": a.args, "rounds": a.rounds,
                               "cpu_count": os.cpu_count(), "figures": table}, indent=2) + "\n")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
