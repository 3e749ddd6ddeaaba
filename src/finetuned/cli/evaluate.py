"""finetuned eval: score a model on the workspace's suites; `eval add FILE` checks a suite and adds it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from finetuned.cli.common import RootOption, console, fail, workspace

HELP = """Score TARGET on the suites in evals/, or add a suite: finetuned eval add FILE.

TARGET is a version (tiny-v2, v2, base for the current one), a job id (its
adapter, or while it trains its newest checkpoint) or latest (the line's
newest checkpoint). Answers are greedy, on the CPU, with no time limit. A
version's scores are kept in its version.json (finetuned versions shows them)
and reused while the suites are unchanged.

A suite is a .jsonl file, one case a line: {"prompt": ...} or {"messages": [...]},
"expected" and "scorer" (exact, contains, regex, json, choice with "choices").
`eval add` checks every line and names the first bad one; a good file is
copied to evals/NAME.jsonl (--name, default the file's name).

examples:
  finetuned eval add arithmetic.jsonl
  finetuned eval base
  finetuned eval 20251116_014530 --json
"""

ADD = "add"


def eval_(
    target: Annotated[str, typer.Argument(help="A version, base, a job id, latest; or `add`.")],
    file: Annotated[Path | None, typer.Argument(help="With `add`: the suite file to add.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="With `add`: the suite's name.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print {target, scores} as JSON.")] = False,
    root: RootOption = None,
) -> None:
    ws = workspace(root)
    if target == ADD:
        _add(ws.evals, file, name)
        return
    if file is not None:
        fail(f"one TARGET at a time (got {target!r} and {str(file)!r}); to add a suite: finetuned eval add FILE")
    from finetuned.cli.consolidate import quiet_libraries
    from finetuned.lifecycle.gate import evaluate

    quiet_libraries()
    with console.status(f"scoring {target} on the suites in evals/"):
        chosen, scores, suites = evaluate(ws, target)
    if as_json:
        print(json.dumps({"target": chosen.label, "kind": chosen.kind, "scores": scores}))
        return
    table = Table("suite", "cases", "score", title=f"{chosen.label}" + (f" (step {chosen.step})" if chosen.step
                                                                       else ""))
    for suite in suites:
        table.add_row(suite.name, str(len(suite.cases)), f"{scores[suite.name]:.2f}")
    console.print(table)


def _add(folder: Path, file: Path | None, name: str | None) -> None:
    from finetuned.evaluation.suites import add_suite

    if file is None:
        fail("finetuned eval add FILE: which file?")
    if not file.is_file():
        fail(f"{file}: no such file")
    suite = add_suite(folder, file, name)
    scorers = sorted({case.scorer for case in suite.cases})
    console.print(f"added suite {suite.name} ({len(suite.cases)} cases; {', '.join(scorers)}) as "
                  f"{folder / (suite.name + '.jsonl')}")
