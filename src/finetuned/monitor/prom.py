"""/metrics in Prometheus' text format, computed from the files at each scrape.

A custom collector rather than module-level gauges: nothing has to be kept in sync
with the daemon, and two monitors in one process (tests) cannot share state.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry

from finetuned import controls
from finetuned.config import MonitorSettings
from finetuned.monitor.files import Files
from finetuned.monitor.views import daemon_view, health_view, job_summary, queue_eta, training_view
from finetuned.queue.job import JobStatus


def _gauge(name: str, doc: str, value: object) -> Iterator[Metric]:
    if isinstance(value, int | float) and math.isfinite(value):  # a bool is an int: up, paused
        yield GaugeMetricFamily(name, doc, value=float(value))


class FilesCollector(Collector):
    def __init__(self, files: Files, settings: MonitorSettings) -> None:
        self.files = files
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        files = self.files
        daemon = daemon_view(files.status(), self.settings, time.time())
        yield from _gauge("finetuned_up", "1 while the daemon's heartbeat is fresh", daemon["responding"])
        yield from _gauge("finetuned_heartbeat_age_seconds", "age of the daemon's last heartbeat",
                          daemon.get("heartbeat_age"))
        yield from _gauge("finetuned_paused", "1 while control/.pause exists", controls.paused(files.ws))
        yield from self._training()
        yield from self._jobs()
        yield from self._gpus()

    def _training(self) -> Iterator[Metric]:
        job = training_view(self.files)
        if job is None:
            return
        info = InfoMetricFamily("finetuned_training", "the job now training")
        info.add_metric([], {"job_id": job["id"], "file": str(job.get("file")), "priority": str(job.get("priority")),
                             "status": str(job.get("status"))})
        yield info
        for name, key, doc in (
            ("step", "step", "optimizer steps done in the current job"),
            ("total_steps", "total_steps", "steps the current job's data calls for"),
            ("line_step", "line_step", "the model line's step counter"),
            ("loss", "loss", "latest training loss"),
            ("validation_loss", "val_loss", "latest validation loss"),
            ("learning_rate", "learning_rate", "current learning rate"),
            ("tokens_per_second", "tokens_per_second", "training throughput in tokens"),
            ("steps_per_second", "steps_per_second", "training throughput in optimizer steps"),
            ("eta_seconds", "eta_seconds", "estimated seconds until the current job ends"),
        ):
            yield from _gauge(f"finetuned_training_{name}", doc, job.get(key))
        objective = GaugeMetricFamily(
            "finetuned_training_objective_metric",
            "an objective's own metric, as last logged (preference jobs: rewards, accuracy, KL)", labels=["name"])
        for name, value in (job.get("objective_metrics") or {}).items():
            if isinstance(value, int | float) and math.isfinite(value):
                objective.add_metric([name], value)
        yield objective
        scores = GaugeMetricFamily("finetuned_eval_score", "a suite's share of cases passed, as last measured "
                                   "in the current job (evals/SUITE.jsonl)", labels=["suite"])
        for suite, value in (job.get("eval_scores") or {}).items():
            scores.add_metric([suite], value)
        yield scores
        eta, _partial = queue_eta(self.files, job)
        yield from _gauge("finetuned_queue_eta_seconds", "estimated seconds until the whole queue is trained", eta)

    def _jobs(self) -> Iterator[Metric]:
        jobs = self.files.jobs()
        counts = {s.value: 0 for s in JobStatus}
        queued = {"high": 0, "normal": 0}
        steps = tokens = 0
        durations = SummaryMetricFamily("finetuned_job_train_seconds", "training time of finished jobs",
                                        labels=["status"])
        finished: dict[str, list[float]] = {s.value: [] for s in JobStatus if not s.active}
        for job in jobs:
            status = job.get("status")
            counts[status] = counts.get(status, 0) + 1
            if status == JobStatus.QUEUED and job.get("priority") in queued:
                queued[job["priority"]] += 1
            steps += job.get("step") or 0
            summary_tokens = job["summary"].get("tokens")
            tokens += summary_tokens if isinstance(summary_tokens, int) else 0
            if status in finished:
                finished[status].append(job_summary(self.files, job)["train_seconds"])
        by_state = GaugeMetricFamily("finetuned_jobs", "jobs by state", labels=["state"])
        for state, n in counts.items():
            by_state.add_metric([state], n)
        yield by_state
        length = GaugeMetricFamily("finetuned_queue_length", "jobs waiting to train", labels=["priority"])
        for priority, n in queued.items():
            length.add_metric([priority], n)
        yield length
        current = training_view(self.files) or {}
        yield CounterMetricFamily("finetuned_trained_steps", "optimizer steps trained, all jobs", value=steps)
        yield CounterMetricFamily("finetuned_trained_tokens", "tokens trained: finished jobs and the current one",
                                  value=tokens + (current.get("tokens") or 0))
        for status, values in finished.items():
            durations.add_metric([status], count_value=len(values), sum_value=sum(values))
        yield durations

    def _gpus(self) -> Iterator[Metric]:
        gpus = health_view(self.files).get("gpu")
        if not isinstance(gpus, list):
            return
        for name, key, doc in (
            ("memory_used_bytes", "memory_used_gb", "GPU memory in use"),
            ("memory_total_bytes", "memory_total_gb", "GPU memory in all"),
            ("utilization_ratio", "utilization_percent", "GPU busy fraction"),
            ("temperature_celsius", "temperature_c", "GPU temperature"),
        ):
            family = GaugeMetricFamily(f"finetuned_gpu_{name}", doc, labels=["gpu", "name"])
            scale = 2**30 if key.endswith("_gb") else 0.01 if key.endswith("_percent") else 1
            for gpu in gpus:
                if isinstance(gpu.get(key), int | float):
                    family.add_metric([str(gpu.get("index")), str(gpu.get("name"))], gpu[key] * scale)
            yield family


def registry(files: Files, settings: MonitorSettings) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(FilesCollector(files, settings))
    return reg
