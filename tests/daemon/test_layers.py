"""The daemon, the queue and the monitor never load torch: it stays in the worker's process."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["finetuned.daemon.daemon", "finetuned.monitor.app", "finetuned.cli.app",
                                    "finetuned.lifecycle.line", "finetuned.lifecycle.retention"])
def test_importing_does_not_load_torch(module):
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", f"{module} loads {out.stdout.strip()}"
