"""What watching costs: training throughput of a real daemon with its monitor watched or not.

    python bench/monitor_overhead.py [--paired-seconds 60] [--rounds 3] [--examples 800]

Two measurements on builtin:tiny, which steps in ~25 ms on two cores, so any cost shows:

1. Paired (the headline): one daemon, monitor on, one long job; a watcher — an event-stream
   client, as the page is, plus the API polled every `--poll` seconds (status, queue, the
   job's new metrics, /metrics: more than the page asks) — is switched on and off in
   alternating windows. Steps per second in watched windows against unwatched ones, in the
   same process and run, so the run-to-run spread of a small CPU job (±15% here) cancels.
2. Modes: separate runs with `--no-monitor` (off), the monitor idle, and watched all along,
   interleaved round by round; each also records the CPU the daemon's own process (its loop
   and the monitor thread) used, as a share of one core.

Throughput is read back from the job's metrics log (warm-up steps left out). Prints tables
and writes bench/results/monitor_overhead.json. Goal (issue 5): under 2% slower when watched.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
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


def write_data(path: Path, n: int, tag: int = 0) -> None:
    lines = []
    for i in range(n):
        messages = [{"role": "user", "content": f"What is {i % 17} plus {i % 11}? Answer briefly ({tag})."},
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


def ask_like_a_page(get: Callable[[str], bytes], since: int) -> int:
    """One poll of what a page without streams asks: status, queue, the training job's metrics after `since`."""
    status = json.loads(get("api/status"))
    get("api/queue")
    job = (status.get("training") or {}).get("id")
    if job:
        points = json.loads(get(f"api/jobs/{job}/metrics?since_step={since}"))["points"]
        since = points[-1]["step"] if points else since
    return since


class Watcher:
    """Does what an open page does, and then some: an event stream plus polling."""

    def __init__(self, url: str, ws: Workspace, poll: float, what: str = "both") -> None:
        self.url, self.ws, self.poll = url, ws, poll
        self.stop = threading.Event()
        self.requests = 0
        self.events = 0
        self.threads = []
        if what in ("both", "poll"):
            self.threads.append(threading.Thread(target=self._poll, daemon=True))
        if what in ("both", "events"):
            self.threads.append(threading.Thread(target=self._stream, daemon=True))
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
                since = ask_like_a_page(self._get, since)
                self._get("metrics")
            except OSError as exc:
                log.debug("poll failed: %s", exc)

    def _stream(self) -> None:
        try:
            with urllib.request.urlopen(self.url + "api/events", timeout=30) as response:
                self.response = response
                for line in response:
                    if line.startswith(b"event:"):
                        self.events += 1
                    if self.stop.is_set():
                        return
        except (OSError, ValueError, AttributeError) as exc:  # closed under its feet by close()
            log.debug("event stream ended: %s", exc)

    def close(self) -> None:
        self.stop.set()
        response = getattr(self, "response", None)
        if response is not None:
            response.close()
        for thread in self.threads:
            thread.join(5)


def start_daemon(name: str, examples: int, keep: Path | None, monitor: bool = True, files: int = 1,
                 ) -> tuple[Path, Workspace, subprocess.Popen, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"monbench-{name}-", dir=keep))
    ws = Workspace.at(root / "ws")
    ws.create()
    save_config(ws.config_path, bench_config())
    for n in range(files):  # each file its own content: the daemon refuses duplicates
        write_data(ws.inbox_normal / f"bench{n:02d}.jsonl", examples, n)
    command = [sys.executable, "-m", "finetuned", "run", "--root", str(ws.root)]
    if not monitor:
        command.append("--no-monitor")
    out = open(root / "daemon.out", "wb")  # noqa: SIM115
    proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return root, ws, proc, out


def finished(ws: Workspace) -> bool:
    jobs = [read_json(p) or {} for p in ws.jobs.glob("*.json")]
    return bool(jobs) and all(j.get("status") in ("completed", "failed") for j in jobs)


def stop_daemon(root: Path, proc: subprocess.Popen, out: Any, keep: Path | None) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    out.close()
    if keep is None:
        shutil.rmtree(root, ignore_errors=True)


def metrics(ws: Workspace) -> list[dict[str, Any]]:
    """Every metrics line of every job, in time order."""
    lines = [json.loads(x) for path in ws.metrics.glob("*.jsonl") for x in path.read_text().splitlines()]
    return sorted(lines, key=lambda x: x["time"])


def run_paired(examples: int, seconds: float, poll: float, window: float, keep: Path | None,
               what: str) -> dict[str, Any]:
    """Watch, stop watching, watch...: steps per second in each window of `seconds` of one run.

    The run trains a queue of files of `examples` each (the model stays loaded between them),
    not one big file, so it is a steady state of ordinary jobs.
    """
    root, ws, proc, out = start_daemon("paired", examples, keep, files=12)
    windows: list[tuple[float, float, bool]] = []
    try:
        deadline = time.time() + 900
        while not (ws.metrics.is_dir() and any(ws.metrics.iterdir())) or len(metrics(ws)) < WARMUP_STEPS:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"training did not start: {(root / 'daemon.out').read_text()[-2000:]}")
            time.sleep(0.1)
        url = (read_json(ws.status_json) or {})["monitor_url"]
        watching = False
        until = time.time() + seconds
        while not finished(ws) and time.time() < until:
            watcher = Watcher(url, ws, poll, what) if watching else None
            begin = time.time()
            while time.time() - begin < window and not finished(ws):
                time.sleep(0.05)
            if watcher is not None:
                watcher.close()
            windows.append((begin, time.time(), watching))
            watching = not watching
        lines = metrics(ws)
    finally:
        stop_daemon(root, proc, out, keep)
    rates: dict[bool, list[float]] = {True: [], False: []}
    for begin, end, watched in windows:
        settled = begin + 0.3  # a connection's first snapshot belongs to its window
        steps = sum(settled <= x["time"] < end for x in lines)
        if end - settled > 1:
            rates[watched].append(steps / (end - settled))
    watched, unwatched = statistics.median(rates[True]), statistics.median(rates[False])
    if not rates[True] or not rates[False]:
        raise RuntimeError(f"too few windows ({len(windows)}): the machine is too slow for {seconds:.0f} s")
    return {"windows": len(windows), "window_seconds": window, "watched_steps_per_second": watched,
            "unwatched_steps_per_second": unwatched, "slower_percent": round(100 * (1 - watched / unwatched), 2),
            "watched_windows": rates[True], "unwatched_windows": rates[False]}


