"""finetuned config show | set KEY VALUE: the workspace's settings, read and edited with validation."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from finetuned.cli.common import RootOption, console, examples_kept, fail, workspace
from finetuned.config import ConfigError, parse_config, redacted, save_config
from finetuned.fsio import read_json
from finetuned.overrides import diff, parse_value, set_key

app = typer.Typer(
    name="config", no_args_is_help=True, rich_markup_mode=None,
    help=examples_kept("""Show or edit config.json, with validation (a running daemon picks an edit up at once).

examples:
  finetuned config show
  finetuned config set training.epochs 2
  finetuned config set lora.target_modules '["q_proj", "v_proj"]'
  finetuned config set base_model models/base/my-model
"""),
)


@app.command()
def show(root: RootOption = None) -> None:
    """The effective settings as JSON: config.json with every default filled in, secrets shown as ***."""
    ws = workspace(root)
    try:
        config = ws.load_config()
    except ConfigError as exc:
        fail(f"{exc} (the daemon keeps its last good settings; fix it with finetuned config set)")
    print(json.dumps(redacted(config.model_dump(mode="json")), indent=2, ensure_ascii=False))


@app.command("set")
def set_(
    key: Annotated[str, typer.Argument(help="A dotted name, e.g. training.epochs.")],
    value: Annotated[str, typer.Argument(help="JSON when it parses (2, 0.1, true, null, [...]), else a string.")],
    root: RootOption = None,
) -> None:
    """Change one setting: validated first, written atomically, the change printed."""
    ws = workspace(root)
    path = ws.config_path
    try:
        raw: Any = read_json(path) if path.exists() else {}
        before = parse_config(raw, path, warn=False)
    except (OSError, ValueError) as exc:
        fail(f"{path}: cannot be read: {exc}")
    except ConfigError:
        before = None  # an edit may be what repairs it
    if not isinstance(raw, dict):
        fail(f"{path}: must hold a JSON object")
    try:
        set_key(raw, key, parse_value(value))
        after = parse_config(raw, path, warn=False)
    except ConfigError as exc:
        fail(f"{exc} (config.json unchanged)")
    if before is None:
        changes = [f"{key}: -> {json.dumps(parse_value(value))} (config.json is valid again)"]
    else:
        changes = diff(before, after)
    if not changes:
        console.print(f"{key} is already {value}: nothing changed", highlight=False)
        return
    save_config(path, after)
    for line in changes:
        console.print(line, highlight=False)
