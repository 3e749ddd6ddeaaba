"""finetuned service install / uninstall: a systemd user unit for the daemon."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from finetuned.cli.common import RootOption, console, examples_kept, workspace
from finetuned.lifecycle import service as unit

app = typer.Typer(
    name="service", no_args_is_help=True, rich_markup_mode=None,
    help=examples_kept("""Run the daemon as a systemd user service, so it survives logouts and reboots.

The unit is named after the workspace's folder and a hash of its path
(finetuned-training-1a2b3c4d.service), so two workspaces never share one;
install prints the name and the systemctl line to start it.

examples:
  finetuned service install --root ~/training
  systemctl --user daemon-reload && systemctl --user enable --now finetuned-training-1a2b3c4d.service
  loginctl enable-linger $USER          # start at boot, without logging in
  finetuned service uninstall --root ~/training
"""),
)

UnitDirOption = Annotated[Path | None, typer.Option(
    "--unit-dir", help="Where to write the unit (default: ~/.config/systemd/user).")]


@app.command()
def install(
    root: RootOption = None,
    unit_dir: UnitDirOption = None,
    stop_timeout: Annotated[int, typer.Option(
        "--stop-timeout", help="Seconds systemd waits for the checkpoint on stop before killing.")]
    = unit.DEFAULT_STOP_TIMEOUT,
) -> None:
    """Write the unit file (runs: finetuned run --root DIR, restarts on failure)."""
    ws = workspace(root)
    path = unit.install(ws, unit_dir, stop_timeout=stop_timeout)
    console.print(f"wrote {path}")
    console.print(f"start it now and at every login: {unit.enable_command(ws)}", highlight=False)
    console.print("start it at boot without logging in: loginctl enable-linger $USER", highlight=False)


@app.command()
def uninstall(root: RootOption = None, unit_dir: UnitDirOption = None) -> None:
    """Remove the unit file (stop it first: systemctl --user disable --now finetuned-NAME-HASH.service)."""
    ws = workspace(root, must_exist=False)
    path = unit.uninstall(ws, unit_dir)
    if path is None:
        console.print(f"no unit {unit.unit_name(ws)}: nothing to do")
        return
    console.print(f"removed {path}; if it runs: systemctl --user disable --now {path.name}",
                  highlight=False)
