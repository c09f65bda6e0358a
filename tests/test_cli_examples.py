"""Smoke test: the cheapest example runs in its quick mode and covers every sampler."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import scoresde

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not hasattr(scoresde, "SAMPLERS"), reason="needs the samplers (issue 4)")
def test_custom_sde_example_runs_every_sampler():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "custom_sde.py"), "--quick"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    for solver in scoresde.SAMPLERS:
        assert f"{solver}: NFE" in proc.stdout
