"""Regressions found in review: each test pins one defect that was fixed."""

import json

import pytest
import torch

from scoresde import train
from scoresde.runs import load_checkpoint

TINY = dict(data="8gaussians", net_params={"hidden": 16, "depth": 1}, batch_size=32,
            progress=False, log_every=1)


def test_resume_with_fewer_steps_than_the_checkpoint_is_refused_and_keeps_the_run(tmp_path):
    # Before the fix, resuming a 4-step run with steps=2 "succeeded": it rewrote config.json with
    # steps=2 beside a checkpoint at step 4 and reported step 2 at a negative speed.
    run = tmp_path / "run"
    train(run, steps=4, **TINY)
    with pytest.raises(ValueError, match="step 4"):
        train(run, steps=2, resume=True, **TINY)
    assert json.loads((run / "config.json").read_text())["steps"] == 4
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 4


def test_cli_resume_keeps_every_option_of_the_run(tmp_path):
    # Before the fix the CLI resumed with today's library defaults for every option it has no
    # flag for (warmup, the SDE's parameters, the network's depth), so a run started from Python
    # or under other defaults could not be continued: "options differ: net, sde, warmup".
    from click.testing import CliRunner

    from scoresde.cli import main

    run = tmp_path / "run"
    train(run, steps=2, warmup=1, sde="ve", sde_params={"sigma_max": 10.0}, **TINY)
    result = CliRunner().invoke(main, ["train", "--resume", "--run", str(run), "--steps", "3",
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 3
    config = json.loads((run / "config.json").read_text())
    assert config["warmup"] == 1 and config["sde"]["sigma_max"] == 10.0
    assert config["net"]["hidden"] == 16 and config["steps"] == 3
    # An option given on the command line still wins, and a conflicting one is refused.
    result = CliRunner().invoke(main, ["train", "--resume", "--run", str(run), "--steps", "4",
                                       "--sde", "vp", "--quiet"])
    assert result.exit_code == 2 and "sde" in result.output


def test_a_fresh_run_does_not_append_to_metrics_of_an_attempt_without_checkpoint(tmp_path):
    # An attempt that died before its first checkpoint leaves config.json and metrics.jsonl; the
    # next train() into that folder starts afresh, but appended its records to the stale ones.
    class Stop(Exception):
        pass

    def stop(step, record):
        if step == 3:
            raise Stop

    run = tmp_path / "run"
    with pytest.raises(Stop):
        train(run, steps=6, checkpoint_every=5, callback=stop, **TINY)
    assert not (run / "checkpoint.pt").exists()
    train(run, steps=4, **TINY)
    steps = [json.loads(line)["step"] for line in open(run / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4]


def test_default_batch_size_depends_on_the_kind_of_data(tmp_path):
    # train(batch_size=None): 1024 points a step for vectors (tuned on the toys), 128 for images.
    opts = dict(steps=1, progress=False, checkpoint_every=1)
    train(tmp_path / "toy", data="8gaussians", net_params={"hidden": 16, "depth": 1}, **opts)
    train(tmp_path / "img", data="digits", **opts)
    batch = {k: json.loads((tmp_path / k / "config.json").read_text())["batch_size"]
             for k in ("toy", "img")}
    assert batch == {"toy": 1024, "img": 128}


def test_cli_resume_without_steps_finishes_the_runs_own_total(tmp_path):
    from click.testing import CliRunner

    from scoresde.cli import main

    class Cut(Exception):
        pass

    def cut(step, record):
        if step == 4:
            raise Cut

    run = tmp_path / "run"
    with pytest.raises(Cut):
        train(run, steps=6, checkpoint_every=3, callback=cut, **TINY)
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 3
    result = CliRunner().invoke(main, ["train", "--run", str(run), "--resume", "--quiet"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 6
    assert json.loads((run / "config.json").read_text())["steps"] == 6
