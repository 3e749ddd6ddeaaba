"""Settings by dotted key: per-file overrides (sidecars, `add --set`) and `finetuned config set`.

A file's own settings are a nested dict, like config.json's, that is merged over the
workspace's config for that job alone. It is validated the way config.json is (unknown
keys and bad values refused, naming the key), and may set only how its job trains
(`FILE_KEYS`): whoever can write to the inbox or reach the monitor's upload is not the
workspace's owner, so where the worker connects, who is notified, the monitor and the
model folders outside the workspace's models/ stay config.json's.

    NAME.jsonl.config.json   dropped beside NAME.jsonl (before it or with it): that file's settings
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from itertools import accumulate
from pathlib import Path
from typing import Any

from finetuned.config import Config, ConfigError, EvaluationSettings, parse_config, redacted
from finetuned.fsio import NAME_MAX, name_bytes, open_regular
from finetuned.models import builtin
from finetuned.models.loading import adapter_path, base_path
from finetuned.workspace import Workspace

SIDECAR_SUFFIX = ".config.json"
DATA_SUFFIXES = (".jsonl", ".json")
# The allow-list: what a file's own settings may set. Everything else (distributed, which makes the worker
# a driver of whatever cluster an address names; notify; monitor; inbox; control; lifecycle) is the owner's.
FILE_KEYS = ("base_model", "method", "lora", "training", "data", "preference", "previews", "evaluation")
# evaluation.max_regression guards every version switch of the line (lifecycle/gate.py), not one job.
FILE_EVALUATION_KEYS = ("every_steps", "budget", "publish", "suite_seconds", "max_new_tokens", "batch_size")
# A sidecar is a few keys: these bound what reading one may cost (json recurses once per level).
MAX_SETTINGS_BYTES = 64 * 1024
MAX_SETTINGS_DEPTH = 16
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def is_sidecar(name: str) -> bool:
    """`NAME.jsonl.config.json` or `NAME.json.config.json`: settings for a data file, never data itself."""
    return name.endswith(SIDECAR_SUFFIX) and name.removesuffix(SIDECAR_SUFFIX).endswith(DATA_SUFFIXES)


def sidecar_for(data_file: Path) -> Path:
    return data_file.with_name(data_file.name + SIDECAR_SUFFIX)


def sidecar_of(data_file: Path) -> Path | None:
    """The sidecar beside `data_file` when one is there (a link counts); None when not, or when its name
    cannot exist (a data file's name within 12 bytes of the file system's limit has no room for one)."""
    sidecar = sidecar_for(data_file)
    if name_bytes(sidecar.name) > NAME_MAX:
        return None
    return sidecar if sidecar.exists() or sidecar.is_symlink() else None


def parse_value(text: str) -> Any:
    """A value as typed on a command line: JSON when it parses (2, 0.2, true, null, ["q_proj"]), else a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def set_key(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set `training.epochs`-style `key` in a nested dict, creating sections on the way."""
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"'{key}' is not a setting name (e.g. training.epochs)")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: i + 1])} is a value, not a section: cannot set {key}")
        node = child
    node[parts[-1]] = value


def unset_key(raw: dict[str, Any], key: str) -> None:
    """Remove `training.epochs`-style `key` from a nested dict, if there, with any section it leaves empty
    (an unknown section emptied must go too, or it would still be refused)."""
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"'{key}' is not a setting name (e.g. training.epochs)")

    def drop(node: dict[str, Any], rest: list[str]) -> None:
        if len(rest) == 1:
            node.pop(rest[0], None)
            return
        child = node.get(rest[0])
        if isinstance(child, dict):
            drop(child, rest[1:])
            if not child:
                del node[rest[0]]

    drop(raw, parts)


def assignments(pairs: list[str]) -> dict[str, Any]:
    """`["training.epochs=2", "data.packing=false"]` as a nested dict."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--set {pair}: expected KEY=VALUE, e.g. training.epochs=2")
        set_key(out, key.strip(), parse_value(value.strip()))
    return out


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` merged into a copy of `base`, section by section."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"training": {"epochs": 2}}` as `{"training.epochs": 2}`."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def diff(before: Config, after: Config) -> list[str]:
    """One line per changed key, `training.epochs: 1 -> 2`, secrets redacted."""
    old = flatten(redacted(before.model_dump(mode="json")))
    new = flatten(redacted(after.model_dump(mode="json")))
    return [f"{key}: {json.dumps(old.get(key))} -> {json.dumps(new.get(key))}"
            for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]


def _refused(source: str, key: str) -> ConfigError:
    return ConfigError(f"{source}: '{key}' is a workspace setting (config.json), not a file's: a file may set "
                       f"{', '.join(FILE_KEYS[:-1])} and evaluation.{{{','.join(FILE_EVALUATION_KEYS)}}}")


