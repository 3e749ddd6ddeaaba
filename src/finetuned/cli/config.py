"""finetuned config show | set KEY VALUE | unset KEY: the workspace's settings, read and edited with validation."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from finetuned.cli.common import RootOption, console, examples_kept, fail, workspace
from finetuned.config import ConfigError, parse_config, problems, redacted, repair_hint, save_config
from finetuned.fsio import atomic_write_json, read_json
from finetuned.overrides import diff, parse_value, set_key, unset_key

app = typer.Typer(
    name="config", no_args_is_help=True, rich_markup_mode=None,
    help=examples_kept("""Show or edit config.json, with validation (a running daemon picks an edit up at once).

An edit applies to the jobs that have not started yet: a job keeps the settings it
started with (all but control, inbox, monitor, lifecycle, notify and distributed,
which follow config.json) until it ends; finetuned retry JOB --fresh-config starts a
failed one over with the settings of now.

examples:
  finetuned config show
  finetuned config set training.epochs 2
  finetuned config set lora.target_modules '["q_proj", "v_proj"]'
  finetuned config set base_model models/base/my-model
  finetuned config unset training.epoch     # a key config.json should not have
"""),
)


@app.command()
def show(root: RootOption = None) -> None:
    """The effective settings as JSON: config.json with every default filled in, secrets shown as ***."""
    ws = workspace(root)
    try:
        config = ws.load_config()
    except ConfigError as exc:
        fail(f"{exc.line()}; a running daemon keeps its last good settings meanwhile")
    print(json.dumps(redacted(config.model_dump(mode="json")), indent=2, ensure_ascii=False))


@app.command("set")
def set_(
    key: Annotated[str, typer.Argument(help="A dotted name, e.g. training.epochs.")],
    value: Annotated[str, typer.Argument(help="JSON when it parses (2, 0.1, true, null, [...]), else a string.")],
    root: RootOption = None,
) -> None:
    """Change one setting: validated first, written atomically, the change printed."""
    _edit(root, key, lambda raw: set_key(raw, key, parse_value(value)), f"set to {value}",
          f"{key} is already {value}")


@app.command()
def unset(
    key: Annotated[str, typer.Argument(help="A dotted name, e.g. training.epochs.")],
    root: RootOption = None,
) -> None:
    """Remove one key from config.json: its default applies again (and a key that is no setting goes)."""
    _edit(root, key, lambda raw: unset_key(raw, key), "removed",
          f"{key} is not set in config.json (its default applies)")


def _edit(root: Path | None, key: str, change: Callable[[dict[str, Any]], None], done: str, unchanged: str) -> None:
    """Apply `change` to config.json's content; write it when it validates after. A config.json that is
    invalid already takes an edit that mends at least one of its problems and adds none, so each can be
    mended in turn; an edit that mends none is refused, naming the problem in its way and what mends it."""
    ws = workspace(root)
    path = ws.config_path
    try:
        raw: Any = read_json(path) if path.exists() else {}
    except (OSError, ValueError) as exc:
        fail(f"{path}: cannot be read: {exc} (edit config.json)")
    if not isinstance(raw, dict):
        fail(f"{path}: must hold a JSON object (edit config.json)")
    old = json.loads(json.dumps(raw))
    try:
        change(raw)
    except ConfigError as exc:
        fail(f"{exc} (config.json unchanged)")
    before = [str(p) for p in problems(old, path)]
    if raw == old and not before:
        console.print(f"{unchanged}: nothing changed", highlight=False)
        return
    after = problems(raw, path)
    if not after:
        config = parse_config(raw, path, warn=False)
        changes = [f"{key}: {done}; config.json is valid again"] if before else \
            diff(parse_config(old, path, warn=False), config)
        if not changes:
            console.print(f"{unchanged}: nothing changed", highlight=False)
            return
        save_config(path, config)
        for line in changes:
            console.print(line, highlight=False)
        return
    new = [p for p in after if str(p) not in before]
    if new:
        fail(f"{new[0]} (config.json unchanged)")
    if len(after) == len(before):  # none mended: say what is in the way and what mends it
        fail(f"config.json is invalid already: {after[0]} ({repair_hint(after[0])}); config.json unchanged")
    atomic_write_json(path, raw, mode=0o600)  # not save_config: it writes only a config that validates
    console.print(f"{key}: {done}; config.json is still invalid: {after[0]} ({repair_hint(after[0])})",
                  highlight=False)
