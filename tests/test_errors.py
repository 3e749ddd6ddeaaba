"""One error taxonomy: every error a user sees is a FinetunedError, and the CLI reports it in one place."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from finetuned.cli.common import Handled
from finetuned.errors import FinetunedError
from finetuned.lock import WorkspaceLock
from finetuned.workspace import Workspace

SRC = Path(__file__).resolve().parents[1] / "src" / "finetuned"

# class name -> (module, exit code): the CLI's exit code for each, as it was before the taxonomy.
USER_FACING = {
    "AlreadyRunning": ("finetuned.lock", 1),
    "AskError": ("finetuned.asks", 1),
    "BuiltinModelError": ("finetuned.models.builtin", 1),
    "ConfigError": ("finetuned.config", 1),
    "ConverterError": ("finetuned.lifecycle.converter", 1),
    "DataError": ("finetuned.data.report", 1),
    "DiskSpaceError": ("finetuned.lifecycle.errors", 1),
    "EvalError": ("finetuned.evaluation.suites", 1),
    "ActionError": ("finetuned.queue.actions", 1),
    "GateRefused": ("finetuned.lifecycle.gate", 1),
    "JobNotFound": ("finetuned.queue.store", 1),
    "LifecycleError": ("finetuned.lifecycle.errors", 1),
    "ModelError": ("finetuned.models.loading", 1),
    "MonitorRefused": ("finetuned.monitor.server", 2),
    "TooManyAttempts": ("finetuned.monitor.security", 1),
    "UnfinishedWork": ("finetuned.lifecycle.errors", 1),
    "UploadError": ("finetuned.monitor.upload", 1),
}
# Never shown to a user as such (see finetuned/errors.py); InjectedOutOfMemory is a test's fault injection.
INTERNAL = {"RecordProblem", "InvalidTransition", "CheckpointMismatch", "InjectedOutOfMemory", "NotARegularFile",
            "Abandoned"}


def _exception_classes() -> set[str]:
    """Every class in src/ whose base is Exception or an ...Error: read, not imported (some import torch)."""
    found = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else ""
                         for b in node.bases}
                if any(b == "Exception" or b.endswith("Error") or b == "FinetunedError" for b in bases):
                    found.add(node.name)
    return found - {"FinetunedError"}


def test_every_exception_class_is_either_user_facing_or_named_internal():
    # A new class fails here on purpose: a user-facing one joins USER_FACING (a FinetunedError with its exit code),
    # any other joins INTERNAL with a comment beside its definition saying why.
    assert _exception_classes() == set(USER_FACING) | INTERNAL


@pytest.mark.parametrize("name", sorted(USER_FACING))
def test_every_user_facing_error_is_a_finetuned_error_with_its_exit_code(name):
    module, code = USER_FACING[name]
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, FinetunedError)
    assert isinstance(cls.exit_code, int) and cls.exit_code == code
    assert cls.hint is None or isinstance(cls.hint, str)


def test_message_hint_and_kind():
    from finetuned.queue.store import JobNotFound

    plain = JobNotFound("no job x")
    assert (plain.message, plain.line(), plain.kind) == ("no job x", "no job x", "job_not_found")
    hinted = JobNotFound("no job x", hint="finetuned queue lists them")
    assert hinted.line() == "no job x (finetuned queue lists them)"
    assert JobNotFound.hint is None, "an instance's hint stays its own"


def test_the_handler_prints_the_line_with_its_hint_and_exits_with_the_class_code():
    class Refused(FinetunedError):
        exit_code = 3
        hint = "do the other thing"

    app = typer.Typer(cls=Handled)

    @app.command()
    def go() -> None:
        raise Refused("cannot go")

    @app.command()
    def stay() -> None:
        pass

    result = CliRunner().invoke(app, ["go"])
    assert (result.exit_code, result.stderr) == (3, "error: cannot go (do the other thing)\n")


def finetuned(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "finetuned", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("errors") / "ws"
    assert finetuned("init", str(folder)).returncode == 0
    return folder


@pytest.mark.parametrize(("args", "code", "stderr"), [
    # queue: JobNotFound, and ActionError (which wraps it) under the lock
    (["status", "nope"], 1, "error: no job nope\n"),
    (["cancel", "nope"], 1, "error: no job nope\n"),
    # lifecycle
    (["use", "v9"], 1, "error: no version 'v9' (known: none)\n"),
    # evaluation
    (["eval", "add", "{suite}", "--name", "bad name"], 1,
     "error: 'bad name' is not a suite name: letters, digits, '_', '-' and '.', at most 64\n"),
    # config, through a file's own settings
    (["add", "{suite}", "--no-check", "--set", "training.epoch=2"], 1, "error: --set: unknown key 'training.epoch'"),
    # a file's settings may not reach past its job (issue 23, item 10)
    (["add", "{suite}", "--no-check", "--set", "distributed.launcher=ray"], 1,
     "error: --set: 'distributed' is a workspace setting (config.json), not a file's"),
], ids=["job-not-found", "action-error", "lifecycle", "eval", "config", "allow-list"])
def test_one_handler_reports_each_family(root, tmp_path, args, code, stderr):
    suite = tmp_path / "suite.jsonl"
    suite.write_text('{"prompt": "2+2?", "expected": "4"}\n')
    result = finetuned(*[a.replace("{suite}", str(suite)) for a in args], "--root", str(root))
    assert result.returncode == code, result.stderr
    assert result.stderr.startswith(stderr) and len(result.stderr.splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_run_refusals_keep_their_exit_codes(root):
    ws = Workspace.at(root)
    with WorkspaceLock(ws.lock_file):
        taken = finetuned("run", "--no-monitor", "--root", str(root))
    assert taken.returncode == 1 and taken.stderr.startswith("error: another finetuned daemon"), taken.stderr
    assert finetuned("config", "set", "monitor.host", "0.0.0.0", "--root", str(root)).returncode == 0
    try:
        refused = finetuned("run", "--root", str(root))
    finally:
        finetuned("config", "set", "monitor.host", "127.0.0.1", "--root", str(root))
    assert refused.returncode == 2 and refused.stderr.startswith("error: monitor.host is 0.0.0.0"), refused.stderr
    assert len(refused.stderr.splitlines()) == 1