def _in_models(value: Any, key: str, source: str, ws: Workspace, where: Callable[[str, Workspace], Path]) -> None:
    """A model folder a file names must lie under the workspace's models/, the owner's folder: a model or
    adapter from anywhere else (the inbox included) could bring weights that run code when loaded."""
    if not isinstance(value, str) or not value:
        return  # not a path: validation names what is wrong with it
    if ".." not in Path(value).parts and not value.startswith("~"):
        try:
            if where(value, ws).is_relative_to(ws.models):
                return
        except OSError:  # a name too long to look up is no folder of the owner's either
            pass
    raise ConfigError(f"{source}: {key} '{value}' is not under the workspace's models/ folder: a file may name "
                      "a built-in (builtin:...) or a folder under models/; other folders only config.json may name")


def check_overrides(overrides: Any, source: str, ws: Workspace) -> dict[str, Any]:
    """A file's settings as given, or ConfigError naming the key a file may not set."""
    if not isinstance(overrides, dict):
        raise ConfigError(f"{source}: must hold a JSON object, e.g. {{\"training\": {{\"epochs\": 2}}}}")
    for key in overrides:
        if key not in Config.model_fields:
            raise ConfigError(f"{source}: unknown key '{key}'")
        if key not in FILE_KEYS:
            raise _refused(source, key)
    evaluation = overrides.get("evaluation")
    for key in evaluation if isinstance(evaluation, dict) else ():
        if key in EvaluationSettings.model_fields and key not in FILE_EVALUATION_KEYS:
            raise _refused(source, f"evaluation.{key}")
    base = overrides.get("base_model")
    if not (isinstance(base, str) and builtin.is_builtin(base)):
        _in_models(base, "base_model", source, ws, base_path)
    training = overrides.get("training")
    if isinstance(training, dict):
        _in_models(training.get("init_adapter"), "training.init_adapter", source, ws, adapter_path)
    return overrides


# Sections that keep following config.json at every run of a started job: how the daemon runs its work
# (controls, the inbox, the monitor, notifications, where ranks run), not what a job trains. A change of
# launcher between two runs of a job is allowed: its checkpoints load on any world size.
LIVE_SECTIONS = ("control", "inbox", "monitor", "lifecycle", "notify", "distributed")


def frozen(config: Config) -> dict[str, Any]:
    """What a job keeps from its first start, whatever config.json becomes: every section but the live ones
    (none of which hold a secret)."""
    return {key: value for key, value in config.model_dump(mode="json").items() if key not in LIVE_SECTIONS}


def job_config(config: Config, overrides: dict[str, Any], source: str = "the file's settings",
               settings: dict[str, Any] | None = None, *, ws: Workspace) -> Config:
    """The config one job trains with: the workspace's, with the file's own settings over it; once it has
    started, the `settings` frozen then (`frozen`) in place of every section they hold."""
    if not overrides and settings is None:
        return config
    raw = merged(config.model_dump(mode="json"), check_overrides(overrides, source, ws))
    if settings is not None:
        # Whole sections: a key config.json gained since must not leak into a job that started without it.
        raw.update({key: value for key, value in settings.items() if key not in LIVE_SECTIONS})
    return parse_config(raw, source, warn=False)


def _depth(text: str) -> int:
    """How deep JSON `text` nests ([ and { outside strings)."""
    brackets = [1 if c in "[{" else -1 for c in _JSON_STRING.sub("", text) if c in "[]{}"]
    return max(accumulate(brackets), default=0)


def parse_settings(data: bytes, source: str) -> Any:
    """The JSON of a sidecar's bytes, unchecked: ConfigError for anything that is not small, shallow JSON,
    never another exception (a RecursionError here once ended the daemon at every start)."""
    if len(data) > MAX_SETTINGS_BYTES:
        raise ConfigError(f"{source}: over {MAX_SETTINGS_BYTES // 1024} KiB; a file's settings are a few keys")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not valid JSON: {exc}") from None
    if _depth(text) > MAX_SETTINGS_DEPTH:
        raise ConfigError(f"{source}: JSON nested over {MAX_SETTINGS_DEPTH} levels deep")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{source}: not valid JSON: {exc}") from None


def read_sidecar(path: Path, ws: Workspace, config: Config) -> dict[str, Any]:
    """A sidecar's settings, checked over `config`; ConfigError naming the key. Read without following a link,
    only if it is a regular file, and at most MAX_SETTINGS_BYTES of it: a FIFO must not hang the daemon."""
    try:
        with open_regular(path, follow=False) as f:
            data = f.read(MAX_SETTINGS_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path.name}: cannot be read: {exc.strerror or exc}") from None
    overrides = check_overrides(parse_settings(data, path.name), path.name, ws)
    job_config(config, overrides, path.name, ws=ws)
    return overrides


def listed(overrides: dict[str, Any]) -> str:
    """`training.epochs=2, data.packing=false`: a file's settings on one line."""
    return ", ".join(f"{key}={json.dumps(value)}" for key, value in flatten(overrides).items())


# The settings the model check reads: a file that changes them is checked when it trains, and fails alone.
MODEL_KEYS = ("base_model", "method", "lora", "training.init_adapter")


def touches_model(overrides: dict[str, Any]) -> bool:
    return any(key == m or key.startswith(m + ".") for key in flatten(overrides) for m in MODEL_KEYS)
