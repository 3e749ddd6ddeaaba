"""Free-space checks (consolidation refuses below lifecycle.min_free_gb) and export of versions and jobs."""

from __future__ import annotations

import json
import shutil

import pytest
from lifecycle_helpers import base_plus_adapter_logits, cli, logits, train_job

from finetuned import checkpoints, disk
from finetuned.config import save_config
from finetuned.lifecycle.consolidate import consolidate
from finetuned.lifecycle.errors import DiskSpaceError, LifecycleError
from finetuned.lifecycle.export import export
from finetuned.lifecycle.records import list_adapters


def test_consolidation_refuses_below_the_free_space_threshold(trained):
    """min_free_gb above what is free: a clear refusal, no folder written, config unchanged (CLI)."""
    config = trained.load_config()
    config.lifecycle.min_free_gb = disk.free_gb(trained.root) + 1000
    save_config(trained.config_path, config)
    before = sorted(p.name for p in trained.base_models.iterdir())
    with pytest.raises(DiskSpaceError, match="min_free_gb"):
        consolidate(trained)
    refused = cli("consolidate", "--root", str(trained.root))
    assert refused.returncode == 1
    assert "not enough disk space" in refused.stderr and "GB is free" in refused.stderr
    assert sorted(p.name for p in trained.base_models.iterdir()) == before, "no version, no temporary folder"
    assert trained.load_config().base_model == "builtin:tiny"


def test_free_space_helpers(trained):
    free = disk.free_bytes(trained.root)
    assert disk.free_gb(trained.root / "not" / "yet" / "there") == pytest.approx(free / 2**30, rel=0.01)
    assert disk.enough_space(trained.root, 0, 0)
    assert not disk.enough_space(trained.root, free + 2**30, 0)
    assert not disk.enough_space(trained.root, 0, free / 2**30 + 1)
    (adapter,) = list_adapters(trained)
    (newest,) = trained.job_checkpoints(adapter.job_id).iterdir()
    weights = (newest / checkpoints.WEIGHTS).stat().st_size
    assert 0 < disk.tree_bytes(newest) <= disk.checkpoint_bytes(weights), \
        "the worker's estimate (what it waits for before a save) covers a real checkpoint"


@pytest.mark.e2e
def test_export_a_version_and_a_job_loads_elsewhere(trained, tmp_path):
    (adapter,) = list_adapters(trained)
    version = consolidate(trained, use=False, note="to share").version
    expected = base_plus_adapter_logits(trained.base_models / "tiny", adapter.path)

    out = export(trained, "tiny-v1", tmp_path / "out" / "v1")
    shutil.rmtree(trained.base_models / "tiny-v1")  # the export must not depend on the workspace
    assert (logits(out) - expected).abs().max().item() < 1e-4
    card = (out / "README.md").read_text()
    assert card.startswith("---\nbase_model:") and "# tiny-v1" in card and "to share" in card
    meta = json.loads((out / "finetuned.json").read_text())
    assert meta["kind"] == "version" and meta["version"]["weights_hash"] == version.weights_hash

    pair = export(trained, adapter.job_id, tmp_path / "adapter")
    assert (logits(pair / "base") - logits(trained.base_models / "tiny")).abs().max().item() == 0
    assert (base_plus_adapter_logits(pair / "base", pair / "adapter") - expected).abs().max().item() < 1e-5
    card = (pair / "README.md").read_text()
    assert "library_name: peft" in card and "PeftModel.from_pretrained" in card
    for fact in ("`first.jsonl`", f"{adapter.steps} optimizer steps", "12 examples trained", "## How to load"):
        assert fact in card, (fact, card)
    assert json.loads((pair / "finetuned.json").read_text())["job"]["file"] == "first.jsonl"
    config = json.loads((pair / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "../base", "the exported base, not the workspace's"
    for path in [pair, *pair.rglob("*")]:  # readable by another user: transformers writes weights 0600
        mode = path.stat().st_mode & 0o777
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))

    with pytest.raises(LifecycleError, match="not empty"):
        export(trained, adapter.job_id, tmp_path / "adapter")
    merged = cli("export", adapter.job_id, "--merged", "--to", str(tmp_path / "merged"), "--root", str(trained.root))
    assert merged.returncode == 0, merged.stderr
    assert (logits(tmp_path / "merged") - expected).abs().max().item() < 1e-4
    assert json.loads((tmp_path / "merged" / "finetuned.json").read_text())["kind"] == "merged"
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in (tmp_path / "merged").glob("*.safetensors"))
    assert not list(tmp_path.glob(".*.tmp")), "no temporary folder left"


def test_full_fine_tune_consolidates_as_its_own_model(trained):
    """method=full publishes a whole model; consolidating it records it as the next version of its base."""
    config = trained.load_config()
    config.method = "full"
    config.training.mode = "independent"
    config.training.learning_rate = 1e-3
    save_config(trained.config_path, config)
    job = train_job(trained, "full.jsonl", [{"text": f"line {i} of text"} for i in range(12)])
    version = consolidate(trained, job.id).version
    assert version.parent == "tiny" and version.adapters[0]["method"] == "full"
    assert (logits(version.path) - logits(trained.adapter_dir(job.id))).abs().max().item() < 1e-5
