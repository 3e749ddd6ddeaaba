"""finetuned doctor: check the workspace, the daemon, the model, disk and accelerator."""

from __future__ import annotations

from typing import Annotated

import typer

from finetuned.cli.common import RootOption, console
from finetuned.workspace import Workspace

HELP = """Check what can stop training, one OK/WARN/FAIL line each; exit code 1 on any FAIL.

Checks: the workspace folders, config.json, the daemon (alive, since when,
heartbeat), the lock, the base model (config and tokenizer load; --deep loads
the weights and checks them against version.json), free disk against
lifecycle.min_free_gb, the accelerator, the last failed file and the last
ERROR in today's daemon log. It changes nothing.

examples:
  finetuned doctor
  finetuned doctor --deep --root ~/training
"""

_STYLE = {"OK": "green", "WARN": "yellow", "FAIL": "red"}


def doctor(
    deep: Annotated[bool, typer.Option("--deep", help="Also load the model's weights and check their hash.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    root: RootOption = None,
) -> None:
    from finetuned.lifecycle.doctor import FAIL, as_json, run_checks  # torch: keep `finetuned --help` instant

    checks = run_checks(Workspace.at(root), deep=deep)
    if json_out:
        print(as_json(checks))
    else:
        for check in checks:
            style = _STYLE[check.level]
            console.print(f"[{style}]{check.level:<4}[/{style}] {check.name:<13} {check.message}", highlight=False,
                          soft_wrap=True)
    if any(check.level == FAIL for check in checks):
        raise typer.Exit(1)
