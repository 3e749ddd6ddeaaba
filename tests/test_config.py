"""config.json: defaults written when missing, one clear line naming a wrong key or value."""

from __future__ import annotations

import json
import logging
import stat
import subprocess
import sys

import pytest

from finetuned.config import Config, ConfigError, load_config, redacted, save_config, without_secrets
from finetuned.workspace import Workspace


def test_missing_config_gets_the_defaults_written(tmp_path):
    path = tmp_path / "config.json"
    config = load_config(path)
    assert config == Config()
    written = json.loads(path.read_text())
    assert written["base_model"] == "builtin:smollm2-135m-instruct"
    assert written["training"]["mode"] == "continuous"
    assert written["training"]["precision"] == "auto"
    assert written["lora"] == {"r": 16, "alpha": 32.0, "dropout": 0.05, "target_modules": "all-linear"}


@pytest.mark.parametrize(("content", "expected"), [
    ({"training": {"batch_sise": 4}}, "unknown key 'training.batch_sise'"),
    ({"training": {"batch_size": -1}}, "training.batch_size"),
    ({"method": "qlorax"}, "method"),
    ({"training": {"mode": "sometimes"}}, "training.mode"),
    ({"training": {"precision": "fp16"}}, "training.precision"),
])
def test_bad_config_names_the_key(tmp_path, content, expected):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_cli_reports_a_bad_config_in_one_line_without_traceback(tmp_path):
    subprocess.run([sys.executable, "-m", "finetuned", "init", str(tmp_path)], check=True, capture_output=True)
    (tmp_path / "config.json").write_text('{"training": {"epochs": "many"}}')
    result = subprocess.run([sys.executable, "-m", "finetuned", "run", "--root", str(tmp_path), "--no-monitor"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "training.epochs" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_preview_keys_in_their_old_place_are_read_with_a_warning(tmp_path, caplog):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"monitor": {"port": 9000, "preview_every_steps": 7, "preview_budget": 0.2}}))
    with caplog.at_level(logging.WARNING, logger="finetuned.config"):
        config = load_config(path)
    assert (config.previews.every_steps, config.previews.budget, config.monitor.port) == (7, 0.2, 9000)
    assert any("monitor.preview_every_steps is now previews.every_steps" in r.message for r in caplog.records)
    both = {"monitor": {"preview_every_steps": 7}, "previews": {"every_steps": 3}}
    path.write_text(json.dumps(both))
    assert load_config(path).previews.every_steps == 3, "the new place wins"


def test_config_json_is_written_for_its_owner_alone(tmp_path):
    path = tmp_path / "config.json"
    save_config(path, Config())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)  # an older version wrote it so
    config = Config()
    config.monitor.token = "a-token-of-sixteen+"
    path.write_text(json.dumps(config.model_dump(mode="json")))
    path.chmod(0o644)
    Workspace.at(tmp_path).create()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600, "a config holding a secret is made private at start"


def test_secrets_are_redacted_wherever_a_config_is_copied():
    config = Config()
    config.monitor.token, config.notify.webhook = "a-token-of-sixteen+", "https://hooks.example/x"
    dumped = redacted({"summary": {"config": config.model_dump(mode="json")}, "other": [config.model_dump()]})
    for copy in (dumped["summary"]["config"], dumped["other"][0]):
        assert copy["monitor"]["token"] == "***" and copy["notify"]["webhook"] == "***"
        assert copy["notify"]["command"] is None, "an unset secret stays unset"
        assert copy["training"] == config.training.model_dump(mode="json")
    worker = without_secrets(config)
    assert worker.monitor.token == "***" and worker.notify.webhook == "***" and worker.training == config.training
    assert config.monitor.token == "a-token-of-sixteen+", "the daemon's own config is untouched"


@pytest.mark.parametrize("precision", ["auto", "fp32", "bf16"])
def test_training_precision_is_read(tmp_path, precision):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"training": {"precision": precision}}))
    assert load_config(path).training.precision == precision
