"""Settings by dotted key: `add --set`, sidecars, `config set`."""

from __future__ import annotations

import json
import os
import threading

import pytest

from finetuned.config import Config, ConfigError
from finetuned.overrides import (
    MAX_SETTINGS_BYTES,
    MAX_SETTINGS_DEPTH,
    assignments,
    check_overrides,
    diff,
    is_sidecar,
    job_config,
    parse_settings,
    read_sidecar,
    redacted,
    sidecar_for,
    touches_model,
)
from finetuned.workspace import Workspace


def test_assignments_parse_values_as_json_when_they_parse():
    assert assignments(["training.epochs=2", "data.packing=false", "data.system_prompt=Be brief.",
                        "lora.target_modules=[\"q_proj\"]"]) == {
        "training": {"epochs": 2}, "data": {"packing": False, "system_prompt": "Be brief."},
        "lora": {"target_modules": ["q_proj"]}}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        assignments(["training.epochs"])


def test_a_job_s_settings_are_validated_over_the_workspace_s(tmp_path):
    ws = Workspace.at(tmp_path)
    config = Config(base_model="builtin:tiny")
    mine = job_config(config, {"training": {"epochs": 2, "lr_scheduler": "cosine"}}, ws=ws)
    assert (mine.training.epochs, mine.training.lr_scheduler, mine.base_model) == (2, "cosine", "builtin:tiny")
    assert config.training.epochs == 1, "the workspace's config is left alone"
    with pytest.raises(ConfigError, match=r"unknown key 'training\.epoch'"):
        job_config(config, {"training": {"epoch": 2}}, ws=ws)
    assert job_config(config, {"preference": {"beta": 0.2}}, ws=ws).preference.beta == 0.2  # SPEC section 8's example
    with pytest.raises(ConfigError, match=r"unknown key 'preference\.bta'"):
        job_config(config, {"preference": {"bta": 0.2}}, ws=ws)
    with pytest.raises(ConfigError, match="'monitor' is a workspace setting"):
        job_config(config, {"monitor": {"port": 1}}, ws=ws)
    with pytest.raises(ConfigError, match=r"training\.init_adapter needs method lora or qlora"):
        job_config(config.model_copy(update={"method": "full"}), {"training": {"init_adapter": "models/x"}}, ws=ws)


def test_sidecar_names_and_content(tmp_path):
    ws = Workspace.at(tmp_path)
    assert is_sidecar("a.jsonl.config.json") and is_sidecar("a.json.config.json")
    assert not is_sidecar("model.config.json") and not is_sidecar("a.jsonl")
    data = tmp_path / "a.jsonl"
    assert sidecar_for(data) == tmp_path / "a.jsonl.config.json"
    sidecar_for(data).write_text(json.dumps({"training": {"epochs": 3}}))
    assert read_sidecar(sidecar_for(data), ws, Config()) == {"training": {"epochs": 3}}
    sidecar_for(data).write_text("{not json")
    with pytest.raises(ConfigError, match=r"a\.jsonl\.config\.json: not valid JSON"):
        read_sidecar(sidecar_for(data), ws, Config())
    assert touches_model({"lora": {"r": 8}}) and not touches_model({"training": {"epochs": 2}})


def test_diff_and_redaction_never_show_secrets():
    before = Config()
    after = before.model_copy(deep=True)
    after.training.epochs = 2
    after.monitor.token = "a-secret-token-of-length"
    assert diff(before, after) == ["monitor.token: null -> \"***\"", "training.epochs: 1 -> 2"]
    assert redacted(after.model_dump(mode="json"))["monitor"]["token"] == "***"


