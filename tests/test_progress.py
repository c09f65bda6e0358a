"""Progress on long loops: a bar in a terminal, full lines every so many seconds elsewhere, for
sampling and likelihoods (training's and FID's are tested with them), leaving results alone."""

import io

import numpy as np
import pytest

from problems import invoke
from scoresde.progress import Progress, line_every


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_lines_away_from_a_terminal_come_by_time_and_end_with_the_last(monkeypatch):
    monkeypatch.setenv("SCORESDE_PROGRESS_S", "0")
    stream = io.StringIO()
    with Progress(4, unit="step", desc="work", stream=stream) as bar:
        for _ in range(4):
            bar.update(postfix="x=1")
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and len(lines) == 4  # each update (the end: once)
    assert [line.split()[2] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert all(line.startswith("work: step ") and line.endswith(" x=1") for line in lines)
    assert "100%" in lines[-1] and "step/s]" in lines[-1]
    monkeypatch.delenv("SCORESDE_PROGRESS_S")
    assert line_every() == 30.0
    quiet = io.StringIO()
    with Progress(4, unit="step", desc="work", stream=quiet) as bar:
        bar.update(4)
    assert quiet.getvalue() == ""  # a short loop says nothing in a log


def test_a_terminal_gets_a_bar_and_nothing_is_shown_when_disabled(monkeypatch):
    stream = Terminal()
    with Progress(3, unit="chunk", desc="sampling", stream=stream) as bar:
        bar.update(3)
    assert "\r" in stream.getvalue() and "/3 [" in stream.getvalue()  # tqdm's bar
    monkeypatch.setenv("SCORESDE_PROGRESS_S", "0")
    off = io.StringIO()
    with Progress(3, unit="chunk", desc="sampling", stream=off, enabled=False) as bar:
        bar.update(3)
    assert off.getvalue() == ""


@pytest.mark.parametrize("value", ["-1", "soon", "nan"])
def test_a_bad_interval_is_named(monkeypatch, value):
    monkeypatch.setenv("SCORESDE_PROGRESS_S", value)
    with pytest.raises(ValueError, match=f"SCORESDE_PROGRESS_S .*{value!r}"):
        line_every()
    with Progress(2, unit="step", desc="work", stream=io.StringIO(), enabled=False) as bar:
        bar.update(2)  # no lines to write: the interval is never read


def test_sampling_shows_its_steps_in_a_pipe_and_draws_what_it_draws_without(in_workdir,
                                                                            monkeypatch):
    monkeypatch.setenv("SCORESDE_PROGRESS_S", "0")
    args = ["sample", "--solver", "em", "--steps", 20, "--n", 50, "--force"]
    shown = invoke(*args, "--out", "shown.npz")
    assert shown.exit_code == 0, shown.output
    lines = [line for line in shown.stderr.splitlines() if line.startswith("sampling:")]
    assert lines and all(line.split()[1] == "step" for line in lines)
    assert lines[-1].split()[2] == "20/20" and "\r" not in shown.stderr
    quiet = invoke(*args, "--out", "quiet.npz", "--json")  # JSON for programs: no progress
    assert quiet.exit_code == 0 and "sampling:" not in quiet.stderr
    with np.load("shown.npz") as a, np.load("quiet.npz") as b:
        assert np.array_equal(a["samples"], b["samples"])


def test_the_likelihood_shows_the_flows_time(in_workdir, monkeypatch):
    monkeypatch.setenv("SCORESDE_PROGRESS_S", "0")
    result = invoke("likelihood", "--n", 10, "--rtol", "1e-3", "--atol", "1e-3")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("likelihood:")]
    assert len(lines) > 2 and lines[-1].split()[2] == "1/1" and "nfe=" in lines[-1]
    times = [float(line.split()[2].split("/")[0]) for line in lines]
    assert times == sorted(times)  # the time reached, never back


def test_repaints_bar_counts_each_segment_every_time_it_runs(in_workdir, monkeypatch):
    """repaint runs its 12 steps in segments of 4, each 3 times: 36 steps, the bar's total."""
    monkeypatch.setenv("SCORESDE_PROGRESS_S", "0")
    np.savez("mask.npz", mask=np.array([True, False]), values=np.array([1.0, 0.0]))
    result = invoke("sample", "--mask", "mask.npz", "--inverse", "repaint", "--jump", 4,
                    "--resample", 3, "--steps", 12, "--n", 8, "--out", "repaint.npz")
    assert result.exit_code == 0, result.output
    counts = [line.split()[2] for line in result.stderr.splitlines()
              if line.startswith("sampling:")]
    assert counts and all(c.endswith("/36") for c in counts) and counts[-1] == "36/36"
    done = [int(c.split("/")[0]) for c in counts]
    assert done == sorted(done)


def test_the_clock_starts_when_the_work_does(monkeypatch):
    """Work before the loop (FID's reference statistics) is neither in the elapsed time nor in
    the rate once ``start`` is called: 60 s of it, then 5 steps in 10 s read 0.5 step/s."""
    import scoresde.progress

    now = [100.0]
    monkeypatch.setattr(scoresde.progress.time, "perf_counter", lambda: now[0])
    monkeypatch.setenv("SCORESDE_PROGRESS_S", "0")
    stream = io.StringIO()
    with Progress(10, unit="step", desc="fid", stream=stream) as bar:
        now[0] = 160.0
        bar.start()
        now[0] = 170.0
        bar.set(5)
    line = stream.getvalue().splitlines()[0]
    assert "[00:10<00:10, 0.5 step/s]" in line


def test_fid_says_when_its_sampling_starts(in_workdir):
    """run_quality's progress hears ``(0, total)`` before the first chunk and then each
    chunk's rows: the command's bar starts its clock then, not while the reference statistics
    are computed."""
    from scoresde.quality import run_quality

    result = invoke("train", "--data", "digits", "--steps", 2, "--batch-size", 8, "--run",
                    "fid-run", "--quiet")
    assert result.exit_code == 0, result.output
    heard = []
    run_quality("fid-run", n=100, batch_size=40, progress=lambda done, total: heard.append(
        (done, total)), solver="dpmpp_2m", steps=2)
    assert heard == [(0, 100), (40, 100), (80, 100), (100, 100)]
