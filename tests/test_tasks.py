"""The task layer: a notebook user calling a task with the command's options gets the command's
arrays and numbers; a bad option names itself; the tasks know nothing of the command."""

import json
import subprocess
import sys

import numpy as np
import pytest

from problems import assert_refused, folder_with_a_run, invoke
from scoresde.checks import OptionError
from scoresde.tasks import run_likelihood, sample_run


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    with folder_with_a_run(tmp_path_factory.mktemp("tasks"), "--sde", "vp", "--steps", 3,
                           "--batch-size", 16, "--width", 16, "--conditional", "--run",
                           "r") as path:
        yield path


def _arrays(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files if k != "manifest"}


@pytest.mark.parametrize("args, options", [
    (["--solver", "em", "--steps", 4, "--n", 12, "--seed", 3],
     dict(solver="em", steps=4, n=12, seed=3)),
    (["--solver", "euler", "--steps", 5, "--seeds", "0-9", "--batch-size", 4],
     dict(solver="euler", steps=5, seeds=list(range(10)), batch_size=4)),
    (["--solver", "dpmpp_2m", "--steps", 6, "--n", 16, "--label", "all", "--guidance", 1.5],
     dict(solver="dpmpp_2m", steps=6, n=16, label="all", guidance=1.5)),
    (["--observe", "obs.npz", "--inverse", "dps", "--step-size", 0.5, "--n", 8],
     dict(observe="obs.npz", inverse="dps", inverse_options={"step_size": 0.5}, n=8)),
])
def test_a_task_with_the_commands_options_gives_the_commands_samples(in_workdir, args, options):
    np.savez("obs.npz", A=np.array([[0.5, 0.5]]), y=np.array([1.0]), noise_std=0.2)
    result = invoke("sample", "--run", "r", *args, "--out", "command.npz", "--force", "--json")
    assert result.exit_code == 0, result.output
    record, _ = sample_run("r", "task.npz", **options, replace=True, say=lambda line: None)
    command = json.loads(result.stdout)
    for key in ("solver", "steps", "n", "nfe", "eps", "options", "batch_size", "chunks"):
        assert record[key] == command[key], key
    ours, theirs = _arrays(in_workdir / "task.npz"), _arrays(in_workdir / "command.npz")
    assert ours.keys() == theirs.keys() and {"samples", "raw"} <= ours.keys()
    assert all(np.array_equal(ours[k], theirs[k]) for k in ours)


def test_the_likelihood_task_gives_the_commands_numbers(in_workdir):
    result = invoke("likelihood", "--run", "r", "--n", 20, "--json")
    assert result.exit_code == 0, result.output
    record, about = run_likelihood("r", n=20)
    command = json.loads(result.stdout)
    assert about["pixel_bits"] is None
    for key in ("log_likelihood", "standard_error", "nfe", "entropy", "gap", "n"):
        assert record[key] == command[key], key


@pytest.mark.parametrize("options, option, flag", [
    (dict(guidance=1.0), "guidance", "--guidance"),
    (dict(label=9), "label/guidance", "--label/--guidance"),
    (dict(seeds=[0, 1, 2], n=5), "n/seeds", "--n/--seeds"),
    (dict(seeds=[0, 1], seed=4), "seed/seeds", "--seed/--seeds"),
    (dict(observe="obs.npz", inverse="replacement", inverse_options={"particles": 3}),
     "particles", "--particles"),
])
def test_a_bad_option_names_itself_in_the_task_and_as_a_flag(in_workdir, options, option, flag):
    np.savez("obs.npz", A=np.array([[0.5, 0.5]]), y=np.array([1.0]), noise_std=0.2)
    with pytest.raises(OptionError) as err:
        sample_run("r", "bad.npz", solver="em", steps=2, **options)
    assert err.value.option == option
    args = {"guidance": ["--guidance", 1], "label": ["--label", 9], "n": ["--n", 5],
            "seeds": ["--seeds", "0-2" if "n" in options else "0-1"], "seed": ["--seed", 4],
            "observe": ["--observe", "obs.npz"], "inverse": ["--inverse", "replacement"],
            "inverse_options": ["--particles", 3]}
    result = invoke("sample", "--run", "r", "--solver", "em", "--steps", 2, "--out", "bad.npz",
                    *[a for k in options for a in args[k]])
    assert_refused(result, 2, flag)
    assert not (in_workdir / "bad.npz").exists()


def test_the_tasks_know_nothing_of_the_command():
    code = ("import sys, scoresde.tasks; "
            "print(sorted(m for m in sys.modules if m == 'click' or m.startswith('scoresde.cli')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_train_run_numbers_new_runs_resumes_the_latest_and_starts_a_requeued_one(tmp_path):
    from problems import TINY
    from scoresde.tasks import train_run

    root, said = tmp_path / "runs", []
    path, result = train_run(root=root, steps=2, say=said.append, **TINY)
    assert path == root / "00000-vp-8gaussians" and result["step"] == 2 and said == []
    again, result = train_run(root=root, resume=True, steps=3, say=said.append, **TINY)
    assert again == path and result["resumed_from"] == 2 and result["step"] == 3
    assert len(said) == 1 and str(path) in said[0]  # which run was taken
    requeued, result = train_run(tmp_path / "job", resume=True, steps=2, say=said.append,
                                 **TINY)
    assert result["step"] == 2 and len(said) == 2 and str(requeued) in said[1]
    with pytest.raises(OptionError) as err:
        train_run(path, steps=2, **TINY)  # a run folder, without resume
    assert err.value.option == "run"
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OptionError) as err:
        train_run(tmp_path / "notes.txt", resume=True, **TINY)
    assert err.value.option == "run" and (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(OptionError) as err:
        train_run(root=tmp_path / "none", resume=True, **TINY)
    assert err.value.option is None


def test_a_folder_train_run_created_is_removed_when_training_fails_before_a_checkpoint(
        tmp_path, monkeypatch):
    import scoresde.training
    from problems import TINY
    from scoresde.runs import CONFIG
    from scoresde.tasks import train_run

    real = scoresde.training.build_parts
    seen = []

    def fail(*args, **kwargs):
        if (tmp_path / "new").exists():
            seen.append(sorted(p.name for p in (tmp_path / "new").iterdir()))
        raise RuntimeError("no memory")

    monkeypatch.setattr(scoresde.training, "build_parts", fail)
    with pytest.raises(RuntimeError):
        train_run(tmp_path / "new", steps=2, **TINY)
    assert seen and seen[0] and not (tmp_path / "new").exists()  # it held files, then none
    monkeypatch.setattr(scoresde.training, "build_parts", real)
    path, _ = train_run(tmp_path / "kept", steps=2, **TINY)
    monkeypatch.setattr(scoresde.training, "build_parts", fail)
    with pytest.raises(RuntimeError):
        train_run(path, resume=True, steps=4, **TINY)
    assert (path / CONFIG).exists()  # a run with a checkpoint stays, to resume


def test_seeds_as_a_command_gives_them():
    from scoresde.tasks.conditions import parse_seeds

    assert parse_seeds("0-2,5, 9-10") == [0, 1, 2, 5, 9, 10]
    for bad in ("3-1", "-1", "a", "1,,2"):
        with pytest.raises(OptionError) as err:
            parse_seeds(bad)
        assert err.value.option == "seeds" and repr(bad) in str(err.value)
