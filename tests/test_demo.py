"""The demo as a library function: what ``scoresde demo`` computes, reachable from Python."""

import pytest
from matplotlib.figure import Figure

import scoresde
from scoresde.demo import PC_SNR, solver_plan


def test_run_demo_returns_the_figure_and_the_summary(tmp_path):
    figure, summary = scoresde.run_demo(tmp_path / "run", steps=5, n=20, quick=True,
                                        progress=False)
    assert isinstance(figure, Figure) and len(figure.axes) == 8  # data + 4 solvers, 3 below
    titles = [ax.get_title() for ax in figure.axes]
    assert titles[2].startswith("pc · NFE") and titles[2].endswith(f"snr {PC_SNR:g}")
    assert "score field, t = 0.05" in titles
    assert [line.split(":")[0].strip() for line in summary[:4]] == list(solver_plan(True))
    assert summary[4].startswith("log-likelihood") and "10 held-out points" in summary[4]
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


def test_run_demo_refuses_bad_input_before_training(tmp_path):
    with pytest.raises(ValueError, match="unknown toy 'nope'"):
        scoresde.run_demo(tmp_path / "a", toy="nope")
    with pytest.raises(ValueError, match="n must be an integer >= 10"):
        scoresde.run_demo(tmp_path / "b", n=3)
    assert not any(tmp_path.iterdir())
