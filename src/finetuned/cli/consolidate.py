"""finetuned consolidate: merge an adapter into its base as the next version, with progress."""

from __future__ import annotations

import logging
import warnings
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from finetuned.cli.common import RootOption, console, workspace

HELP = """Merge a job's adapter into its base model and write the next version, models/base/NAME-vN/.

Without JOB_ID: the model line's latest adapter (in continuous mode it holds
every job trained on the current base since it became current). The merge runs
in float32 on the CPU; the version gets a version.json (parent, jobs, data
files and sha256, steps, tokens, date, weights hash, note) and becomes current
unless --no-use. An existing version is never overwritten. Refused while a job
is part-way through training on the current base (its steps would be left out),
or when the disk would fall below lifecycle.min_free_gb.

With suites in evals/, the new version and the current one are scored first:
if a suite falls more than evaluation.max_regression, the version is written
but not made current (exit code 1; --force switches anyway).

examples:
  finetuned consolidate --note "after the arithmetic files"
  finetuned consolidate 20251116_014530 --no-use
"""


def quiet_libraries() -> None:
    """One progress bar, ours: no per-shard bars, no deprecation notes about peft's internals."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # peft imports it; its CPU kernels are not ours


def consolidate(
    job_id: Annotated[str | None, typer.Argument(help="The job whose adapter to merge (default: the latest).")] = None,
    note: Annotated[str, typer.Option("--note", help="A one-line note kept in version.json.")] = "",
    no_use: Annotated[bool, typer.Option("--no-use", help="Write the version without making it current.")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Merge again / switch despite unfinished jobs or a falling suite.")] = False,
    root: RootOption = None,
) -> None:
    ws = workspace(root)
    from finetuned.lifecycle.consolidate import consolidate as run_consolidation

    quiet_libraries()
    columns = (SpinnerColumn(), TextColumn("{task.description:<28}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("consolidating", total=1)

        def report(what: str, done: int, total: int) -> None:
            bar.update(task, description=what, completed=done, total=total)

        result = run_consolidation(ws, job_id, note=note, progress=report, use=not no_use, force=force)
    v = result.version
    console.print(f"{result.message}: {v.path}")
    console.print(f"  parent {v.parent}, jobs {', '.join(j['job_id'] for j in v.jobs)}, {v.steps} steps, "
                  f"{v.tokens} tokens, weights {str(v.weights_hash)[:12]}")
    if result.refused:
        raise typer.Exit(1)
