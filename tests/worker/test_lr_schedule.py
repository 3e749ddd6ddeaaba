"""The learning rate as a pure function of the step."""

from __future__ import annotations

import itertools

import pytest

from finetuned.config import TrainingSettings
from finetuned.worker.lr_schedule import lr_at


def rates(training: TrainingSettings, total: int, line_start: int = 0) -> list[float]:
    return [lr_at(line_start + step, training, step, total) for step in range(total)]


def test_constant_after_a_linear_warmup():
    t = TrainingSettings(learning_rate=1.0, warmup_steps=4)
    assert rates(t, 6) == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_decay_runs_over_the_job_s_steps_after_warmup_down_to_the_floor(kind):
    t = TrainingSettings(learning_rate=1.0, warmup_steps=2, lr_scheduler=kind, min_lr_ratio=0.1)
    lrs = rates(t, 12)
    assert lrs[:3] == [0.5, 1.0, 1.0], "warmup, then the decay starts at the full rate"
    assert all(a > b for a, b in itertools.pairwise(lrs[2:])), lrs
    assert 0.1 < lrs[-1] < 0.25, "close to min_lr_ratio x learning_rate at the job's last step"
    if kind == "linear":
        assert lrs[2] - lrs[3] == pytest.approx(lrs[10] - lrs[11])


def test_in_continuous_mode_each_job_decays_over_its_own_steps_and_warmup_counts_on_the_line():
    t = TrainingSettings(learning_rate=1.0, warmup_steps=3, lr_scheduler="cosine")
    later_job = rates(t, 10, line_start=500)
    assert later_job[0] == 1.0, "the line warmed up long ago: no warmup in a later job"
    assert later_job == rates(TrainingSettings(learning_rate=1.0, warmup_steps=0, lr_scheduler="cosine"), 10)
