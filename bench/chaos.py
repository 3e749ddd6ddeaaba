"""Chaos: SIGKILLs of a real daemon and of its worker at chosen moments, and what must hold after each.

    python bench/chaos.py [--kills 100] [--seed 0] [--out bench/results/chaos.json] [--keep DIR]

A daemon on builtin:tiny (monitor on; `independent` mode, so a job's losses depend on its data
alone) is fed a seeded stream of actions: files dropped (normal and priority), uploads through the
monitor, pause, resume, stop and skip, and kills. A kill is a SIGKILL of the daemon (its worker and
preparer die with it) or of the worker, aimed at a moment: mid-step, a checkpoint being written
(`checkpoint-N.tmp` on disk), an inbox move (a file leaving the inbox), publishing (an adapter's
`.JOB.tmp`), or unaimed (whatever goes on, often a worker still loading after the last kill).
The killer waits for a restarted worker to train again, watches the workspace and fires when it
sees its moment, or anyway when the moment does not come within a few seconds; what it saw, and
which writes were in flight, is recorded with the kill.

After every kill the invariants of bench/chaos_checks.py are checked: on what the crash left (a
killed daemon, before its restart), and again once the daemon recovered (stopped with SIGSTOP for
the look, so nothing moves under it). At the end, with the queue drained, every completed job that
was interrupted is trained again here without interruption and must log the same losses.
Prints the counts and writes JSON; exits 1 on any violation.

Seeds that once broke an invariant, run again after any change to the loop, the saver or the queue:
    --kills 30 --seed 7    a step's metrics line was written after its checkpoint started: a kill in between
                           left the step out of the log (fixed: the line comes first)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from chaos_checks import Invariants, entries, read_json, records

from finetuned.config import Config, save_config
from finetuned.workspace import Workspace

log = logging.getLogger("bench.chaos")
RESULTS = Path(__file__).parent / "results" / "chaos.json"
MOMENTS = ("mid-step", "checkpoint", "inbox move", "publishing", "unaimed")
TRAINING_MOMENTS = ("mid-step", "checkpoint", "publishing")  # aimed at once a restarted worker trains again
MOMENT_WAIT = 6.0  # seconds the killer waits for its moment before it fires anyway
IN_FLIGHT_SECONDS = 1.0  # a temporary folder touched this recently is a write under way


def chaos_config() -> Config:
    config = Config(base_model="builtin:tiny")
    t = config.training
    t.batch_size, t.max_seq_len, t.learning_rate, t.warmup_steps = 2, 128, 5e-3, 0
    t.log_every_steps, t.checkpoint_every_steps, t.mode = 1, 3, "independent"
    config.inbox.settle_seconds, config.inbox.poll_seconds = 0.2, 0.2
    config.data.holdout_fraction = 0.0
    config.previews.every_steps = 0
    config.control.max_retries = 10_000  # killed workers are crashes: here they must never fail a job
    config.monitor.port = 0
    return config


def chat_file(n: int, tag: str) -> bytes:
    return "".join(json.dumps({"messages": [
        {"role": "user", "content": f"{tag}: what is {i % 7} times {i % 5}?"},
        {"role": "assistant", "content": f"{tag}: {i % 7} times {i % 5} is {(i % 7) * (i % 5)}."}]}) + "\n"
        for i in range(n)).encode()


class Campaign:
    def __init__(self, root: Path, rng: random.Random) -> None:
        self.root, self.rng = root, rng
        self.ws = Workspace.at(root / "ws")
        self.ws.create()
        save_config(self.ws.config_path, chaos_config())
        self.invariants = Invariants(self.ws)
        self.counts: Counter[str] = Counter()
        self.kills: list[dict[str, Any]] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # --- the daemon -----------------------------------------------------
    def start(self) -> None:
        self.starts += 1
        out = open(self.root / f"daemon-{self.starts}.out", "wb")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen([sys.executable, "-m", "finetuned", "run", "--root", str(self.ws.root)],
                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        since = time.time()
        self.wait(lambda: (s := read_json(self.ws.status_json)) and s.get("pid") == self.proc.pid
                  and s.get("heartbeat_unix", 0) > since and s.get("monitor_url"), 120, "the daemon to start")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, predicate: Any, timeout: float, what: str, watch: bool = True) -> Any:
        """Poll `predicate`; with `watch`, a daemon that dies meanwhile is a violation (and started again)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = predicate()
            if value:
                return value
            if watch and self.proc is not None and self.proc.poll() is not None:
                self.invariants.violation(what, f"the daemon exited by itself ({self.proc.returncode})")
                self.start()
            time.sleep(0.05)
        raise TimeoutError(f"{what} did not happen in {timeout:.0f} s")

    def status(self) -> dict[str, Any]:
        return read_json(self.ws.status_json) or {}

    # --- actions --------------------------------------------------------
    def drop(self, priority: bool) -> None:
        n = self.counts["files"]
        data = chat_file(self.rng.randint(6, 30), f"file {n}")
        folder = self.ws.inbox_priority if priority else self.ws.inbox_normal
        tmp = folder / f".f{n:04d}.jsonl.part"
        tmp.write_bytes(data)
        tmp.rename(folder / f"f{n:04d}.jsonl")
        self.invariants.gave(data, f"f{n:04d}.jsonl ({'priority' if priority else 'normal'})")
        self.counts["files"] += 1
        self.counts["dropped priority" if priority else "dropped normal"] += 1

    def upload(self) -> None:
        n = self.counts["files"]
        data = chat_file(self.rng.randint(6, 30), f"upload {n}")
        priority = self.rng.random() < 0.3
        url = self.status().get("monitor_url")
        if not url:
            return
        query = urllib.parse.urlencode({"name": f"u{n:04d}.jsonl", "priority": "high" if priority else "normal"})
        try:
            with urllib.request.urlopen(urllib.request.Request(f"{url}api/upload?{query}", data=data,
                                                               method="POST"), timeout=10) as response:
                if response.status != 201:
                    return
        except OSError as exc:
            log.debug("upload refused: %s", exc)
            return
        self.invariants.gave(data, f"u{n:04d}.jsonl (upload)")
        self.counts["files"] += 1
        self.counts["uploaded"] += 1

    def control(self) -> None:
        name = self.rng.choice(("pause", "stop", "skip", "stop"))
        (self.ws.control / f".{name}").touch()
        self.counts[f"control {name}"] += 1

    def act(self) -> None:
        """Keep work queued and mix in the user's actions."""
        if self.ws.pause_file.exists() and self.rng.random() < 0.7:
            self.ws.pause_file.unlink()
            self.counts["control resume"] += 1
        active = [j for j in records(self.ws).values() if j.status.active]
        for _ in range(max(0, 3 - len(active)) + (self.rng.random() < 0.3)):
            self.drop(priority=self.rng.random() < 0.25)
        if self.rng.random() < 0.3:
            self.upload()
        if self.rng.random() < 0.2:
            self.control()

    # --- kills ----------------------------------------------------------
    def kill(self, index: int) -> None:
        target = "worker" if self.rng.random() < 0.4 else "daemon"
        moment = self.rng.choice(MOMENTS)
        if moment in TRAINING_MOMENTS and not self.ws.pause_file.exists():
            self.warm()
        seen = self.await_moment(moment)
        pid = self.proc.pid if target == "daemon" else self.status().get("worker_pid")
        if target == "worker" and not (isinstance(pid, int) and _alive(pid)):
            target, pid = "daemon", self.proc.pid
        debris = self.in_flight()
        os.kill(pid, signal.SIGKILL)
        self.kills.append({"index": index, "target": target, "moment": moment, "seen": seen, "in_flight": debris,
                           "time": time.time()})
        label = f"kill {index} ({target}, {moment}{'' if seen else ', timed out'})"
        if target == "daemon":
            self.proc.wait(10)
            self.wait(lambda: not _alive(self.status().get("worker_pid") or 0), 10, "the worker to die with it",
                      watch=False)
            self.check(label + ", before the restart", running=False)
            self.start()
        else:
            time.sleep(0.5)
        self.check(label, running=True)

    def warm(self, timeout: float = 60) -> bool:
        """Wait until a step is logged: a worker (re)started after a kill is up and training again."""
        start, deadline = self.last_metrics_size(), time.time() + timeout
        while time.time() < deadline:
            if self.last_metrics_size() != start:
                return True
            time.sleep(0.05)
        return False

    def await_moment(self, moment: str) -> bool:
        """Spin until the moment is on disk (or the wait runs out); True when it was seen."""
        deadline = time.time() + MOMENT_WAIT
        if moment == "inbox move":
            self.drop(priority=self.rng.random() < 0.25)
            name = f"f{self.counts['files'] - 1:04d}.jsonl"
            places = (self.ws.inbox_normal / name, self.ws.inbox_priority / name)
            while time.time() < deadline:
                if not any(p.exists() for p in places):
                    return True
            return False
        if moment == "unaimed":  # whatever is going on: often a worker still loading after the last kill
            time.sleep(self.rng.uniform(0, 2))
            return True
        if moment == "mid-step":
            start = self.last_metrics_size()
            while time.time() < deadline:
                if self.last_metrics_size() != start:
                    time.sleep(self.rng.uniform(0, 0.03))
                    return True
                time.sleep(0.005)
            return False
        while time.time() < deadline:
            if self.in_flight(only="checkpoint" if moment == "checkpoint" else "adapter"):
                return True
        return False

    def in_flight(self, only: str | None = None) -> list[str]:
        """Temporary folders of writes under way (checkpoints, adapters being published): touched within the
        last second, since a write an earlier kill cut short leaves its folder until the step is written again."""
        candidates = []
        if only in (None, "checkpoint"):
            for job_dir in entries(self.ws.checkpoints):
                candidates += [p for p in entries(job_dir) if p.name.endswith(".tmp")]
        if only in (None, "adapter"):
            candidates += [p for p in entries(self.ws.adapters) if p.name.endswith(".tmp")]
        return [str(p.relative_to(self.ws.models)) for p in candidates if _age(p) < IN_FLIGHT_SECONDS]

    def last_metrics_size(self) -> int:
        return sum(p.stat().st_size for p in entries(self.ws.metrics))

    # --- checks ---------------------------------------------------------
    def check(self, after: str, running: bool) -> None:
        if running:
            os.kill(self.proc.pid, signal.SIGSTOP)  # nothing moves while we look
        try:
            self.invariants.files_and_records(after)
        finally:
            if running:
                os.kill(self.proc.pid, signal.SIGCONT)
        if running:
            self.invariants.adapters(after)

    # --- the end --------------------------------------------------------
    def drain(self, timeout: float) -> None:
        self.ws.pause_file.unlink(missing_ok=True)
        self.wait(lambda: all(not j.status.active for j in records(self.ws).values())
                  and not any(p.is_file() for f in (self.ws.inbox_normal, self.ws.inbox_priority)
                              for p in entries(f) if not p.name.startswith(".")),
                  timeout, "the queue to drain")
        self.check("the drain", running=True)
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return float("inf")


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _preload() -> None:
    """The checks' heavy imports (PEFT, the recipe), made while the campaign mostly waits on the daemon."""
    import peft  # noqa: F401
    import transformers  # noqa: F401

    import finetuned.worker.recipe  # noqa: F401


