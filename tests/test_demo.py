"""The demo as a library function: what ``scoresde demo`` computes, reachable from Python."""

import re

import pytest
from matplotlib.figure import Figure

import scoresde
from scoresde import demo
from scoresde.data import get_dataset
from scoresde.demo import PC_SNR, solver_plan
from scoresde.training import VECTOR_BATCH


def test_run_demo_returns_the_figure_and_the_summary(tmp_path):
    figure, summary = scoresde.run_demo(tmp_path / "run", steps=5, n=20, quick=True,
                                        progress=False)
    assert isinstance(figure, Figure) and len(figure.axes) == 10  # data + 4 solvers, 3 below,
    # and the colour bars of the log-density and the score field
    titles = [ax.get_title() for ax in figure.axes]
    assert titles[2].startswith("pc · NFE") and titles[2].endswith(f"snr {PC_SNR:g}")
    assert "score field, t = 0.05" in titles
    assert [line.split(":")[0].strip() for line in summary[:4]] == list(solver_plan(True))
    assert summary[4].startswith("log-likelihood") and "10 held-out" in summary[4]
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


def test_run_demo_refuses_bad_input_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"\btoy\b.*'nope'"):
        scoresde.run_demo(tmp_path / "a", toy="nope")
    with pytest.raises(ValueError, match=r"^n\b.*\b10\b.*\b3\b"):
        scoresde.run_demo(tmp_path / "b", n=3)
    assert not any(tmp_path.iterdir())


def test_run_demo_says_each_phase_on_stderr_with_its_time(tmp_path, capsys):
    _, summary = scoresde.run_demo(tmp_path / "run", steps=5, n=20, quick=True)
    err = capsys.readouterr().err
    first = err.splitlines()[0]  # what trains, on what, how long, where
    for fact in ("vp", "8gaussians", "5 steps", f"batch {VECTOR_BATCH}", str(tmp_path / "run")):
        assert fact in first, (fact, first)
    for facts in (("trained",),  # each phase's facts, on one line that ends with its time
                  ("20 points", "em", "20 steps", "NFE 21"),
                  ("20 points", "pc", "10 steps", "snr 0.02", "NFE 21"),
                  ("20 points", "ode", "RK45", "0.01", "NFE"),
                  # the first step follows the data's Gaussian: no score call
                  ("20 points", "dpmpp_2m", "10 steps", "NFE 10"),
                  ("8", "paths", "euler", "10 steps"),
                  ("log-likelihood", "10 held-out", "RK45", "0.01", "NFE"),
                  ("log-density", "16 x 16", "RK45", "0.01")):
        words = [re.compile(rf"(?<![\w-]){re.escape(fact)}(?![\w-])") for fact in facts]
        lines = [line for line in err.splitlines() if all(w.search(line) for w in words)]
        assert len(lines) == 1 and lines[0].endswith(" s"), (facts, err)


def test_run_demo_likelihood_on_at_most_likelihood_points_with_the_gap(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "LIKELIHOOD_POINTS", 6)
    figure, summary = scoresde.run_demo(tmp_path / "run", steps=5, n=20, quick=True,
                                        progress=False)
    assert len(figure.axes[0].collections[0].get_offsets()) == 10  # the data panel: n // 2
    line = summary[4]
    assert "6 held-out" in line
    mean, sem = (float(v) for v in line.split()[1:4:2])
    entropy = get_dataset("8gaussians").entropy
    gap, gap_sem = line.split("gap ")[1].split(" (")[0].split(" ± ")
    assert "noise" in line.split("gap ")[1]  # what a negative gap means
    assert float(gap) == pytest.approx(-mean - entropy, abs=2e-4)
    assert float(gap_sem) == pytest.approx(sem, abs=1e-4)


def test_full_plan_is_few_step_and_labelled():
    plan = solver_plan()
    assert plan["em"]["steps"] <= 100 and plan["pc"]["steps"] <= 100
    assert plan["pc"]["snr"] == PC_SNR and plan["dpmpp_2m"]["steps"] == 10
    assert demo.LIKELIHOOD_TOL <= 1e-3 and demo.DENSITY_GRID >= 32