def test_a_file_may_set_only_its_own_job_s_training(tmp_path):
    """The allow-list (issue 23, item 10): what a sidecar, `add --set` or an upload may set."""
    ws = Workspace.at(tmp_path)
    config = Config(base_model="builtin:tiny")
    for section in ("distributed", "notify", "monitor", "inbox", "control", "lifecycle"):
        with pytest.raises(ConfigError, match=rf"x: '{section}' is a workspace setting \(config\.json\)"):
            check_overrides({section: {}}, "x", ws)
    with pytest.raises(ConfigError, match=r"'evaluation\.max_regression' is a workspace setting"):
        check_overrides({"evaluation": {"max_regression": 1}}, "x", ws)
    with pytest.raises(ConfigError, match=r"x: unknown key 'trainig'"):
        check_overrides({"trainig": {}}, "x", ws)
    own = {"method": "lora", "lora": {"r": 4}, "training": {"epochs": 2}, "data": {"packing": False},
           "preference": {"beta": 0.2}, "previews": {"every_steps": 0},
           "evaluation": {"every_steps": 0, "publish": "best"}}
    assert job_config(config, own, ws=ws).evaluation.publish == "best"


@pytest.mark.parametrize(("key", "value", "ok"), [
    ("base_model", "builtin:tiny", True),
    ("base_model", "mine", True),  # a name under models/base/, where versions live
    ("base_model", "models/base/mine", True),
    ("base_model", "{models}/base/mine", True),
    ("base_model", "/etc", False),
    ("base_model", "{root}/inbox/normal/evil", False),
    ("base_model", "inbox/normal/evil", False),
    ("base_model", "models/../inbox/normal/evil", False),
    ("base_model", "~/models/x", False),
    ("init_adapter", "20250101_000000", True),  # a job's adapter, under models/adapters/
    ("init_adapter", "models/adapters/x", True),
    ("init_adapter", "/tmp/adapter", False),
    ("init_adapter", "data/failed", False),
    ("base_model", "a" * 5000, False),  # too long to look up: refused, not raised
    ("init_adapter", "models/" + "a/" * 3000, False),
])
def test_model_folders_a_file_names_lie_under_the_workspace_s_models(tmp_path, key, value, ok):
    ws = Workspace.at(tmp_path)
    (ws.base_models / "mine").mkdir(parents=True)
    (ws.adapters / "20250101_000000").mkdir(parents=True)
    value = value.replace("{models}", str(ws.models)).replace("{root}", str(ws.root))
    overrides = {"base_model": value} if key == "base_model" else {"training": {"init_adapter": value}}
    if ok:
        assert check_overrides(overrides, "x", ws) == overrides
    else:
        with pytest.raises(ConfigError, match=r"is not under the workspace's models/ folder"):
            check_overrides(overrides, "x", ws)


def test_settings_files_are_bounded_in_size_and_depth():
    assert parse_settings(b'{"training": {"epochs": 2}}', "s") == {"training": {"epochs": 2}}
    brackets = "[" * 40 + '\\"{'
    assert parse_settings(json.dumps({"p": brackets}).encode(), "s") == {"p": brackets}, "brackets in a string"
    assert parse_settings(b"[" * MAX_SETTINGS_DEPTH + b"]" * MAX_SETTINGS_DEPTH, "s")
    for deep in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 30_000 + b"1" + b"}" * 30_000):
        with pytest.raises(ConfigError, match=r"s: (JSON nested over 16 levels deep|over 64 KiB)"):
            parse_settings(deep[:MAX_SETTINGS_BYTES], "s")
        with pytest.raises(ConfigError):
            parse_settings(deep, "s")
    with pytest.raises(ConfigError, match="over 64 KiB"):
        parse_settings(b" " * (MAX_SETTINGS_BYTES + 1), "s")
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_settings(b"\xff\xfe{}", "s")
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_settings(b'{"training": {"epochs": ' + b"9" * 5000 + b"}}", "s")  # past int's digit limit


def test_a_sidecar_that_is_not_a_regular_file_is_refused_at_once(tmp_path):
    ws = Workspace.at(tmp_path)
    fifo = tmp_path / "a.jsonl.config.json"
    os.mkfifo(fifo)
    answer: list[str] = []

    def read() -> None:
        try:
            read_sidecar(fifo, ws, Config())
        except ConfigError as exc:
            answer.append(str(exc))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    assert answer == ["a.jsonl.config.json: cannot be read: a named pipe (FIFO), not a regular file"]
    link = tmp_path / "b.jsonl.config.json"
    link.symlink_to(tmp_path / "elsewhere.json")
    (tmp_path / "elsewhere.json").write_text("{}")
    with pytest.raises(ConfigError, match="a symlink, not a regular file"):
        read_sidecar(link, ws, Config())
