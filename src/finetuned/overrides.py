"""Settings by dotted key: per-file overrides (sidecars, `add --set`) and `finetuned config set`.

A file's own settings are a nested dict, like config.json's, that is merged over the
workspace's config for that job alone. It is validated the way config.json is (unknown
keys and bad values refused, naming the key), and may not touch what belongs to the
workspace rather than to a job (the monitor, the inbox, notifications...).

    NAME.jsonl.config.json   dropped beside NAME.jsonl (before it or with it): that file's settings
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from finetuned.config import Config, ConfigError, parse_config, redacted
from finetuned.fsio import NAME_MAX, name_bytes

SIDECAR_SUFFIX = ".config.json"
DATA_SUFFIXES = (".jsonl", ".json")
# Sections that configure the daemon, not a job: a file cannot change them.
WORKSPACE_SECTIONS = ("control", "inbox", "monitor", "lifecycle", "notify")


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


def check_overrides(overrides: Any, source: str) -> dict[str, Any]:
    """A file's settings as given, or ConfigError naming the key it cannot take."""
    if not isinstance(overrides, dict):
        raise ConfigError(f"{source}: must hold a JSON object, e.g. {{\"training\": {{\"epochs\": 2}}}}")
    for section in WORKSPACE_SECTIONS:
        if section in overrides:
            raise ConfigError(f"{source}: '{section}' is a workspace setting (config.json), not a file's")
    return overrides


# Sections that keep following config.json at every run of a started job: how the daemon runs its work
# (controls, the inbox, the monitor, notifications, where ranks run), not what a job trains. A change of
# launcher between two runs of a job is allowed: its checkpoints load on any world size.
LIVE_SECTIONS = (*WORKSPACE_SECTIONS, "distributed")


def frozen(config: Config) -> dict[str, Any]:
    """What a job keeps from its first start, whatever config.json becomes: every section but the live ones
    (none of which hold a secret)."""
    return {key: value for key, value in config.model_dump(mode="json").items() if key not in LIVE_SECTIONS}


def job_config(config: Config, overrides: dict[str, Any], source: str = "the file's settings",
               settings: dict[str, Any] | None = None) -> Config:
    """The config one job trains with: the workspace's, with the file's own settings over it; once it has
    started, the `settings` frozen then (`frozen`) in place of every section they hold."""
    if not overrides and settings is None:
        return config
    raw = merged(config.model_dump(mode="json"), check_overrides(overrides, source))
    if settings is not None:
        # Whole sections: a key config.json gained since must not leak into a job that started without it.
        raw.update({key: value for key, value in settings.items() if key not in LIVE_SECTIONS})
    return parse_config(raw, source, warn=False)


def read_sidecar(path: Path, config: Config | None = None) -> dict[str, Any]:
    """A sidecar's settings, checked over `config` (default: the defaults); ConfigError naming the key."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path.name}: not valid JSON: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path.name}: cannot be read: {exc.strerror or exc}") from None
    overrides = check_overrides(raw, path.name)
    job_config(config or Config(), overrides, path.name)
    return overrides


def listed(overrides: dict[str, Any]) -> str:
    """`training.epochs=2, data.packing=false`: a file's settings on one line."""
    return ", ".join(f"{key}={json.dumps(value)}" for key, value in flatten(overrides).items())


# The settings the model check reads: a file that changes them is checked when it trains, and fails alone.
MODEL_KEYS = ("base_model", "method", "lora", "training.init_adapter")


def touches_model(overrides: dict[str, Any]) -> bool:
    return any(key == m or key.startswith(m + ".") for key in flatten(overrides) for m in MODEL_KEYS)
