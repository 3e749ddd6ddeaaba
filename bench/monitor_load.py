"""What a crowd of pages costs: training speed, API latency, the daemon's memory and descriptors.

    python bench/monitor_load.py [--clients 1 10 100] [--window 8] [--rounds 6] [--pollers 2]

One daemon on builtin:tiny trains a queue of files, a metrics line every step (the most events a page
can be sent). Windows of one run alternate: nobody watches, then N pages do: N event-stream
clients (asyncio on raw sockets, so reading costs this process next to nothing) plus `--pollers`
clients asking /api/status, /api/queue and the job's new metrics every second, each request timed.
Per N: training steps/s in each watched window over the mean of the unwatched ones just before and
after it (the median over the rounds, so the spread and drift of a shared machine mostly cancel),
the API's p50 and p95, the daemon's peak RSS and open descriptors, the events received, the CPU
the daemon's own process used (its loop and the monitor thread, as a share of one core: what
watching costs, whatever else the machine is doing), and the CPU the pages and pollers themselves
used in this process (on the same cores as training here; a browser is usually elsewhere).
Prints a table and writes bench/results/monitor_load.json.
Goal (issue 12): 100 clients cost under 5% of training speed, and the API's p95 stays under 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
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
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import psutil
from monitor_overhead import ask_like_a_page, read_json, write_data  # the same workload: bench/ is this script's folder

from finetuned.config import Config, save_config
from finetuned.workspace import Workspace

log = logging.getLogger("bench.monitor_load")
RESULTS = Path(__file__).parent / "results" / "monitor_load.json"
FILES_AHEAD, EXAMPLES_PER_FILE = 4, 2000
SETTLE_SECONDS = 1.5  # after the pages connect (their snapshots sent), before the window is timed


def bench_config() -> Config:
    config = Config(base_model="builtin:tiny")
    t = config.training
    t.batch_size, t.max_seq_len, t.learning_rate, t.warmup_steps = 2, 128, 5e-3, 0
    t.log_every_steps, t.checkpoint_every_steps, t.epochs = 1, 50, 1
    config.inbox.settle_seconds, config.inbox.poll_seconds = 0.3, 0.2
    config.data.holdout_fraction = 0.0
    config.previews.every_steps = 0
    config.monitor.port = 0
    return config


def feed(ws: Workspace, dropped: int) -> int:
    """Keep FILES_AHEAD files waiting, whatever the machine's speed, so no window finds the queue empty.

    Each file has its own content (duplicates are refused); the model stays loaded between them.
    """
    while dropped - len(list(ws.metrics.glob("*.jsonl"))) < FILES_AHEAD:
        write_data(ws.inbox_normal / f"load{dropped:04d}.jsonl", EXAMPLES_PER_FILE, dropped)
        dropped += 1
    return dropped


class Pages:
    """N event streams on one asyncio loop in a thread: connect, read and drop every byte, close."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.events = 0
        self.failed = 0
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    async def _one(self, host: str, port: int, stop: asyncio.Event) -> None:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            self.failed += 1
            return
        writer.write(f"GET /api/events HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode())
        try:
            while not stop.is_set():
                read = asyncio.ensure_future(reader.read(1 << 16))
                done, _ = await asyncio.wait({read}, timeout=0.5)
                if not done:
                    read.cancel()
                    continue
                data = read.result()
                if not data:
                    return
                self.events += data.count(b"event: ")
        finally:
            writer.close()

    def open(self, url: str, n: int) -> tuple[asyncio.Event, Any]:
        parts = urllib.parse.urlsplit(url)

        async def start() -> tuple[asyncio.Event, Any]:
            stop = asyncio.Event()
            return stop, asyncio.gather(*(self._one(parts.hostname, parts.port, stop) for _ in range(n)))

        return asyncio.run_coroutine_threadsafe(start(), self.loop).result()

    def close(self, stop: asyncio.Event, streams: Any) -> None:
        async def end() -> None:
            stop.set()
            await streams

        asyncio.run_coroutine_threadsafe(end(), self.loop).result(30)


class Pollers:
    """What a script or a page without streams does: the API every second, each request timed."""

    def __init__(self, url: str, ws: Workspace, n: int) -> None:
        self.url, self.ws = url, ws
        self.latencies: list[float] = []
        self.errors = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]
        for thread in self.threads:
            thread.start()

    def _get(self, path: str) -> bytes:
        started = time.perf_counter()
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            body = response.read()
        self.latencies.append(time.perf_counter() - started)
        return body

    def _run(self) -> None:
        since = 0
        while not self.stop.wait(1.0):
            try:
                since = ask_like_a_page(self._get, since)
            except OSError:
                self.errors += 1

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)


def steps_in(ws: Workspace, begin: float, end: float) -> int:
    return sum(begin <= json.loads(line)["time"] < end
               for path in ws.metrics.glob("*.jsonl") for line in path.read_text().splitlines())


