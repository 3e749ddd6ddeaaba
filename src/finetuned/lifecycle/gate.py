"""Scores on the workspace's suites, and the gate a switch passes: no suite may fall more than allowed.

`finetuned eval`, consolidation and `use` score models here, on the CPU and with
no per-suite time limit (a case cut short would fail for a reason that is not the
model's). A version's scores are kept in its version.json with the sha256 of each
suite they came from, so an unchanged version on unchanged suites is not scored twice.

The gate compares the candidate with the current version suite by suite: a fall of
more than `evaluation.max_regression` (in share of cases passed) refuses the switch
unless forced, says which suite fell and by how much, and sends `gate_refused`.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass

from pydantic import BaseModel, Field

from finetuned.config import Config
from finetuned.evaluation.suites import EvalError, Suite, load_suites
from finetuned.fsio import sha256_file
from finetuned.lifecycle.errors import LifecycleError
from finetuned.lifecycle.targets import Target, load, of_version
from finetuned.lifecycle.versions import Version, write_version
from finetuned.notify import notify
from finetuned.timestamps import now_text
from finetuned.workspace import Workspace

log = logging.getLogger(__name__)


class Scores(BaseModel):
    """A model's scores as version.json keeps them (`evaluation`)."""

    scores: dict[str, float] = Field(default_factory=dict)  # suite -> share of cases passed
    suites: dict[str, str] = Field(default_factory=dict)  # suite -> sha256 of the file scored
    scored: str = Field(default_factory=now_text)


class GateRefused(LifecycleError):
    """A switch the suites say would make the model worse."""


@dataclass(frozen=True)
class Fall:
    suite: str
    before: float
    after: float

    def __str__(self) -> str:
        return f"{self.suite} fell from {self.before:.2f} to {self.after:.2f} ({self.after - self.before:+.2f})"


def suites(ws: Workspace) -> tuple[list[Suite], dict[str, str]]:
    """The workspace's suites and the sha256 of each file; a broken suite is an error, not a pass."""
    try:
        found = load_suites(ws.evals)
    except EvalError as exc:
        raise LifecycleError(f"evals/: {exc}") from None
    return found, {s.name: sha256_file(ws.evals / f"{s.name}.jsonl") for s in found}


def score(target: Target, config: Config, found: list[Suite]) -> dict[str, float]:
    """Load `target` on the CPU and score it on `found`."""
    from finetuned.evaluation.runner import Evaluator

    model, tokenizer = load(target, config)
    try:
        scores = Evaluator(tokenizer, config.evaluation, timed=False).run(model, found)
        assert scores is not None  # only a round given a `stop` is ever abandoned
        return scores
    finally:
        del model
        gc.collect()


def version_scores(version: Version, target: Target, config: Config, found: list[Suite],
                   hashes: dict[str, str]) -> dict[str, float]:
    """The version's scores: from its version.json when they are of these very suites, else scored and kept."""
    kept = _kept(version)
    if kept is not None and kept.suites == hashes:
        return kept.scores
    scores = score(target, config, found)
    record = Scores(scores=scores, suites=hashes)
    version.evaluation = record.model_dump()
    if version.path is not None and version.recorded:
        try:
            write_version(version.path, version)
        except OSError as exc:  # a read-only folder elsewhere: the scores are still used, just not kept
            log.warning("could not keep %s's scores in its version.json: %s", version.id, exc)
    return scores


def _kept(version: Version) -> Scores | None:
    try:
        return Scores.model_validate(version.evaluation) if version.evaluation else None
    except ValueError:
        return None


def kept_scores(version: Version) -> dict[str, float]:
    """What version.json says the version scored (empty when never scored)."""
    kept = _kept(version)
    return kept.scores if kept else {}


def falls(before: dict[str, float], after: dict[str, float], allowed: float) -> list[Fall]:
    """Every suite whose score fell by more than `allowed` (a tiny epsilon absorbs float noise)."""
    return [Fall(name, before[name], after[name]) for name in sorted(before)
            if name in after and before[name] - after[name] > allowed + 1e-9]


def check(ws: Workspace, config: Config, new: Version, old: Version, action: str) -> dict[str, float]:
    """Score the candidate `new` and the current `old` on the suites; refuse (GateRefused) when a suite
    falls too far. Returns the candidate's scores (empty when evals/ has no suites). A forced switch
    does not come here: --force means the user has decided."""
    found, hashes = suites(ws)
    if not found:
        return {}
    after = version_scores(new, of_version(new, ws), config, found, hashes)
    before = after if old.id == new.id else version_scores(old, of_version(old, ws), config, found, hashes)
    fell = falls(before, after, config.evaluation.max_regression)
    if fell:
        allowed = config.evaluation.max_regression
        notify(config.notify, "gate_refused", {
            "action": action, "candidate": new.id, "current": old.id, "max_regression": allowed,
            "fell": [{"suite": f.suite, "before": f.before, "after": f.after} for f in fell]})
        raise GateRefused(f"{action} refused: on the suites in evals/, {'; '.join(map(str, fell))}, more than "
                          f"evaluation.max_regression {allowed:g} below {old.id}; "
                          f"finetuned use {new.id} --force switches anyway")
    log.info("%s %s passed the gate: %s", action, new.id,
             ", ".join(f"{name} {before[name]:.2f} -> {after[name]:.2f}" for name in sorted(after)))
    return after


def evaluate(ws: Workspace, ref: str | None) -> tuple[Target, dict[str, float], list[Suite]]:
    """`finetuned eval`: score a version (its scores kept in version.json), an adapter or a checkpoint."""
    from finetuned.lifecycle.targets import resolve

    config = ws.load_config()
    target = resolve(ws, ref)
    found, hashes = suites(ws)
    if not found:
        raise LifecycleError(f"no suites in {ws.evals}: add one with finetuned eval add FILE")
    if target.version is not None:
        return target, version_scores(target.version, target, config, found, hashes), found
    return target, score(target, config, found), found
