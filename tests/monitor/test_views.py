"""The monitor's views of the metrics log: suite scores kept apart from an objective's metrics, and kept
through thinning."""

from __future__ import annotations

from finetuned.monitor.views import downsample, eval_scores


def test_eval_scores_are_each_suites_latest() -> None:
    points = [{"step": 1, "loss": 2.0}, {"step": 5, "eval/a": 0.2, "eval/b": 0.5}, {"step": 9, "loss": 1.0},
              {"step": 10, "eval/a": 0.6}]
    assert eval_scores(points) == {"a": 0.6, "b": 0.5}


def test_thinning_keeps_every_measurement() -> None:
    points = [{"step": i, "loss": 1.0} for i in range(1, 1001)]
    points[456]["eval/a"] = 0.5
    points[789]["val_loss"] = 0.9
    thin = downsample(points, 50)
    assert len(thin) < 60
    assert any("eval/a" in p for p in thin) and any("val_loss" in p for p in thin)