def sample(pid: int, until: float, peak: dict[str, float]) -> None:
    """Peak RSS and descriptors of the daemon's process, and the CPU it used (its loop and the monitor thread)."""
    process = psutil.Process(pid)
    started, cpu = time.time(), sum(process.cpu_times()[:2])
    while time.time() < until:
        with process.oneshot():
            peak["rss_mb"] = max(peak.get("rss_mb", 0.0), process.memory_info().rss / 2**20)
            peak["fds"] = max(peak.get("fds", 0), process.num_fds())
        time.sleep(0.25)
    peak["core_percent"] = 100 * (sum(process.cpu_times()[:2]) - cpu) / (time.time() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--window", type=float, default=8.0, help="seconds per timed window")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--pollers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    root = Path(tempfile.mkdtemp(prefix="monload-"))
    ws = Workspace.at(root / "ws")
    ws.create()
    save_config(ws.config_path, bench_config())
    dropped = feed(ws, 0)
    out = open(root / "daemon.out", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "finetuned", "run", "--root", str(ws.root)], stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)
    pages = Pages()
    rows: dict[int, dict[str, list[float]]] = {}
    try:
        deadline = time.time() + 600
        while not list(ws.metrics.glob("*.jsonl")) or steps_in(ws, 0, time.time()) < 20:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"training did not start: {(root / 'daemon.out').read_text()[-2000:]}")
            time.sleep(0.2)
        url = read_json(ws.status_json)["monitor_url"]
        # Every watched window between two unwatched ones: against their mean, a steady drift cancels.
        plan = [(r, m) for r in range(args.rounds) for c in args.clients for m in (0, c)] + [(args.rounds - 1, 0)]
        windows: list[tuple[int, float]] = []
        for round_, n in plan:
            row = rows.setdefault(n, {"rate": [], "ratio": [], "latency": [], "rss_mb": [], "fds": [],
                                      "core_percent": [], "events": [], "clients_core_percent": []})
            dropped = feed(ws, dropped)
            stop = streams = pollers = None
            if n:
                stop, streams = pages.open(url, n)
                pollers = Pollers(url, ws, args.pollers)
            time.sleep(SETTLE_SECONDS)
            begin, events, own = time.time(), pages.events, sum(os.times()[:2])
            peak: dict[str, float] = {}
            sample(proc.pid, begin + args.window, peak)
            end = time.time()
            row["rate"].append(steps_in(ws, begin, end) / (end - begin))
            windows.append((n, row["rate"][-1]))
            row["rss_mb"].append(peak["rss_mb"])
            row["fds"].append(peak["fds"])
            row["core_percent"].append(peak["core_percent"])
            row["events"].append((pages.events - events) / (end - begin))
            row["clients_core_percent"].append(100 * (sum(os.times()[:2]) - own) / (end - begin))
            if n:
                pollers.close()
                row["latency"] += pollers.latencies
                pages.close(stop, streams)
            log.info("round %d, %3d pages: %.2f steps/s, %d descriptors, %.0f MB", round_ + 1, n,
                     row["rate"][-1], peak["fds"], peak["rss_mb"])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        out.close()
    for i, (n, rate) in enumerate(windows):
        unwatched = (windows[i - 1][1] + windows[i + 1][1]) / 2 if n else 0.0
        if unwatched:
            rows[n]["ratio"].append(rate / unwatched)
    summary = {}
    print(f"\n{'pages':>6}{'steps/s':>9}{'vs none':>9}{'API p50':>10}{'API p95':>10}{'RSS MB':>9}{'fds':>6}"
          f"{'events/s':>10}{'daemon CPU':>12}{'pages CPU':>11}")
    for n, row in rows.items():
        rate = statistics.median(row["rate"])
        ratios = row["ratio"] or [1.0]
        lat = sorted(row["latency"])
        p50 = 1000 * lat[len(lat) // 2] if lat else None
        p95 = 1000 * lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else None
        summary[n] = {"steps_per_second": rate, "slower_percent": round(100 * (1 - statistics.median(ratios)), 2),
                      "api_p50_ms": p50, "api_p95_ms": p95, "requests": len(lat), "rss_mb": max(row["rss_mb"]),
                      "fds": max(row["fds"]), "events_per_second": statistics.median(row["events"]),
                      "daemon_core_percent": statistics.median(row["core_percent"]),
                      "clients_core_percent": statistics.median(row["clients_core_percent"])}
        s = summary[n]
        print(f"{n:>6}{rate:>9.2f}{-s['slower_percent']:>+8.1f}%"
              f"{(f'{p50:.1f} ms' if p50 is not None else '–'):>10}{(f'{p95:.1f} ms' if p95 is not None else '–'):>10}"
              f"{s['rss_mb']:>9.0f}{s['fds']:>6}{s['events_per_second']:>10.0f}{s['daemon_core_percent']:>11.1f}%"
              f"{s['clients_core_percent']:>10.1f}%")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "goal": "100 pages under 5% slower than none; API p95 under 100 ms", "summary": summary, "rows": rows,
        "load_average": os.getloadavg(),
        "settings": vars(args) | {"out": str(args.out), "model": "builtin:tiny", "log_every_steps": 1},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }, indent=2) + "\n")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
