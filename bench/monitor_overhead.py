"""What watching costs: training throughput of a real daemon with the monitor watched, idle, and off.

    python bench/monitor_overhead.py [--rounds 3] [--examples 200] [--poll 1.0]

Each run is a fresh workspace and a real `finetuned run` on builtin:tiny training one
file. Three modes, interleaved round by round so drift hits them alike:
- off: `--no-monitor`;
- idle: the monitor serving, nobody looking;
- watched: an event-stream client connected (as the page is) and the API polled every
  `--poll` seconds: status, queue, the job's new metrics, /metrics (more than the page asks).
Throughput is read back from the job's metrics log (steps and tokens between step 5 and
the last step, so model loading and warm-up are left out). On a shared, busy machine that
figure is noisy, so the CPU time of the daemon's own process (where the monitor runs) is
measured too (as a share of one core over the run): the monitor's cost in CPU, whatever the
neighbours do; on a machine whose cores the worker keeps busy, that is what it takes from training.
Prints a table and writes bench/results/monitor_overhead.json. Goal (issue 5): watched
under 2% slower than off.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from finetuned.config import Config, save_config
from finetuned.workspace import Workspace

log = logging.getLogger("bench.monitor_overhead")
RESULTS = Path(__file__).parent / "results" / "monitor_overhead.json"
MODES = ("off", "idle", "watched")
WARMUP_STEPS = 5


def bench_config() -> Config:
    config = Config(base_model="builtin:tiny")
    t = config.training
    t.batch_size, t.max_seq_len, t.learning_rate, t.warmup_steps = 2, 128, 5e-3, 0
    t.log_every_steps, t.checkpoint_every_steps, t.epochs = 1, 50, 2  # a metrics line every step: the worst case
    config.inbox.settle_seconds, config.inbox.poll_seconds = 0.3, 0.2
    config.data.holdout_fraction = 0.0
    config.monitor.port = 0
    return config


def write_data(path: Path, n: int) -> None:
    lines = []
    for i in range(n):
        messages = [{"role": "user", "content": f"What is {i % 17} plus {i % 11}? Answer briefly."},
                    {"role": "assistant", "content": f"{i % 17} plus {i % 11} is {i % 17 + i % 11}."}]
        lines.append(json.dumps({"messages": messages}) + "\n")
    tmp = path.with_name("." + path.name + ".part")
    tmp.write_text("".join(lines))
    tmp.rename(path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class Watcher:
    """Does what an open page does, and then some: an event stream plus polling."""

    def __init__(self, url: str, ws: Workspace, poll: float) -> None:
        self.url, self.ws, self.poll = url, ws, poll
        self.stop = threading.Event()
        self.requests = 0
        self.events = 0
        self.threads = [threading.Thread(target=self._poll, daemon=True),
                        threading.Thread(target=self._stream, daemon=True)]
        for thread in self.threads:
            thread.start()

    def _get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            self.requests += 1
            return response.read()

    def _poll(self) -> None:
        since = 0
        while not self.stop.wait(self.poll):
            try:
                status = json.loads(self._get("api/status"))
                self._get("api/queue")
                job = (status.get("training") or {}).get("id")
                if job:
                    points = json.loads(self._get(f"api/jobs/{job}/metrics?since_step={since}"))["points"]
                    since = points[-1]["step"] if points else since
                self._get("metrics")
            except OSError as exc:
                log.debug("poll failed: %s", exc)

    def _stream(self) -> None:
        try:
            with urllib.request.urlopen(self.url + "api/events", timeout=30) as response:
                for line in response:
                    if line.startswith(b"event:"):
                        self.events += 1
                    if self.stop.is_set():
                        return
        except OSError as exc:
            log.debug("event stream ended: %s", exc)

    def close(self) -> None:
        self.stop.set()


def run_once(mode: str, examples: int, poll: float, keep: Path | None) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"monbench-{mode}-", dir=keep))
    ws = Workspace.at(root / "ws")
    ws.create()
    save_config(ws.config_path, bench_config())
    write_data(ws.inbox_normal / "bench.jsonl", examples)
    command = [sys.executable, "-m", "finetuned", "run", "--root", str(ws.root)]
    if mode == "off":
        command.append("--no-monitor")
    out = open(root / "daemon.out", "wb")  # noqa: SIM115
    started = time.time()
    proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    watcher: Watcher | None = None
    cpu: dict[str, float] = {}
    try:
        deadline = time.time() + 900
        while time.time() < deadline:
            status = read_json(ws.status_json) or {}
            if mode == "watched" and watcher is None and status.get("monitor_url"):
                watcher = Watcher(status["monitor_url"], ws, poll)
            jobs = [read_json(p) or {} for p in ws.jobs.glob("*.json")]
            if jobs and all(j.get("status") in ("completed", "failed") for j in jobs):
                cpu = cpu_seconds(proc.pid, status.get("worker_pid"))
                cpu["wall"] = time.time() - started
                break
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited: {(root / 'daemon.out').read_text()[-2000:]}")
            time.sleep(0.2)
        else:
            raise RuntimeError("the job did not finish in 15 minutes")
    finally:
        if watcher is not None:
            watcher.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        out.close()
    job = next(iter(read_json(p) for p in ws.jobs.glob("*.json")))
    lines = [json.loads(x) for x in ws.metrics_file(job["id"]).read_text().splitlines()]
    start = next(x for x in lines if x["step"] == WARMUP_STEPS)
    end = lines[-1]
    seconds = end["time"] - start["time"]
    return {
        "mode": mode, "status": job["status"], "steps": end["step"] - start["step"], "seconds": round(seconds, 3),
        "steps_per_second": (end["step"] - start["step"]) / seconds,
        "tokens_per_second": (end["tokens"] - start["tokens"]) / seconds,
        "requests": watcher.requests if watcher else 0, "events": watcher.events if watcher else 0,
        "daemon_cpu_seconds": cpu.get("daemon"), "worker_cpu_seconds": cpu.get("worker"),
        "wall_seconds": round(cpu.get("wall", 0.0), 2),
        # the daemon process (main loop + monitor thread) as a share of one core over the whole run
        "daemon_core_percent": round(100 * cpu["daemon"] / cpu["wall"], 2) if cpu.get("daemon") else None,
    }


def cpu_seconds(daemon_pid: int, worker_pid: int | None) -> dict[str, float]:
    """User + system CPU of the daemon's process (its threads: the loop and the monitor) and of the worker."""
    out = {}
    for name, pid in (("daemon", daemon_pid), ("worker", worker_pid)):
        try:
            times = psutil.Process(pid).cpu_times() if pid else None
        except psutil.Error:
            times = None
        if times is not None:
            out[name] = times.user + times.system
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--examples", type=int, default=200, help="examples in the file (2 epochs, batch 2)")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between API polls when watched")
    parser.add_argument("--keep", type=Path, default=None, help="keep the workspaces under this folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # a SIGTERM to the bench must still stop the daemon it started (the `finally` in run_once)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    runs: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        order = MODES[round_ % 3:] + MODES[: round_ % 3]  # rotate, so no mode always runs first
        for mode in order:
            result = run_once(mode, args.examples, args.poll, args.keep)
            result["round"] = round_
            runs.append(result)
            log.info("round %d %-8s %6.2f steps/s %8.0f tokens/s  (%d requests, %d events)", round_ + 1, mode,
                     result["steps_per_second"], result["tokens_per_second"], result["requests"], result["events"])
    summary = {}
    for mode in MODES:
        mine = [r for r in runs if r["mode"] == mode]
        shares = [r["daemon_core_percent"] for r in mine if r["daemon_core_percent"] is not None]
        summary[mode] = {"steps_per_second": statistics.median(r["steps_per_second"] for r in mine),
                         "tokens_per_second": statistics.median(r["tokens_per_second"] for r in mine),
                         "daemon_core_percent": statistics.median(shares) if shares else None}
    base = summary["off"]["tokens_per_second"]
    for mode in MODES:
        summary[mode]["slower_than_off_percent"] = round(100 * (1 - summary[mode]["tokens_per_second"] / base), 2)
    print(f"\n{'mode':<9}{'steps/s':>9}{'tokens/s':>11}{'vs off':>9}{'daemon process, % of a core':>30}"
          f"   (median of {args.rounds} rounds)")
    for mode in MODES:
        s = summary[mode]
        share = s["daemon_core_percent"]
        print(f"{mode:<9}{s['steps_per_second']:>9.2f}{s['tokens_per_second']:>11.0f}"
              f"{-s['slower_than_off_percent']:>+8.1f}%{(f'{share:.1f}%' if share is not None else '–'):>30}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "goal": "watched under 2% slower than off", "summary": summary, "runs": runs,
        "settings": {"rounds": args.rounds, "examples": args.examples, "poll_seconds": args.poll,
                     "log_every_steps": 1, "model": "builtin:tiny"},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }, indent=2) + "\n")
    print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