def run(kills: int, seed: int, keep: Path | None) -> dict[str, Any]:
    threading.Thread(target=_preload, daemon=True).start()
    root = Path(tempfile.mkdtemp(prefix="chaos-", dir=keep))
    campaign = Campaign(root, random.Random(seed))
    started = time.time()
    try:
        campaign.start()
        for index in range(1, kills + 1):
            campaign.act()
            campaign.kill(index)
            last = campaign.kills[-1]
            log.info("kill %d/%d: %s at %s%s; %d files, %d violations", index, kills, last["target"], last["moment"],
                     "" if last["seen"] else " (timed out)", campaign.counts["files"],
                     len(campaign.invariants.violations))
        campaign.drain(600)
        compared = campaign.invariants.losses(Workspace.at(root / "reference"), chaos_config())
        jobs = Counter(j.status.value for j in records(campaign.ws).values())
    finally:
        if campaign.alive():
            campaign.proc.kill()
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return {"campaign": campaign, "compared": compared, "seconds": time.time() - started, "jobs": jobs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", type=Path, default=None, help="keep the workspace under this folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(relativeCreated)7.0f ms  %(message)s")
    logging.getLogger("finetuned").setLevel(logging.WARNING)  # the reference runs' step lines
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    result = run(args.kills, args.seed, args.keep)
    c: Campaign = result["campaign"]
    kills = Counter(f"{k['target']} at {k['moment']}" for k in c.kills)
    landed = Counter(f"{k['target']} at {k['moment']}" for k in c.kills if k["seen"])
    in_flight = sum(bool(k["in_flight"]) for k in c.kills)
    summary = {
        "seed": args.seed, "kills": len(c.kills), "daemon_kills": sum(k["target"] == "daemon" for k in c.kills),
        "worker_kills": sum(k["target"] == "worker" for k in c.kills), "kills_by_aim": dict(kills),
        "moments_seen": dict(landed), "kills_with_a_write_in_flight": in_flight, "files": c.counts["files"],
        "jobs": sum(result["jobs"].values()), "jobs_by_status": dict(result["jobs"]),
        "completed_adapters_checked": len(c.invariants.adapters_checked),
        "resumed_jobs_compared": result["compared"], "checks": c.invariants.checks, "actions": dict(c.counts),
        "violations": c.invariants.violations, "seconds": round(result["seconds"], 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }
    print(f"\n{'kills':<34}{summary['kills']:>6}  (daemon {summary['daemon_kills']}, worker {summary['worker_kills']})")
    for aim, n in sorted(kills.items()):
        print(f"  {aim:<32}{n:>6}  ({landed.get(aim, 0)} fired on seeing the moment)")
    print(f"{'kills with a write in flight':<34}{in_flight:>6}")
    print(f"{'files dropped or uploaded':<34}{summary['files']:>6}")
    print(f"{'jobs':<34}{summary['jobs']:>6}  {dict(result['jobs'])}")
    print(f"{'completed adapters checked':<34}{summary['completed_adapters_checked']:>6}")
    print(f"{'resumed jobs compared':<34}{summary['resumed_jobs_compared']:>6}")
    print(f"{'checks':<34}{summary['checks']:>6}")
    print(f"{'violations':<34}{len(c.invariants.violations):>6}")
    print(f"{'seconds':<34}{summary['seconds']:>6.0f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nwritten to {args.out}")
    sys.exit(1 if c.invariants.violations else 0)


if __name__ == "__main__":
    main()
