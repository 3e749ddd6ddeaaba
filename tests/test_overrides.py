"""Settings by dotted key: `add --set`, sidecars, `config set`."""

from __future__ import annotations

import json

import pytest

from finetuned.config import Config, ConfigError
from finetuned.overrides import (
    assignments,
    diff,
    is_sidecar,
    job_config,
    read_sidecar,
    redacted,
    sidecar_for,
    touches_model,
)


def test_assignments_parse_values_as_json_when_they_parse():
    assert assignments(["training.epochs=2", "data.packing=false", "data.system_prompt=Be brief.",
                        "lora.target_modules=[\"q_proj\"]"]) == {
        "training": {"epochs": 2}, "data": {"packing": False, "system_prompt": "Be brief."},
        "lora": {"target_modules": ["q_proj"]}}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        assignments(["training.epochs"])


def test_a_job_s_settings_are_validated_over_the_workspace_s():
    config = Config(base_model="builtin:tiny")
    mine = job_config(config, {"training": {"epochs": 2, "lr_scheduler": "cosine"}})
    assert (mine.training.epochs, mine.training.lr_scheduler, mine.base_model) == (2, "cosine", "builtin:tiny")
    assert config.training.epochs == 1, "the workspace's config is left alone"
    with pytest.raises(ConfigError, match=r"unknown key 'training\.epoch'"):
        job_config(config, {"training": {"epoch": 2}})
    assert job_config(config, {"preference": {"beta": 0.2}}).preference.beta == 0.2  # SPEC section 8's example
    with pytest.raises(ConfigError, match=r"unknown key 'preference\.bta'"):
        job_config(config, {"preference": {"bta": 0.2}})
    with pytest.raises(ConfigError, match="'monitor' is a workspace setting"):
        job_config(config, {"monitor": {"port": 1}})
    with pytest.raises(ConfigError, match=r"training\.init_adapter needs method lora or qlora"):
        job_config(config.model_copy(update={"method": "full"}), {"training": {"init_adapter": "x"}})


def test_sidecar_names_and_content(tmp_path):
    assert is_sidecar("a.jsonl.config.json") and is_sidecar("a.json.config.json")
    assert not is_sidecar("model.config.json") and not is_sidecar("a.jsonl")
    data = tmp_path / "a.jsonl"
    assert sidecar_for(data) == tmp_path / "a.jsonl.config.json"
    sidecar_for(data).write_text(json.dumps({"training": {"epochs": 3}}))
    assert read_sidecar(sidecar_for(data)) == {"training": {"epochs": 3}}
    sidecar_for(data).write_text("{not json")
    with pytest.raises(ConfigError, match=r"a\.jsonl\.config\.json: not valid JSON"):
        read_sidecar(sidecar_for(data))
    assert touches_model({"lora": {"r": 8}}) and not touches_model({"training": {"epochs": 2}})


def test_diff_and_redaction_never_show_secrets():
    before = Config()
    after = before.model_copy(deep=True)
    after.training.epochs = 2
    after.monitor.token = "a-secret-token-of-length"
    assert diff(before, after) == ["monitor.token: null -> \"***\"", "training.epochs: 1 -> 2"]
    assert redacted(after.model_dump(mode="json"))["monitor"]["token"] == "***"
