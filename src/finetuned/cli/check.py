"""finetuned check: a file rendered exactly as training would, before any GPU hour is spent."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from finetuned.cli.common import RootOption, console, fail
from finetuned.config import Config
from finetuned.workspace import Workspace

HELP = """Check a data file without a daemon: its format, what its job would keep and drop and why,
the warnings, and a few examples with the text that carries loss inside [[ ]].

It validates and tokenises the file exactly as a job would (the tokens go to a temporary
folder), with the workspace's settings (config.json) when run inside one, else the defaults.
Exit status 0 when the file would train, 1 when it would be refused.

examples:
  finetuned check my_data.jsonl
  finetuned check glaive_toolcall.json --show 3
  finetuned check data.jsonl --base-model /models/Qwen3-0.6B --json | jq .warnings
"""


def check(
    file: Annotated[Path, typer.Argument(help="The data file (.jsonl, or a .json array).")],
    base_model: Annotated[str | None, typer.Option("--base-model", help="Render with this model's tokenizer and "
                                                   "chat template (default: the workspace's base_model).")] = None,
    show: Annotated[int, typer.Option("--show", min=0, help="How many examples to show.")] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (SPEC section 8).")] = False,
    root: RootOption = None,
) -> None:
    if not file.is_file():
        fail(f"{file}: no such file")
    logging.getLogger("finetuned").setLevel(logging.ERROR)  # what the log would say, the report says
    ws = Workspace.at(root)
    config = ws.load_config() if ws.config_path.exists() else Config()
    from finetuned.data import check_file
    from finetuned.models.loading import ModelError, load_tokenizer, resolve_base

    name = base_model or config.base_model
    with tempfile.TemporaryDirectory(prefix="finetuned-base-") as scratch:
        # Outside a workspace a built-in is written out to a scratch folder, never into the current one.
        home = ws if ws.config_path.exists() else Workspace.at(Path(scratch))
        try:
            tokenizer = load_tokenizer(resolve_base(name, home))
        except (ModelError, OSError, ValueError) as exc:
            fail(f"cannot load the tokenizer of {name}: {exc}")
        report = check_file(file, tokenizer, config.data, config.training.max_seq_len, show,
                            config.preference.objective)
    if as_json:
        print(json.dumps({k: v for k, v in report.items() if k != "ok"}, indent=2, ensure_ascii=False))
    else:
        _print(report, name)
    raise typer.Exit(0 if report["ok"] else 1)


def _print(report: dict[str, Any], model: str) -> None:
    verdict = "[green]would train[/green]" if report["ok"] else "[red]would be refused[/red]"
    console.print(f"{escape(report['file'])}: {verdict}")
    console.print(f"format {report['format'] or '?'}, objective {report['objective'] or '?'}, "
                  f"{report['records']} records; rendered with {escape(model)}")
    if report["ok"]:
        dropped = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in report["dropped"].items())
        console.print(f"kept {report['kept']} examples, {report['trained_tokens']} of {report['tokens']} tokens "
                      f"trained; dropped: {dropped or 'none'}"
                      + (f"; cut to fit: {report['truncated']}" if report.get("truncated") else ""))
    else:
        console.print(f"[red]error:[/red] {escape(report.get('error', ''))}")
    for title, entries, style in (("problems", report["problems"], "red"), ("warnings", report["warnings"], "yellow")):
        for entry in entries:
            lines = f" (lines {', '.join(map(str, entry['lines']))})" if entry.get("lines") else ""
            count = f" x{entry['count']}" if entry.get("count", 1) > 1 else ""
            console.print(f"[{style}]{title[:-1]}[/{style}] {entry['kind']}{count}: {escape(entry['message'])}{lines}")
    for example in report["shown"]:
        console.rule(escape(f"line {example['line']}: {example['tokens']} tokens, [[trained]]"), style="dim")
        console.print(escape(example["marked"]), highlight=False)
