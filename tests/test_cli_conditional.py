"""The CLI's conditional options: --conditional, --label, --guidance, --mask (plumbing and errors).

Model quality is covered by tests/test_conditional*.py; these runs train for a few steps.
"""


import numpy as np
import pytest

from problems import assert_refused, invoke
from scoresde.runs import read_config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_cond")
    for name, extra in (("cond", ["--conditional"]), ("plain", [])):
        result = invoke("train", "--data", "8gaussians", "--steps", 10, "--batch-size", 32,
                        "--width", 16, "--quiet", "--run", root / name, *extra)
        assert result.exit_code == 0, result.output
    return root


def test_conditional_training_and_labelled_sampling(runs, tmp_path):
    config = read_config(runs / "cond")
    assert config["conditional"] and config["label_dropout"] == 0.1
    out = tmp_path / "s.npz"
    result = invoke("sample", "--run", runs / "cond", "--label", 3, "--guidance", 1.5,
                    "--solver", "euler", "--steps", 4, "--n", 12, "--out", out, "--json")
    assert result.exit_code == 0, result.output
    with np.load(out) as f:
        assert f["samples"].shape == (12, 2) and (f["labels"] == 3).all()
    result = invoke("sample", "--run", runs / "cond", "--label", "all", "--solver", "euler",
                    "--steps", 4, "--n", 16, "--out", out, "--force")  # other samples: replaced
    assert result.exit_code == 0, result.output
    with np.load(out) as f:
        assert (f["labels"] == np.arange(16) % 8).all()


@pytest.mark.parametrize("args,facts", [
    (["--label", 8], ["--label", "8"]), (["--label", -2], ["--label", "-2"]),
    (["--label", "x"], ["--label", "'x'"]), (["--guidance", 1], ["--guidance", "--label"])])
def test_bad_labels_are_usage_errors(runs, args, facts):
    result = invoke("sample", "--run", runs / "cond", "--solver", "euler", "--steps", 2,
                    "--n", 4, *args)
    assert_refused(result, 2, *facts)


def test_labels_on_an_unconditional_run_and_unlabelled_data_are_usage_errors(runs, tmp_path):
    result = invoke("sample", "--run", runs / "plain", "--label", 1, "--steps", 2, "--n", 4)
    assert_refused(result, 2, "--label", "--conditional")
    result = invoke("train", "--data", "moons", "--conditional", "--steps", 2, "--quiet",
                    "--run", tmp_path / "m")
    assert_refused(result, 2, "'moons'", "labels")


def test_a_label_for_a_run_conditioned_on_embeddings_points_to_embedding(tmp_path):
    x = np.random.default_rng(0).standard_normal((64, 2)).astype(np.float32)
    np.savez(tmp_path / "e.npz", x=x, y=np.eye(4, dtype=np.float32)[np.arange(64) % 4])
    result = invoke("train", "--data", tmp_path / "e.npz", "--conditional", "--steps", 2,
                    "--batch-size", 16, "--width", 16, "--quiet", "--run", tmp_path / "emb")
    assert result.exit_code == 0, result.output
    result = invoke("sample", "--run", tmp_path / "emb", "--label", 1, "--steps", 2, "--n", 4)
    assert_refused(result, 2, "--label", "--embedding")
    assert "unconditional" not in result.output


def test_mask_imputes_and_wrong_shapes_are_usage_errors(runs, tmp_path):
    np.savez(tmp_path / "m.npz", mask=np.array([True, False]), values=np.array([1.25, 0.0]))
    out = tmp_path / "imp.npz"
    result = invoke("sample", "--run", runs / "plain", "--mask", tmp_path / "m.npz",
                    "--solver", "em", "--steps", 4, "--n", 8, "--out", out)
    assert result.exit_code == 0, result.output
    with np.load(out) as f:
        assert (f["samples"][:, 0] == np.float32(1.25)).all()
    np.savez(tmp_path / "bad.npz", mask=np.ones((3,), dtype=bool))
    result = invoke("sample", "--run", runs / "plain", "--mask", tmp_path / "bad.npz",
                    "--n", 4, "--steps", 2)
    assert_refused(result, 2, "--mask", "(3,)")
    result = invoke("sample", "--run", runs / "plain", "--mask", tmp_path / "m.npz",
                    "--solver", "ode", "--n", 4)
    assert_refused(result, 2, "'ode'")
