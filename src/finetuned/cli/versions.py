"""finetuned versions / use / rollback: the base-model versions of the model line, and which one is current."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from finetuned.cli.common import RootOption, console, fail, workspace
from finetuned.config import ConfigError

if TYPE_CHECKING:
    from finetuned.lifecycle.versions import Version

VERSIONS_HELP = """List the base-model versions, the current one (config.json's base_model) marked with *.

A version is a folder models/base/NAME-vN/ with a version.json: the version it
was merged onto, the jobs and data files (with sha256) merged in, steps and
tokens, date, weights hash and note. Version 0 is the original base model.

examples:
  finetuned versions
  finetuned versions --json | jq '.[] | select(.current) | .id'
"""

USE_HELP = """Train on VERSION from the next job on (sets base_model in config.json).

The switch is logged (logs/daemon_YYYYMMDD.log, models/versions.jsonl) and
starts a fresh model line on VERSION. It is refused while a job is part-way
through training on the current base (its steps are in no version yet):
let it finish, or pass --force. With suites in evals/, VERSION and the current
version are scored first, and the switch is refused when a suite falls more
than evaluation.max_regression (--force switches anyway).

examples:
  finetuned use tiny-v2
  finetuned use v2              # a number in the current line
"""

ROLLBACK_HELP = """Make an older version current again. Nothing is deleted: `finetuned use` goes forward again.

examples:
  finetuned rollback v1
  finetuned rollback smollm2-135m-instruct       # back to the original base (version 0)
"""

ForceOption = Annotated[bool, typer.Option("--force", help="Switch even while a job is part-way through, "
                                                             "or past a falling suite.")]


def versions(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (version.json of each, plus current).")] = False,
    root: RootOption = None,
) -> None:
    ws = workspace(root)
    from finetuned.lifecycle import line  # torch comes with it: keep `finetuned --help` instant
    from finetuned.lifecycle.versions import list_versions

    try:
        base = ws.load_config().base_model
    except ConfigError as exc:
        fail(exc.line(), 2)  # not ConfigError's 1: this command always answered an unusable config.json with 2
    current = line.current(ws).id
    found = list_versions(ws, base)
    if as_json:
        docs = [{**v.model_dump(mode="json"), "path": str(v.path), "recorded": v.recorded, "current": v.id == current}
                for v in found]
        print(json.dumps(docs, indent=2, ensure_ascii=False))
        return
    if not found:
        console.print(f"no model folders in {ws.base_models} yet (the base is written out on first use)")
        return
    table = Table("", "version", "parent", "steps", "created", "data files", "scores", "note")
    for v in found:
        files = ", ".join(str(d.get("file")) for d in v.data) or "-"
        steps = f"{v.steps} (total {v.total_steps})" if v.version else "-"
        created = v.created[:16] if v.recorded else "-"
        table.add_row("*" if v.id == current else "", v.id, v.parent or "-", steps, created, files,
                      _scores(v), v.note, style="bold" if v.id == current else "")
    console.print(table)
    console.print(f"current: {current} (config.json base_model = {base!r})")


def _scores(version: Version) -> str:
    scores = (version.evaluation or {}).get("scores") or {}
    return ", ".join(f"{name} {value:.2f}" for name, value in sorted(scores.items())) or "-"


def _switch(action: str, version: str, force: bool, root: RootOption) -> None:
    ws = workspace(root)
    from finetuned.lifecycle import line

    chosen = (line.rollback if action == "rollback" else line.use)(ws, version, force=force)
    console.print(f"current version: {chosen.id} (base_model = {chosen.base_model!r}); "
                  "the daemon uses it from the next job on")


def use(version: Annotated[str, typer.Argument(help="A version: tiny-v2, v2, or a folder.")],
        force: ForceOption = False, root: RootOption = None) -> None:
    _switch("use", version, force, root)


def rollback(version: Annotated[str, typer.Argument(help="An older version: tiny-v1, v1, tiny.")],
             force: ForceOption = False, root: RootOption = None) -> None:
    _switch("rollback", version, force, root)
