"""The scoresde commands end to end: train -> sample -> likelihood -> demo, and every bad input.

Runs train for a handful of steps: these tests check the plumbing (files, exit codes, JSON,
messages), not model quality, which the training and sampler tests cover.
"""

import json
import os
import shlex
import shutil
from pathlib import Path

import click
import numpy as np
import pytest

from scoresde import train
from scoresde.cli import main
from scoresde.runs import load_checkpoint, read_config, write_config

from problems import (ROOT, TINY, Interrupt, assert_refused, folder_with_a_run, invoke,
                      run_python, stop_at)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder with one tiny trained run under ./runs, shared by the tests of this module."""
    with folder_with_a_run(tmp_path_factory.mktemp("cli"), "--sde", "vp", "--steps", 20,
                           "--batch-size", 64) as path:
        yield path


def _only_run(root):
    runs = sorted(p for p in (root / "runs").iterdir() if not p.name.startswith("."))
    return runs


def test_train_writes_a_run_and_never_overwrites_it(in_workdir):
    run = _only_run(in_workdir)[0]
    assert run.name == "00000-vp-8gaussians"
    assert {"config.json", "checkpoint.pt", "metrics.jsonl"} <= set(os.listdir(run))
    config = read_config(run)
    assert config["sde"]["name"] == "vp" and config["steps"] == 20
    before = (run / "checkpoint.pt").stat().st_mtime_ns
    result = invoke("train", "--run", run, "--steps", 5)
    assert_refused(result, 2, run.name, "--resume")
    assert (run / "checkpoint.pt").stat().st_mtime_ns == before


@pytest.mark.slow
def test_sample_pc_1000_uses_most_recent_run_and_json(in_workdir):
    run = _only_run(in_workdir)[0]
    result = invoke("sample", "--solver", "pc", "--steps", 1000, "--n", 8, "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    # pc: a predictor and a corrector call per step, plus the final denoising call.
    assert record["nfe"] == 2 * 1000 + 1 and record["n"] == 8
    samples = np.load(record["out"])["samples"]
    assert samples.shape == (8, 2) and np.isfinite(samples).all()
    assert Path(record["out"]).resolve().parent == run.resolve()
    assert Path(record["figure"]).is_file()
    text = invoke("sample", "--solver", "dpmpp_2m", "--steps", 5, "--n", 20)
    # Few steps from a run: the first step follows the Gaussian of the run's data (its mean and
    # covariance, no score call), then 4 steps and the denoising call.
    assert text.exit_code == 0 and "NFE 5" in text.stdout
    record = json.loads(invoke("sample", "--solver", "dpmpp_2m", "--steps", 5, "--n", 20,
                               "--json").stdout)
    assert record["data_statistics"] == ["data_cov", "data_mean"] and record["nfe"] == 5
    record = json.loads(invoke("sample", "--solver", "dpmpp_2m", "--steps", 5, "--n", 20,
                               "--grid", "edm", "--json").stdout)  # a grid of the user's wins
    assert record["data_statistics"] == [] and record["nfe"] == 6
    assert str(Path("runs") / run.name) in text.stderr  # the run it took is named


def test_sample_few_step_window(in_workdir):
    result = invoke("sample", "--solver", "dpmpp_2m", "--steps", 9, "--grid", "log_snr",
                    "--sigma-max", 5, "--sigma-min", 0.01, "--n", 16, "--json",
                    "--out", in_workdir / "window.npz")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["nfe"] == 10  # 9 steps and the final denoising call
    # The window changes the grid: the samples differ from the plain log-SNR grid's.
    plain = invoke("sample", "--solver", "dpmpp_2m", "--steps", 9, "--grid", "log_snr",
                   "--n", 16, "--out", in_workdir / "plain.npz")
    assert plain.exit_code == 0, plain.output
    a = np.load(in_workdir / "window.npz")["samples"]
    b = np.load(in_workdir / "plain.npz")["samples"]
    assert not np.allclose(a, b)


def test_likelihood_json_has_mean_error_and_entropy_gap(in_workdir):
    result = invoke("likelihood", "--n", 10, "--rtol", 1e-2, "--atol", 1e-2, "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["n"] == 10 and record["nfe"] > 0 and record["standard_error"] > 0
    assert record["gap"] == pytest.approx(-record["log_likelihood"] - record["entropy"])


def test_demo_quick_writes_one_figure(in_workdir, monkeypatch):
    out = in_workdir / "demo.png"
    result = invoke("demo", "--quick", "--steps", 5, "--n", 20, "--out", out)
    assert result.exit_code == 0, result.output
    with open(out, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    for solver in ("em", "pc", "ode", "dpmpp_2m"):
        assert f"{solver}: NFE" in result.stdout
    assert "log-likelihood" in result.stdout


def _corrupt_run(root):
    run = root / "bad" / "corrupt"
    run.mkdir(parents=True, exist_ok=True)
    good = _only_run(root)[0]
    (run / "config.json").write_text((good / "config.json").read_text())
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    return run


def _other_shape_run(root):
    run = root / "bad" / "othershape"
    run.mkdir(parents=True, exist_ok=True)
    good = _only_run(root)[0]
    config = read_config(good)
    config["net"]["hidden"] = 2 * config["net"]["hidden"]  # the checkpoint has the old width
    write_config(run, config)
    (run / "checkpoint.pt").write_bytes((good / "checkpoint.pt").read_bytes())
    return run


def _array(root, name, array):
    path = root / name
    np.save(path, array)
    return path


BAD = [  # (arguments, builder of extra files, the facts the one-line message names, status)
    (["sample", "--solver", "nope"], None, ["--solver", "'nope'"], 2),
    (["sample", "--steps", "0"], None, ["--steps", "0", "x>=1"], 2),
    (["sample", "--n", "-3"], None, ["--n", "-3"], 2),
    (["sample", "--snr", "0"], None, ["--snr"], 2),
    (["sample", "--run", "missing"], None, ["--run", "missing"], 2),
    (["sample", "--run", "{corrupt}"], _corrupt_run, ["{corrupt}"], 2),
    (["sample", "--run", "{othershape}"], _other_shape_run, ["{othershape}"], 2),
    (["sample", "--solver", "em", "--snr", "0.2"], None, ["snr", "em"], 2),
    (["sample", "--out", "nofolder/x.npz"], None, ["nofolder"], 2),
    (["sample", "--out", "{file}/x.npz"], None, ["{file}"], 2),
    (["train", "--sde", "nope"], None, ["--sde", "'nope'"], 2),
    (["train", "--data", "nope"], None, ["'nope'"], 2),
    (["train", "--steps", "0"], None, ["--steps", "0"], 2),
    (["train", "--lr", "-1"], None, ["--lr", "-1"], 2),
    (["train", "--device", "cuda:7"], None, ["cuda:7"], 2),
    (["train", "--log-snr-share", "1.5"], None, ["--log-snr-share", "1.5"], 2),
    (["train", "--weighting", "likelihood_is", "--log-snr-share", "0.3"], None,
     ["log_snr_share", "'likelihood_is'"], 2),
    (["train", "--weighting", "likelihood", "--log-snr-share", "0.3"], None,
     ["log_snr_share", "'likelihood'"], 2),
    (["train", "--input-features", "-1"], None, ["--input-features", "-1"], 2),
    (["train", "--data", "digits", "--input-features", "8"], None, ["input_features"], 2),
    (["train", "--data", "{flat}"], lambda r: _array(r, "flat.npy", np.zeros(5)),
     ["flat.npy", "(5,)"], 2),
    (["train", "--data", "{nan}"],
     lambda r: _array(r, "nan.npy", np.full((4, 2), np.nan)), ["nan.npy", "NaN"], 2),
    (["likelihood", "--data", "{wide}"],
     lambda r: _array(r, "wide.npy", np.zeros((4, 3), np.float32)),
     ["--data", "wide.npy", "(3,)", "(2,)"], 2),
    (["likelihood", "--divergence", "nope"], None, ["--divergence", "'nope'"], 2),
    (["demo", "--toy", "nope"], None, ["--toy", "'nope'"], 2),
    (["demo", "--out", "nofolder/demo.png"], None, ["nofolder"], 2),
]


@pytest.mark.parametrize("args, build, facts, status", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_input_one_line_no_traceback_no_output(in_workdir, args, build, facts, status):
    extra = build(in_workdir) if build else None
    (in_workdir / "file").write_text("x")
    names = {"corrupt": extra, "othershape": extra, "flat": extra, "nan": extra, "wide": extra,
             "file": in_workdir / "file"}
    args, facts = ([a.format(**names) if "{" in a else a for a in b] for b in (args, facts))
    before = _listing(in_workdir)
    result = invoke(*args)
    assert_refused(result, status, *facts, besides=["using run"])
    assert _listing(in_workdir) == before  # no partial output


def _listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_no_run_yet_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("sample")
    assert_refused(result, 2, "./runs", "'scoresde train'", "--run", "'main sample --help'")


@pytest.mark.slow
def test_real_subprocess_sample_and_bad_input(in_workdir):
    proc = run_python("-m", "scoresde", "sample", "--solver", "ode", "--rtol", "1e-3",
                      "--atol", "1e-3", "--n", "20", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["solver"] == "ode"
    proc = run_python("-m", "scoresde", "sample", "--steps", "-1")
    assert_refused(proc, 2, "--steps", "-1", "scoresde sample --help")


def _examples(help_text):
    """The command lines under 'Examples:' in a --help text, each split into its arguments."""
    block = help_text.split("Examples:", 1)[1].split("\n\n", 1)[0]
    lines = block.replace("\\\n", " ").splitlines()  # a trailing backslash continues a line
    return [shlex.split(line, comments=True) for line in lines if line.strip()]


def _help_examples():
    """Every example of ``scoresde --help`` and of each command's --help, as argument lists."""
    found = []
    for command in (None, *main.commands):
        result = invoke(*([command] if command else []), "--help")
        assert result.exit_code == 0, result.output
        examples = _examples(result.output)
        assert examples, f"no examples in the help of {command or 'scoresde'}"
        assert command is None or all(args[1] == command for args in examples), examples
        found += examples
    return found


