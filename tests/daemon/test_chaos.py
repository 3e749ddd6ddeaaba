"""The chaos campaign, short: 10 SIGKILLs of a real daemon and its worker, and no invariant broken.

`python bench/chaos.py` runs the full campaign (100 kills); this is its first ten, on a fixed seed.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import REPO

pytestmark = [pytest.mark.daemon, pytest.mark.timeout(420)]


def test_ten_kills_break_no_invariant(tmp_path, tiny_model_dir):
    out = tmp_path / "chaos.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "chaos.py"), "--kills", "10", "--seed", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=400, check=False)
    assert out.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["violations"] == [], result["violations"]
    assert done.returncode == 0, done.stderr[-3000:]
    assert result["kills"] == 10 and result["daemon_kills"] and result["files"] >= 10
    assert result["completed_adapters_checked"] >= 1
