"""scoresde sample --observe / --inverse: plumbing and errors (quality: tests/test_inverse.py)."""

import inspect
import json
import os

import numpy as np
import pytest

from problems import assert_refused, invoke
from scoresde.sampling.inverse import DEFAULT_SOLVER, solve_inverse


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_inverse")
    result = invoke("train", "--data", "8gaussians", "--steps", 5, "--batch-size", 32,
                    "--width", 16, "--quiet", "--run", root / "r")
    assert result.exit_code == 0, result.output
    return root / "r"


def test_observe_and_mask_solve_inverse_problems(run, tmp_path):
    np.savez(tmp_path / "obs.npz", A=np.array([[1.0, 1.0]]), y=np.array([1.5]))
    for method, extra in (("smc", ["--particles", 4]), ("dps", ["--step-size", 0.5]),
                          ("repaint", ["--jump", 2, "--resample", 2]), ("replacement", [])):
        out = tmp_path / f"{method}.npz"
        result = invoke("sample", "--run", run, "--observe", tmp_path / "obs.npz", "--inverse",
                        method, "--steps", 4, "--n", 6, "--out", out, "--json", *extra)
        assert result.exit_code == 0, result.output
        with np.load(out) as f:
            x = f["samples"]
        assert x.shape == (6, 2) and np.isfinite(x).all()
        if method in ("smc", "replacement", "repaint"):  # noiseless: A x = y exactly
            np.testing.assert_allclose(x.sum(1), 1.5, atol=1e-5)
    np.savez(tmp_path / "m.npz", mask=np.array([True, False]), values=np.array([1.25, 0.0]))
    out = tmp_path / "mask-smc.npz"
    result = invoke("sample", "--run", run, "--mask", tmp_path / "m.npz", "--inverse", "smc",
                    "--particles", 3, "--steps", 4, "--n", 5, "--out", out)
    assert result.exit_code == 0, result.output
    with np.load(out) as f:
        np.testing.assert_allclose(f["samples"][:, 0], 1.25, atol=1e-6)


@pytest.mark.parametrize("content,args,facts", [
    (dict(A=np.ones((1, 3)), y=np.ones(1)), [], ["--observe", "(M, 2)", "(1, 3)"]),
    (dict(A=np.ones((1, 2))), [], ["--observe", "'y'"]),
    (dict(A=np.ones((1, 2)), y=np.ones(1), noise_std=-1.0), [], ["noise_std", "-1"]),
    (dict(A=np.ones((1, 2)), y=np.ones(1)), ["--inverse", "smc", "--solver", "em"],
     ["smc", "solver", "'em'"]),
    (dict(A=np.ones((1, 2)), y=np.ones(1)), ["--inverse", "dps", "--particles", 3],
     ["particles", "dps"]),
    (dict(A=np.ones((1, 2)), y=np.ones((3, 1))), [], ["--observe", "3", "--n"]),
    (dict(A=np.array([[1.0, 0.0], [2.0, 0.0]]), y=np.array([1.0, 1.0])), [],
     ["noise_std", "y", "A", "rank 1"]),  # y off the range of A
])
def test_bad_observations_are_usage_errors(run, tmp_path, content, args, facts):
    np.savez(tmp_path / "obs.npz", **content)
    result = invoke("sample", "--run", run, "--observe", tmp_path / "obs.npz", "--steps", 2,
                    "--n", 4, "--out", tmp_path / "x.npz", *args)
    assert_refused(result, 2, *facts)
    assert not (tmp_path / "x.npz").exists() and not (tmp_path / "x.npz.parts").exists()


def test_the_default_output_names_the_method(run, tmp_path):
    np.savez(tmp_path / "obs.npz", A=np.array([[0.5, 0.5]]), y=np.array([1.0]), noise_std=0.2)
    result = invoke("sample", "--run", run, "--observe", tmp_path / "obs.npz", "--steps", 3,
                    "--n", 4, "--particles", 2, "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["inverse"] == "smc" and record["inverse_options"] == {"particles": 2}
    assert os.path.basename(record["out"]).startswith("samples-smc-3-n4-seed0-")
    assert record["nfe"] == 4


def test_inverse_needs_a_measurement(run, tmp_path):
    result = invoke("sample", "--run", run, "--inverse", "dps", "--steps", 2, "--n", 4)
    assert_refused(result, 2, "--inverse", "--observe", "--mask")


def test_mask_rows_and_labels_reach_every_sample_and_the_record_names_what_ran(tmp_path):
    # A mask with one row of values per sample: each sample keeps its own known entry.
    root = tmp_path / "c"
    result = invoke("train", "--data", "8gaussians", "--steps", 5, "--batch-size", 32,
                    "--width", 16, "--quiet", "--conditional", "--run", root)
    assert result.exit_code == 0, result.output
    values = np.stack([np.linspace(-1, 1, 4), np.zeros(4)], 1)
    np.savez(tmp_path / "m.npz", mask=np.array([True, False]), values=values)
    out = tmp_path / "rows.npz"
    # Labels with smc: the network sees one label per particle (3 particles a sample).
    result = invoke("sample", "--run", root, "--mask", tmp_path / "m.npz", "--inverse", "smc",
                    "--particles", 3, "--steps", 3, "--n", 4, "--label", 1, "--guidance", 1,
                    "--out", out, "--json")
    assert result.exit_code == 0, result.output
    with np.load(out) as f:
        np.testing.assert_allclose(f["samples"][:, 0], values[:, 0], atol=1e-6)
    record = json.loads(result.output)
    assert record["solver"] is None and record["steps"] == 3
    # dps without --solver or --steps runs solve_inverse's defaults, and says so.
    np.savez(tmp_path / "obs.npz", A=np.array([[1.0, 1.0]]), y=np.array([0.5]))
    result = invoke("sample", "--run", root, "--observe", tmp_path / "obs.npz", "--inverse",
                    "dps", "--n", 2, "--out", tmp_path / "dps.npz", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    steps = inspect.signature(solve_inverse).parameters["steps"].default
    assert (record["solver"], record["steps"]) == (DEFAULT_SOLVER, steps)
    assert record["nfe"] == 2 * steps + 1
