"""The scoresde command: the group itself."""

import subprocess
import sys

from click.testing import CliRunner

import scoresde
from scoresde.cli import main


def test_version_and_help():
    runner = CliRunner()
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0 and scoresde.__version__ in result.output
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0 and "Score-based generative modelling" in result.output


def test_runs_as_a_real_process():
    proc = subprocess.run([sys.executable, "-m", "scoresde", "--version"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert scoresde.__version__ in proc.stdout