def test_help_has_runnable_examples():
    """Every example in the help parses: a renamed flag, a removed choice or a bad value in one
    is a usage error here. Every command has examples, and its help shows defaults."""
    for command in ("train", "sample", "likelihood", "demo"):
        result = invoke(command, "--help")
        assert result.exit_code == 0 and f"scoresde {command}" in result.output
        assert "[default:" in result.output
    examples = _help_examples()
    assert {args[1] for args in examples} == set(main.commands)
    for args in examples:
        assert args[0] == "scoresde" and args[1] in main.commands, args
        try:
            main.commands[args[1]].make_context(args[1], args[2:]).close()
        except click.ClickException as err:
            pytest.fail(f"{shlex.join(args)}: {err.format_message()}")


CHEAP_EXAMPLES = [  # the help's examples that take a second or less on a tiny run
    "scoresde sample --solver unipc --steps 10 --n 5000",
    "scoresde sample --solver dpmpp_2m --steps 9 --grid log_snr --sigma-max 5 --sigma-min 0.01",
    "scoresde sample --solver ode --rtol 1e-4 --json",
]  # the others train, or sample and integrate 1000 points for 1000 steps: seconds each


@pytest.mark.slow
@pytest.mark.parametrize("line", CHEAP_EXAMPLES)
def test_cheap_help_examples_run(workdir, tmp_path, monkeypatch, line):
    """The cheap examples, run as the help writes them in a folder with one run under ./runs."""
    assert shlex.split(line) in _help_examples()
    shutil.copytree(workdir / "runs", tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    result = invoke(*shlex.split(line)[1:])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output


def test_the_cli_leaves_run_files_to_scoresde_runs():
    # The run folder has one owner: the CLI and the tasks ask scoresde.runs and name none of its
    # files.
    source = "".join(p.read_text() for folder in ("cli", "tasks")
                     for p in sorted((ROOT / "scoresde" / folder).glob("*.py")))
    assert "def main" in source and "def sample_run" in source  # the files were read
    assert "config.json" not in source and "checkpoint.pt" not in source
    assert "metrics.jsonl" not in source


def test_cli_resume_keeps_every_option_of_the_run(tmp_path):
    # Before the fix the CLI resumed with today's library defaults for every option it has no
    # flag for (warmup, the SDE's parameters, the network's depth), so a run started from Python
    # or under other defaults could not be continued: "options differ: net, sde, warmup".
    run = tmp_path / "run"
    train(run, steps=2, warmup=1, sde="ve", sde_params={"sigma_max": 10.0}, **TINY)
    result = invoke("train", "--resume", "--run", run, "--steps", 3, "--quiet")
    assert result.exit_code == 0, result.output
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 3
    config = read_config(run)
    assert config["warmup"] == 1 and config["sde"]["sigma_max"] == 10.0
    assert config["net"]["hidden"] == 16 and config["steps"] == 3
    # An option given on the command line still wins, and a conflicting one is refused.
    result = invoke("train", "--resume", "--run", run, "--steps", 4, "--sde", "vp", "--quiet")
    assert_refused(result, 2, "sde")


def test_cli_resume_without_steps_finishes_the_runs_own_total(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(Interrupt):
        train(run, steps=6, checkpoint_every=3, callback=stop_at(4), **TINY)
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 3
    result = invoke("train", "--run", run, "--resume", "--quiet")
    assert result.exit_code == 0, result.output
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 6
    assert read_config(run)["steps"] == 6
