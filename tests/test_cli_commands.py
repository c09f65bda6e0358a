"""The scoresde commands end to end: train -> sample -> likelihood -> demo, and every bad input.

Runs train for a handful of steps: these tests check the plumbing (files, exit codes, JSON,
messages), not model quality, which the training and sampler tests cover.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import scoresde
from scoresde.cli import main

pytestmark = pytest.mark.skipif(
    not (hasattr(scoresde, "train") and hasattr(scoresde, "SAMPLERS")),
    reason="needs the training (issue 5) and sampler (issue 4) modules on this branch")

ROOT = Path(__file__).resolve().parents[1]


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder with one tiny trained run under ./runs, shared by the tests of this module."""
    path = tmp_path_factory.mktemp("cli")
    old = os.getcwd()
    os.chdir(path)
    try:
        result = _invoke("train", "--sde", "vp", "--steps", 20, "--batch-size", 64, "--quiet")
        assert result.exit_code == 0, result.output
        yield path
    finally:
        os.chdir(old)


@pytest.fixture
def in_workdir(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    return workdir


def _only_run(root):
    runs = sorted(p for p in (root / "runs").iterdir() if not p.name.startswith("."))
    return runs


def test_train_writes_a_run_and_never_overwrites_it(in_workdir):
    run = _only_run(in_workdir)[0]
    assert run.name == "00000-vp-8gaussians"
    assert {"config.json", "checkpoint.pt", "metrics.jsonl"} <= set(os.listdir(run))
    config = json.loads((run / "config.json").read_text())
    assert config["sde"]["name"] == "vp" and config["steps"] == 20
    before = (run / "checkpoint.pt").stat().st_mtime_ns
    result = _invoke("train", "--run", run, "--steps", 5)
    assert result.exit_code == 2 and "already exists; pass --resume" in result.output
    assert (run / "checkpoint.pt").stat().st_mtime_ns == before


def test_sample_pc_1000_uses_most_recent_run_and_json(in_workdir):
    run = _only_run(in_workdir)[0]
    result = _invoke("sample", "--solver", "pc", "--steps", 1000, "--n", 8, "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    # pc: a predictor and a corrector call per step, plus the final denoising call.
    assert record["nfe"] == 2 * 1000 + 1 and record["n"] == 8
    samples = np.load(record["out"])["samples"]
    assert samples.shape == (8, 2) and np.isfinite(samples).all()
    assert Path(record["out"]).resolve().parent == run.resolve()
    assert Path(record["figure"]).is_file()
    text = _invoke("sample", "--solver", "dpmpp_2m", "--steps", 5, "--n", 20)
    assert text.exit_code == 0 and "NFE 6" in text.stdout
    assert f"using run {Path('runs') / run.name} (most recent" in text.stderr


def test_sample_few_step_window(in_workdir):
    result = _invoke("sample", "--solver", "dpmpp_2m", "--steps", 9, "--grid", "log_snr",
                     "--sigma-max", 5, "--sigma-min", 0.01, "--n", 16, "--json",
                     "--out", in_workdir / "window.npz")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["nfe"] == 10  # 9 steps and the final denoising call
    # The window changes the grid: the samples differ from the plain log-SNR grid's.
    plain = _invoke("sample", "--solver", "dpmpp_2m", "--steps", 9, "--grid", "log_snr",
                    "--n", 16, "--out", in_workdir / "plain.npz")
    assert plain.exit_code == 0, plain.output
    a = np.load(in_workdir / "window.npz")["samples"]
    b = np.load(in_workdir / "plain.npz")["samples"]
    assert not np.allclose(a, b)


def test_likelihood_json_has_mean_error_and_entropy_gap(in_workdir):
    result = _invoke("likelihood", "--n", 10, "--rtol", 1e-2, "--atol", 1e-2, "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["n"] == 10 and record["nfe"] > 0 and record["standard_error"] > 0
    assert record["gap"] == pytest.approx(-record["log_likelihood"] - record["entropy"])


def test_demo_quick_writes_one_figure(in_workdir, monkeypatch):
    out = in_workdir / "demo.png"
    result = _invoke("demo", "--quick", "--steps", 5, "--n", 20, "--out", out)
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
    config = json.loads((good / "config.json").read_text())
    config["net"]["hidden"] = 2 * config["net"]["hidden"]  # the checkpoint has the old width
    (run / "config.json").write_text(json.dumps(config))
    (run / "checkpoint.pt").write_bytes((good / "checkpoint.pt").read_bytes())
    return run


def _array(root, name, array):
    path = root / name
    np.save(path, array)
    return path


BAD = [  # (arguments, builder of extra files, words the one-line message must contain, status)
    (["sample", "--solver", "nope"], None, "'nope' is not one of", 2),
    (["sample", "--steps", "0"], None, "0 is not in the range x>=1", 2),
    (["sample", "--n", "-3"], None, "not in the range", 2),
    (["sample", "--snr", "0"], None, "--snr", 2),
    (["sample", "--run", "missing"], None, "does not exist", 2),
    (["sample", "--run", "{corrupt}"], _corrupt_run, "cannot load run", 2),
    (["sample", "--run", "{othershape}"], _other_shape_run, "cannot load run", 2),
    (["sample", "--solver", "em", "--snr", "0.2"], None, "unknown options snr", 2),
    (["sample", "--out", "nofolder/x.npz"], None, "not a writable folder", 2),
    (["sample", "--out", "{file}/x.npz"], None, "not a writable folder", 2),
    (["train", "--sde", "nope"], None, "'nope' is not one of", 2),
    (["train", "--data", "nope"], None, "unknown data 'nope'", 2),
    (["train", "--steps", "0"], None, "not in the range", 2),
    (["train", "--lr", "-1"], None, "not in the range", 2),
    (["train", "--device", "cuda:7"], None, "cuda", 2),
    (["train", "--log-snr-share", "1.5"], None, "not in the range", 2),
    (["train", "--weighting", "likelihood_is", "--log-snr-share", "0.3"], None,
     "log_snr_share must be 0 with weighting 'likelihood_is'", 2),
    (["train", "--weighting", "likelihood", "--log-snr-share", "0.3"], None,
     "log_snr_share must be 0 with weighting 'likelihood'", 2),
    (["train", "--input-features", "-1"], None, "not in the range", 2),
    (["train", "--data", "digits", "--input-features", "8"], None, "input_features", 2),
    (["train", "--data", "{flat}"], lambda r: _array(r, "flat.npy", np.zeros(5)), "shape", 2),
    (["train", "--data", "{nan}"],
     lambda r: _array(r, "nan.npy", np.full((4, 2), np.nan)), "NaN", 2),
    (["likelihood", "--data", "{wide}"],
     lambda r: _array(r, "wide.npy", np.zeros((4, 3), np.float32)), "do not match", 2),
    (["likelihood", "--divergence", "nope"], None, "'nope' is not one of", 2),
    (["demo", "--toy", "nope"], None, "'nope' is not one of", 2),
    (["demo", "--out", "nofolder/demo.png"], None, "not a writable folder", 2),
]


@pytest.mark.parametrize("args, build, words, status", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_input_one_line_no_traceback_no_output(in_workdir, args, build, words, status):
    extra = build(in_workdir) if build else None
    (in_workdir / "file").write_text("x")
    names = {"corrupt": extra, "othershape": extra, "flat": extra, "nan": extra, "wide": extra,
             "file": in_workdir / "file"}
    args = [a.format(**names) if "{" in a else a for a in args]
    before = _listing(in_workdir)
    result = _invoke(*args)
    assert result.exit_code == status, result.output
    lines = [ln for ln in result.stderr.strip().splitlines() if not ln.startswith("using run")]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.stderr
    assert words in lines[0] and "Traceback" not in result.output
    assert _listing(in_workdir) == before  # no partial output


def _listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_no_run_yet_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _invoke("sample")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "Error: no run found under ./runs; train one with 'scoresde train' or pass --run DIR "
        "(see 'main sample --help')")


def test_real_subprocess_sample_and_bad_input(in_workdir):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "scoresde", "sample", "--solver", "ode",
                           "--rtol", "1e-3", "--atol", "1e-3", "--n", "20", "--json"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["solver"] == "ode"
    proc = subprocess.run([sys.executable, "-m", "scoresde", "sample", "--steps", "-1"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr and "scoresde sample --help" in proc.stderr


def test_help_has_runnable_examples():
    for command in ("train", "sample", "likelihood", "demo"):
        result = _invoke(command, "--help")
        assert result.exit_code == 0 and f"scoresde {command}" in result.output
        assert "[default:" in result.output
    assert torch.__version__  # the package imports torch; --help must not need anything else


def test_the_cli_leaves_run_files_to_scoresde_runs():
    # The run folder has one owner: the CLI asks scoresde.runs and names none of its files.
    source = (ROOT / "scoresde" / "cli.py").read_text()
    assert "config.json" not in source and "checkpoint.pt" not in source
    assert "metrics.jsonl" not in source
