"""Smoke test: the cheapest example runs in its quick mode and covers every sampler."""

import pytest

import scoresde

from problems import ROOT, run_python


@pytest.mark.slow
def test_custom_sde_example_runs_every_sampler():
    proc = run_python(ROOT / "examples" / "custom_sde.py", "--quick", timeout=300)
    assert proc.returncode == 0, proc.stderr
    for solver in scoresde.SAMPLERS:
        assert f"{solver}: NFE" in proc.stdout