def run_once(mode: str, examples: int, poll: float, keep: Path | None, what: str = "both") -> dict[str, Any]:
    started = time.time()
    root, ws, proc, out = start_daemon(mode, examples, keep, monitor=mode != "off")
    watcher: Watcher | None = None
    cpu: dict[str, float] = {}
    try:
        deadline = time.time() + 900
        while time.time() < deadline:
            status = read_json(ws.status_json) or {}
            if mode == "watched" and watcher is None and status.get("monitor_url"):
                watcher = Watcher(status["monitor_url"], ws, poll, what)
            if finished(ws):
                cpu = cpu_seconds(proc.pid, status.get("worker_pid"))
                cpu["wall"] = time.time() - started
                break
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited: {(root / 'daemon.out').read_text()[-2000:]}")
            time.sleep(0.2)
        else:
            raise RuntimeError("the job did not finish in 15 minutes")
        job = next(iter(read_json(p) for p in ws.jobs.glob("*.json")))
        lines = metrics(ws)
    finally:
        if watcher is not None:
            watcher.close()
        stop_daemon(root, proc, out, keep)
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
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three modes")
    parser.add_argument("--examples", type=int, default=800, help="examples per mode run (2 epochs, batch 2)")
    parser.add_argument("--paired-seconds", type=float, default=60, help="length of the paired run's windows")
    parser.add_argument("--window", type=float, default=3.0, help="seconds per window of the paired run")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between API polls when watched")
    parser.add_argument("--keep", type=Path, default=None, help="keep the workspaces under this folder")
    parser.add_argument("--watch", choices=("both", "events", "poll"), default="both",
                        help="what the watcher does: the event stream, the polling, or both")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # a SIGTERM to the bench must still stop the daemon it started (the `finally` in run_once)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    runs: list[dict[str, Any]] = []
    # The first daemon of a session runs slow (cold file and page caches): warm up, then measure.
    log.info("warm-up run (not counted): %.2f steps/s",
             run_once("off", min(args.examples, 60), args.poll, args.keep)["steps_per_second"])
    paired = run_paired(args.examples, args.paired_seconds, args.poll, args.window, args.keep, args.watch)
    log.info("paired: %.2f steps/s watched, %.2f unwatched, over %d windows", paired["watched_steps_per_second"],
             paired["unwatched_steps_per_second"], paired["windows"])
    for round_ in range(args.rounds):
        order = MODES[round_ % 3:] + MODES[: round_ % 3]  # rotate, so no mode always runs first
        for mode in order:
            result = run_once(mode, args.examples, args.poll, args.keep, args.watch)
            result["round"] = round_
            runs.append(result)
            log.info("round %d %-8s %6.2f steps/s %8.0f tokens/s  (%d requests, %d events)", round_ + 1, mode,
                     result["steps_per_second"], result["tokens_per_second"], result["requests"], result["events"])
    summary: dict[str, Any] = {}
    for mode in MODES if args.rounds else ():
        mine = [r for r in runs if r["mode"] == mode]
        shares = [r["daemon_core_percent"] for r in mine if r["daemon_core_percent"] is not None]
        summary[mode] = {"steps_per_second": statistics.median(r["steps_per_second"] for r in mine),
                         "tokens_per_second": statistics.median(r["tokens_per_second"] for r in mine),
                         "daemon_core_percent": statistics.median(shares) if shares else None}
    for mode in summary:
        base = summary["off"]["tokens_per_second"]
        summary[mode]["slower_than_off_percent"] = round(100 * (1 - summary[mode]["tokens_per_second"] / base), 2)
    print(f"\npaired, one run, {paired['windows']} windows of {args.window:.0f} s (median steps/s per window)")
    print(f"{'unwatched':<11}{paired['unwatched_steps_per_second']:>8.2f}")
    print(f"{'watched':<11}{paired['watched_steps_per_second']:>8.2f}   {-paired['slower_percent']:+.1f}%")
    if summary:
        print(f"\n{'mode':<9}{'steps/s':>9}{'tokens/s':>11}{'vs off':>9}{'daemon process, % of a core':>30}"
              f"   (median of {args.rounds} rounds)")
    for mode in summary:
        s = summary[mode]
        share = s["daemon_core_percent"]
        print(f"{mode:<9}{s['steps_per_second']:>9.2f}{s['tokens_per_second']:>11.0f}"
              f"{-s['slower_than_off_percent']:>+8.1f}%{(f'{share:.1f}%' if share is not None else '–'):>30}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "goal": "watched under 2% slower than off", "paired": paired, "summary": summary, "runs": runs,
        "settings": {"rounds": args.rounds, "examples": args.examples, "paired_seconds": args.paired_seconds,
                     "window_seconds": args.window, "poll_seconds": args.poll, "watch": args.watch,
                     "log_every_steps": 1, "model": "builtin:tiny"},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }, indent=2) + "\n")
    print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
