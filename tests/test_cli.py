"""The scoresde command: the group itself."""

import pytest

import scoresde

from problems import invoke, run_python


def test_version_and_help():
    result = invoke("--version")
    assert result.exit_code == 0 and scoresde.__version__ in result.output
    result = invoke("--help")
    assert result.exit_code == 0 and "Score-based generative modelling" in result.output


@pytest.mark.slow
def test_runs_as_a_real_process():
    proc = run_python("-m", "scoresde", "--version")
    assert proc.returncode == 0, proc.stderr
    assert scoresde.__version__ in proc.stdout
