"""Ingestion benchmark: validate + tokenise a generated 300k-example chat file.

    python bench/ingest.py [--examples 300000] [--max-seq-len 1024] [--keep DIR]

Generates a chat JSONL file (varied lengths, some system prompts, some
multi-turn) in a temporary folder, runs `validate_file` then `prepare` with
SmolLM2's tokenizer, prints a table of examples/s and peak RSS per stage, and
writes the figures to bench/results/ingest.json. Goals (issue 4): at least
5,000 examples/s and under 1.5 GB peak RSS on two cores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import random
import resource
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from finetuned.data import prepare, validate_file

log = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results" / "ingest.json"
SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a terse expert. Answer in one paragraph.",
    "Answer as a pirate would.",
    "You are a careful math tutor; show your steps.",
    "Reply in plain English without lists.",
]


class Words:
    """A Zipf-distributed vocabulary of made-up words: like natural text, a few words are
    very common and most are rare, so the tokenizer's word cache hits as often as on real data."""

    def __init__(self, rng: random.Random, size: int = 30_000) -> None:
        syllables = [
            "ka",
            "lo",
            "mi",
            "ner",
            "to",
            "sa",
            "vin",
            "qu",
            "el",
            "dra",
            "po",
            "shi",
            "an",
            "u",
            "re",
        ]
        common = ["the", "a", "is", "of", "and", "to", "in", "it", ",", ".", "?", "\n", "42", "été", "数据"]
        made_up = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(size)]
        self.vocab = common + made_up
        self.cum_weights = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(self.vocab))))
        self.rng = rng

    def sentence(self, mean_words: int) -> str:
        n = max(1, min(int(self.rng.expovariate(1 / mean_words)), 6 * mean_words))
        return " ".join(self.rng.choices(self.vocab, cum_weights=self.cum_weights, k=n))


def generate(path: Path, n: int, seed: int = 0) -> None:
    """One JSON line per example, written as generated: the generator holds no list of them."""
    rng = random.Random(seed)
    words = Words(rng)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            messages = []
            if rng.random() < 0.5:
                messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
            for _turn in range(rng.choice([1, 1, 1, 2, 3])):
                messages.append({"role": "user", "content": words.sentence(15)})
                messages.append({"role": "assistant", "content": words.sentence(40)})
            f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")


class RssSampler:
    """Peak resident memory of this process during a stage, sampled every 20 ms."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)

    @contextmanager
    def stage(self) -> Iterator[Callable[[], int]]:
        self.peak = self.process.memory_info().rss
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        try:
            yield lambda: self.peak
        finally:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self.process.memory_info().rss)


def load_tokenizer(models: Path) -> Any:
    from transformers import AutoTokenizer

    from finetuned.models.builtin import materialize

    return AutoTokenizer.from_pretrained(materialize("builtin:tiny", models))  # SmolLM2's tokenizer


def run(n: int, max_seq_len: int, workdir: Path) -> dict[str, Any]:
    sampler = RssSampler()
    data = workdir / "chat.jsonl"
    started = time.monotonic()
    generate(data, n)
    generate_s = time.monotonic() - started
    tokenizer = load_tokenizer(workdir / "models")
    baseline = psutil.Process().memory_info().rss

    rows: dict[str, dict[str, float]] = {}
    with sampler.stage() as peak:
        started = time.monotonic()
        validation = validate_file(data)
        rows["validate"] = {"seconds": time.monotonic() - started, "peak_rss_mb": peak() / 2**20}
    assert validation.ok, validation.error
    with sampler.stage() as peak:
        started = time.monotonic()
        summary = prepare(data, workdir / "prepared", tokenizer, None, max_seq_len, validation=validation)
        rows["prepare"] = {"seconds": time.monotonic() - started, "peak_rss_mb": peak() / 2**20}
    rows["total"] = {
        "seconds": rows["validate"]["seconds"] + rows["prepare"]["seconds"],
        "peak_rss_mb": max(rows["validate"]["peak_rss_mb"], rows["prepare"]["peak_rss_mb"]),
    }
    for row in rows.values():
        row["examples_per_s"] = n / row["seconds"]
    return {
        "examples": n,
        "file_mb": data.stat().st_size / 2**20,
        "generate_seconds": generate_s,
        "stages": rows,
        "rss_before_mb": baseline / 2**20,
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "prepared": {k: v for k, v in summary.__dict__.items() if k not in ("out_dir", "sha256")},
        "tokens_per_example": summary.tokens / max(summary.examples, 1),
        "tokens_per_s_prepare": summary.tokens / rows["prepare"]["seconds"],
        "machine": {
            "cpus": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "max_seq_len": max_seq_len,
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['examples']:,} chat examples, {result['file_mb']:.0f} MB, "
        f"{result['prepared']['tokens']:,} tokens kept ({result['tokens_per_example']:.0f} per example, "
        f"{result['prepared']['dropped_overlong']} overlong dropped), "
        f"{result['machine']['affinity']} CPUs",
        "",
        f"| {'stage':<9} | {'seconds':>8} | {'examples/s':>10} | {'peak RSS MB':>11} |",
        f"|{'-' * 11}|{'-' * 10}|{'-' * 12}|{'-' * 13}|",
    ]
    for name, row in result["stages"].items():
        lines.append(
            f"| {name:<9} | {row['seconds']:>8.1f} | {row['examples_per_s']:>10,.0f} | {row['peak_rss_mb']:>11.0f} |"
        )
    lines.append("")
    lines.append(f"prepare: {result['tokens_per_s_prepare'] / 1e6:.2f} M tokens/s")
    lines.append(
        f"RSS before the stages (tokenizer loaded): {result['rss_before_mb']:.0f} MB; "
        f"process peak (ru_maxrss): {result['ru_maxrss_mb']:.0f} MB"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=300_000)
    parser.add_argument("--max-seq-len", type=int, default=1024)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="finetuned-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args.examples, args.max_seq_len, workdir)
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(table(result))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
