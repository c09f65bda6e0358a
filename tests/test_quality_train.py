"""FID/KID during training (eval_every) and the `scoresde fid` command."""

import json

import numpy as np
import pytest
import torch

from scoresde import train

from problems import TINY, assert_equal_states, assert_refused, invoke, make_old, run_states

# A small U-Net on digits: the plumbing, not the quality.
DIGITS = dict(data="digits", net="unet", net_params={"ch": 8, "num_res_blocks": 1,
                                                      "attn_resolutions": []},
              batch_size=8, progress=False, log_every=1)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SCORESDE_CACHE", str(tmp_path / "cache"))


def _records(run):
    return [json.loads(line) for line in open(run / "metrics.jsonl")]


@pytest.mark.slow
def test_evaluation_records_fid_and_leaves_the_training_bit_identical(tmp_path):
    train(tmp_path / "plain", steps=4, **DIGITS)
    train(tmp_path / "eval", steps=4, eval_every=2, eval_n=100, **DIGITS)
    # A resumed run whose evaluation options changed on the way.
    train(tmp_path / "resumed", steps=2, eval_every=2, eval_n=100, **DIGITS)
    train(tmp_path / "resumed", steps=4, eval_every=1, eval_n=80, resume=True, **DIGITS)
    for other in ("eval", "resumed"):
        assert run_states(tmp_path / other)["step"] == 4
        assert_equal_states(run_states(tmp_path / other), run_states(tmp_path / "plain"))
    evals = [r for r in _records(tmp_path / "eval") if "fid" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert all(r["eval_n"] == 100 and r["fid"] > 0 and r["kid_se"] > 0 for r in evals)
    # The same seed each time: the curve compares weights, not draws.
    assert len({r["eval_seed"] for r in evals}) == 1
    resumed = [(r["step"], r["eval_n"]) for r in _records(tmp_path / "resumed") if "fid" in r]
    assert resumed == [(2, 100), (3, 80), (4, 80)]
    assert not any("fid" in r for r in _records(tmp_path / "plain"))


@pytest.mark.slow
def test_a_run_stopped_during_an_evaluation_records_it_once_on_resume(tmp_path, monkeypatch):
    from scoresde.quality import TrainingEvaluator

    evaluate = TrainingEvaluator.__call__

    def stop_at_step_2(self, model, sde, step):
        if step == 2:
            raise KeyboardInterrupt  # as a kill in the middle of the evaluation
        return evaluate(self, model, sde, step)

    run = tmp_path / "run"
    options = dict(DIGITS, steps=3, eval_every=2, eval_n=80, checkpoint_every=1)
    monkeypatch.setattr(TrainingEvaluator, "__call__", stop_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        train(run, **options)
    monkeypatch.setattr(TrainingEvaluator, "__call__", evaluate)
    train(run, resume=True, **options)
    assert [r["step"] for r in _records(run) if "fid" in r] == [2, 3]


@pytest.mark.parametrize("kw, message", [
    (dict(TINY, eval_every=1), "eval_every.*'8gaussians'"),
    (dict(DIGITS, eval_every=1, eval_n=64), r"\bN=64\b"),
    (dict(DIGITS, eval_every=1, eval_features="nowhere.pt"), "'nowhere.pt'"),
    (dict(DIGITS, eval_every=1, super_res=2), r"\bsuper_res=2\b"),
    (dict(DIGITS, eval_every=1, objective="classifier", net="auto", net_params=None),
     "objective='classifier'"),
])
def test_bad_evaluation_options_are_refused_before_training(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        train(tmp_path / "run", steps=1, **kw)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("fid") / "run"
    train(path, steps=2, **DIGITS)
    return path


def test_fid_command_prints_the_scores_the_seeds_and_a_small_n_warning(digits_run):
    result = invoke("fid", "--run", digits_run, "--n", 100, "--solver", "euler", "--steps", 3,
                    "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["n"] == 100 and record["solver"] == "euler" and record["seed"] == 0
    assert {"fid", "kid", "kid_se", "precision", "recall", "seeds", "features"} <= set(record)
    warned = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "FID" in warned[0] and "N=100" in warned[0], result.stderr
    again = invoke("fid", "--run", digits_run, "--n", 100, "--solver", "euler", "--steps", 3,
                   "--json")
    assert json.loads(again.stdout)["fid"] == record["fid"]  # same seed, same number
    text = invoke("fid", "--run", digits_run, "--n", 100, "--solver", "euler", "--steps", 3)
    assert "KID" in text.stdout and "+-" in text.stdout and "N 100" in text.stdout


def test_the_fid_tasks_give_the_commands_records_and_name_bad_options(digits_run, tmp_path):
    from scoresde.checks import OptionError
    from scoresde.tasks import file_fid, run_fid

    result = invoke("fid", "--run", digits_run, "--n", 100, "--solver", "euler", "--steps", 3,
                    "--json")
    said = []
    record = run_fid(digits_run, n=100, solver="euler", steps=3, say=said.append)
    command = json.loads(result.stdout)
    assert record.keys() == command.keys() and record.pop("time_s") > 0  # timings differ
    assert record == {k: v for k, v in command.items() if k != "time_s"}
    assert len(said) == 1 and f"warning: {said[0]}" in result.stderr
    images = np.random.default_rng(0).integers(0, 256, (100, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    result = invoke("fid", "--samples", tmp_path / "images.npy", "--run", digits_run, "--json")
    record, name = file_fid(tmp_path / "images.npy", run=digits_run, say=said.append)
    command = json.loads(result.stdout)
    assert record.keys() == command.keys() and name == "digits" and record["pixels"]
    assert {k: v for k, v in record.items() if k != "time_s"} == \
        {k: v for k, v in command.items() if k != "time_s"}
    for call, option in [(lambda: run_fid(digits_run, guidance=1.0), "guidance"),
                         (lambda: run_fid(digits_run, label="seven"), "label"),
                         (lambda: run_fid(digits_run, features=tmp_path / "no.pt"), "features"),
                         (lambda: file_fid(tmp_path / "no.npy", run=digits_run), "samples"),
                         (lambda: file_fid(tmp_path / "images.npy"), None)]:
        with pytest.raises(OptionError) as err:
            call()
        assert err.value.option == option


def test_fid_shows_the_steps_of_its_chunks(digits_run, monkeypatch):
    monkeypatch.setenv("SCORESDE_PROGRESS_S", "0")
    result = invoke("fid", "--run", digits_run, "--n", 100, "--solver", "euler", "--steps", 3,
                    "--batch-size", 50)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("fid:")]
    steps = [int(line.split()[2].split("/")[0]) for line in lines]
    assert steps == sorted(steps) and lines[-1].split()[2] == "6/6"  # two chunks of 3 steps


def test_fid_command_bad_input_is_one_line(digits_run, tmp_path):
    result = invoke("fid", "--run", digits_run, "--features", tmp_path / "none.pt")
    assert_refused(result, 2, "--features", "none.pt")
    result = invoke("fid", "--run", digits_run, "--n", 64)  # refused before sampling
    assert_refused(result, 2, "N=64", besides=["warning:"])
    train(tmp_path / "toy", steps=1, **TINY)
    result = invoke("fid", "--run", tmp_path / "toy", "--n", 100)
    assert_refused(result, 2, tmp_path / "toy", "(2,)", besides=["warning:"])
    train(tmp_path / "clf", data="digits", objective="classifier", steps=1, batch_size=8,
          progress=False)
    result = invoke("fid", "--run", tmp_path / "clf", "--n", 100)
    assert_refused(result, 2, tmp_path / "clf", "classifier", besides=["warning:"])
    result = invoke("train", "--data", "moons", "--steps", 1, "--eval-every", 1, "--run",
                    tmp_path / "cli", "--quiet")
    assert_refused(result, 2, "eval_every", "moons")


def test_fid_of_a_conditional_run_samples_each_class_or_refuses_an_untrained_null(tmp_path):
    run = tmp_path / "cond"
    train(run, steps=2, conditional=True, label_dropout=0.0, eval_every=2, eval_n=100,
          **DIGITS)
    evals = [r for r in _records(run) if "fid" in r]
    assert [(r["step"], r["eval_label"]) for r in evals] == [(2, "all")]  # every class in turn
    result = invoke("fid", "--run", run, "--n", 100, "--solver", "euler", "--steps", 2)
    # One line after the small-N warning: the cause, and the label that measures the run.
    assert_refused(result, 2, "label_dropout=0", "label='all'", besides=["warning:"])
    # Guidance mixes in the same untrained unconditional score: refused too, before sampling.
    result = invoke("fid", "--run", run, "--n", 100, "--solver", "euler", "--steps", 2,
                    "--label", "all", "--guidance", 1)
    assert_refused(result, 2, "label_dropout=0", "guidance", besides=["warning:"])
    result = invoke("fid", "--run", run, "--n", 100, "--solver", "euler", "--steps", 2,
                    "--label", "all", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["label"] == "all" and record["guidance"] == 0 and record["fid"] > 0
    for args, facts in ((("--label", "x"), ["--label", "'x'"]),
                        (("--label", 10), ["label", "10"]),
                        (("--guidance", 1), ["--guidance", "--label"])):
        result = invoke("fid", "--run", run, "--n", 10_000, *args)  # no small-N warning
        assert_refused(result, 2, *facts)
    result = invoke("sample", "--run", run, "--label", "all", "--guidance", 1, "--n", 4,
                    "--out", tmp_path / "guided.npz")  # the same reason as for fid
    assert_refused(result, 2, "--guidance", "label_dropout=0")
    assert not (tmp_path / "guided.npz").exists()
    with pytest.raises(ValueError, match=r"eval_every.*\blabel_dropout=0\b"):
        train(tmp_path / "emb", steps=1, data=_embedded_digits(tmp_path), conditional=True,
              label_dropout=0.0, eval_every=1, eval_n=100, **{k: v for k, v in DIGITS.items()
                                                              if k != "data"})


def _embedded_digits(tmp_path):
    """The digits in an .npz with a float embedding per image (its class's one-hot row)."""
    import numpy as np

    from scoresde.data import get_dataset

    digits = get_dataset("digits")
    path = tmp_path / "embedded.npz"
    np.savez(path, x=digits.train.numpy(), y=np.eye(10, dtype=np.float32)[digits.train_labels])
    return path


def test_fid_of_a_sample_file_equals_fid_of_the_same_draws(digits_run, tmp_path):
    common = ("--n", 100, "--solver", "euler", "--steps", 3, "--batch-size", 50)
    drawn = invoke("fid", "--run", digits_run, *common, "--json")
    assert drawn.exit_code == 0, drawn.output
    out = tmp_path / "s.npz"
    assert invoke("sample", "--run", digits_run, *common, "--out", out).exit_code == 0
    measured = invoke("fid", "--samples", out, "--run", digits_run, "--json")
    assert measured.exit_code == 0, measured.output
    a, b = json.loads(drawn.stdout), json.loads(measured.stdout)
    assert b["n"] == 100 and b["pixels"] is False and b["samples"] == str(out)
    for key in ("fid", "kid", "precision", "recall"):  # the same images, chunked otherwise
        assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9)


def test_fid_of_8_bit_images_in_a_file_sees_their_levels(tmp_path):
    import numpy as np

    from scoresde.data import get_dataset

    # 8-bit digits (levels 0..240): the file of the training images themselves, as uint8
    # (N, H, W), is the reference: FID 0 to round-off, precision and recall 1.
    levels = (get_dataset("digits").train.numpy()[:, 0] * 8 + 8).round().astype(np.uint8) * 15
    np.save(tmp_path / "digits8.npy", levels)
    data = get_dataset(str(tmp_path / "digits8.npy"))
    assert data.pixel_bits == 8
    train = (data.train.numpy()[:, 0] * 128 + 127.5).round().astype(np.uint8)
    np.savez(tmp_path / "train.npz", samples=train[..., None])  # (N, H, W, 1), channel-last
    result = invoke("fid", "--samples", tmp_path / "train.npz", "--data",
                    tmp_path / "digits8.npy", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["pixels"] is True and record["n"] == data.train_size
    assert abs(record["fid"]) < 1e-6 and record["precision"] == record["recall"] == 1.0
    np.save(tmp_path / "nan.npy", np.full((200, 1, 8, 8), np.nan, np.float32))
    np.save(tmp_path / "small.npy", np.zeros((200, 1, 4, 4), np.float32))
    for args, facts in (
            (("--samples", tmp_path / "train.npz", "--data", "digits", "--solver", "em"),
             ["--solver", "--samples"]),
            (("--samples", tmp_path / "none.npz", "--data", "digits"), ["none.npz"]),
            (("--samples", tmp_path / "nan.npy", "--data", "digits"), ["nan.npy", "NaN"]),
            (("--samples", tmp_path / "small.npy", "--data", "digits"),
             ["--samples", "small.npy", "(N, 1, 8, 8)", "(200, 1, 4, 4)"]),
            (("--data", "digits"), ["--data", "--samples"])):
        result = invoke("fid", *args)
        assert_refused(result, 2, *facts)


def test_run_images_reads_an_old_run_as_it_was_trained(tmp_path):
    # A run on a uint8 array from before 8-bit image support read it as its stored values; its
    # config lacks pixels and pixel_bits, which the config upgrade fills in (pixels=False).
    import numpy as np

    from scoresde.data import get_dataset
    from scoresde.quality import run_images

    digits = get_dataset("digits")
    path = tmp_path / "levels.npy"
    np.save(path, ((digits.train + 1) * 127.5).round().numpy().astype(np.uint8))
    run = tmp_path / "old"
    train(run, steps=1, pixels=False, **dict(DIGITS, data=str(path)))
    make_old(run, ("pixels", "pixel_bits"))
    images = run_images(run)
    assert images.raw_scale == 1.0
    assert torch.equal(images.test, get_dataset(str(path), pixels=False).test)
