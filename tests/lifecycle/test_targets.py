"""Targets: a job id, a version, `base` and the newest checkpoint load the weights they name."""

from __future__ import annotations

import pytest
import torch
from helpers import chat_lines
from lifecycle_helpers import train_job

from finetuned.lifecycle.consolidate import consolidate
from finetuned.lifecycle.errors import LifecycleError
from finetuned.lifecycle.targets import load, resolve
from finetuned.workspace import Workspace

PROMPT = torch.tensor([[1, 5, 9, 13, 17]])


def _logits(ws: Workspace, ref: str | None) -> torch.Tensor:
    model, _tokenizer = load(resolve(ws, ref), ws.load_config())
    with torch.no_grad():
        return model(input_ids=PROMPT).logits


def test_adapter_version_and_base_are_different_weights(trained: Workspace) -> None:
    job_id = next(p.name for p in trained.adapters.iterdir())
    adapter, base = resolve(trained, job_id), resolve(trained, "base")
    assert (adapter.kind, adapter.adapter is not None, base.kind) == ("adapter", True, "version")
    merged = consolidate(trained, job_id).version
    version = resolve(trained, merged.id)
    assert version.model == merged.path
    # The adapter on its base and the merged version give the same logits; the old base does not.
    assert torch.allclose(_logits(trained, job_id), _logits(trained, merged.id), atol=1e-4)
    assert not torch.allclose(_logits(trained, job_id), _logits(trained, base.version.id if base.version else ""),
                              atol=1e-3)


def test_newest_checkpoint_is_the_default_and_matches_its_weights(trained: Workspace) -> None:
    job = train_job(trained, "second.jsonl", chat_lines(40), yield_at=2)
    target = resolve(trained, None)
    assert (target.kind, target.step is not None) == ("checkpoint", True)
    assert job.id in target.label
    assert resolve(trained, job.id).checkpoint == target.checkpoint  # a stopped job: its newest checkpoint
    assert not torch.allclose(_logits(trained, None), _logits(trained, "base"), atol=1e-3)


def test_unknown_target_names_what_exists(trained: Workspace) -> None:
    with pytest.raises(LifecycleError, match="no version 'nope'"):
        resolve(trained, "nope")
