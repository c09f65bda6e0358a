"""The CLI's choices and defaults are the library's tables and keyword defaults, read lazily."""

import inspect

import click
import pytest

import scoresde
from scoresde import hardware, likelihood, losses, models, sampling, toys
from scoresde.cli import main

from problems import ROOT, assert_refused, invoke, run_python

CHOICES = {  # (command, option) -> the library table its choices must equal
    ("train", "sde"): scoresde.SDES,
    ("train", "weighting"): losses.WEIGHTINGS,
    ("train", "time_sampling"): losses.TIME_SAMPLINGS,
    ("train", "net"): models.TRAIN_NETS,
    ("train", "precision"): hardware.PRECISIONS,
    ("sample", "solver"): scoresde.SAMPLERS,
    ("sample", "sr_solver"): scoresde.SAMPLERS,
    ("sample", "grid"): sampling.GRIDS,
    ("sample", "predictor"): sampling.PREDICTORS,
    ("sample", "corrector"): sampling.CORRECTORS,
    ("sample", "inverse"): sampling.INVERSE_METHODS,
    ("likelihood", "divergence"): likelihood.DIVERGENCES,
    ("demo", "toy"): toys.TOYS,
    ("demo", "sde"): scoresde.SDES,
    ("convert", "source"): scoresde.convert.SOURCES,
    ("convert", "config"): scoresde.SCORE_SDE_CONFIGS,
    ("fid", "solver"): scoresde.SAMPLERS,
    ("fid", "grid"): sampling.GRIDS,
    ("ema", "metric"): scoresde.tasks.ema.METRICS,
}

DEFAULTS = {  # (command, option) -> (library function, keyword) whose default it must be, or
    # (scoresde.config, option) for the training options
    **{("train", k): (scoresde.config, k) for k in (
        "sde", "data", "lr", "weighting", "log_snr_share", "seed", "checkpoint_every",
        "label_dropout", "net", "precision", "downsample", "cond_aug", "eval_n",
        "eval_features", "time_sampling", "time_loc", "time_scale")},
    ("sample", "aug_level"): (scoresde.cascade, "aug_level"),
    ("sample", "solver"): (scoresde.sample, "solver"),
    ("sample", "steps"): (scoresde.sample, "steps"),
    **{("sample", k): (sampling.sample_pc, k) for k in (
        "predictor", "corrector", "snr", "corrector_steps")},
    **{("likelihood", k): (scoresde.log_likelihood, k) for k in (
        "divergence", "probes", "method", "rtol", "atol", "eps")},
    **{("demo", k): (scoresde.run_demo, k) for k in ("toy", "sde", "n", "seed")},
    ("demo", "steps"): (scoresde.config, "steps"),
    ("sample", "particles"): (sampling.sample_smc, "particles"),
    ("sample", "step_size"): (sampling.inverse._dps, "step_size"),
    **{("sample", k): (sampling.inverse._repaint, k) for k in ("jump", "resample")},
    ("fid", "solver"): (scoresde.run_quality, "solver"),
    **{("fid", k): (scoresde.run_quality, k) for k in ("n", "features", "batch_size")},
    ("ema", "metric"): (scoresde.tasks.ema.sweep_ema, "metric"),
}


def _param(command, name):
    return next(p for p in main.commands[command].params if p.name == name)


def test_every_choice_is_a_library_table():
    found = {(c.name, p.name): p.type for c in main.commands.values() for p in c.params
             if isinstance(p.type, click.Choice)}
    assert set(found) == set(CHOICES)  # no choice list of the CLI's own
    for key, table in CHOICES.items():
        assert list(found[key].choices) == list(table), key


@pytest.mark.parametrize("key", sorted(DEFAULTS), ids="-".join)
def test_defaults_are_the_librarys_and_help_shows_them(key):
    command, name = key
    function, keyword = DEFAULTS[key]
    expected = (scoresde.config.option_default(keyword) if function is scoresde.config
                else inspect.signature(function).parameters[keyword].default)
    param = _param(command, name)
    with click.Context(main.commands[command]) as ctx:
        assert param.get_default(ctx) == expected
        assert f"[default: {expected}" in " ".join(param.get_help_record(ctx)[1].split())


def test_help_names_the_toys_and_the_training_defaults():
    result = invoke("train", "--help")
    text = " ".join(result.output.split())
    assert result.exit_code == 0 and ", ".join(toys.TOYS) in text
    steps = scoresde.config.option_default("steps")
    assert f"[default: {steps}; with --resume" in text


@pytest.mark.slow  # a fresh interpreter
def test_import_and_group_help_load_no_heavy_library():
    """``import scoresde`` and ``scoresde --help`` stay light: PyTorch and SciPy load when a name
    that needs them is first used, matplotlib and scikit-learn only when a command draws a
    figure or builds a toy data set; the training defaults come without PyTorch too."""
    heavy = ("torch", "scipy", "matplotlib", "sklearn")
    code = ("import sys; import scoresde; from scoresde.cli import main; "
            "from click.testing import CliRunner; "
            "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0, r.output; "
            "assert scoresde.config.option_default('steps') > 0; "
            f"print([m for m in {heavy!r} if m in sys.modules])")
    proc = run_python("-c", code, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.slow  # fresh interpreters
def test_help_and_a_mistyped_choice_are_answered_without_torch(tmp_path):
    """The first help reads the library's tables and defaults (and imports it); from then on
    every command's --help and a mistyped choice come from the remembered facts, the same text,
    with neither PyTorch nor SciPy imported."""
    commands = ("train", "sample", "likelihood", "fid", "ema", "demo", "convert")
    code = ("import sys; from scoresde.cli import main; from click.testing import CliRunner; "
            "out = [CliRunner().invoke(main, [c, '--help']).output for c in sys.argv[1:]]; "
            "wrong = CliRunner().invoke(main, ['sample', '--solver', 'pcc']); "
            "out.append(str(wrong.exit_code) + wrong.output); "
            "out.append(str([m for m in ('torch', 'scipy') if m in sys.modules])); "
            "print('\\n====\\n'.join(out))")
    first = run_python("-c", code, *commands, cwd=tmp_path, SCORESDE_CACHE=str(tmp_path))
    again = run_python("-c", code, *commands, cwd=tmp_path, SCORESDE_CACHE=str(tmp_path))
    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    *helps, wrong, loaded = again.stdout.strip().split("\n====\n")
    assert loaded == "[]" and first.stdout.split("\n====\n")[:-1] == [*helps, wrong]
    assert all("Usage: " in text and "--help" in text for text in helps)
    assert wrong.startswith("2") and "'pc'" in wrong


@pytest.mark.slow  # a fresh interpreter
def test_every_public_name_resolves_and_cascade_stays_the_function():
    """The package's names are imported on first use: each of ``__all__`` resolves, every module
    is an attribute, and ``scoresde.cascade`` is the function even after the module of that
    name was imported by the training loop."""
    code = ("import inspect, types, scoresde, scoresde.loop; "
            "assert all(getattr(scoresde, n) is not None for n in scoresde.__all__); "
            "assert set(scoresde.__all__) <= set(dir(scoresde)); "
            "assert inspect.isfunction(scoresde.cascade), scoresde.cascade; "
            "from scoresde import cascade; assert inspect.isfunction(cascade); "
            "assert isinstance(scoresde.sampling, types.ModuleType); "
            "assert isinstance(scoresde.tasks, types.ModuleType); "
            "print(scoresde.cascade.__module__, scoresde.train.__module__)")
    proc = run_python("-c", code, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["scoresde.cascade", "scoresde.training"]
    with pytest.raises(AttributeError, match="'no_such_name'"):
        scoresde.no_such_name
    assert getattr(scoresde, "a.b", None) is None and not hasattr(scoresde, "weights")


@pytest.mark.parametrize("args, near", [(["sample", "--solver", "pcc"], "'pc'"),
                                        (["train", "--sde", "vpp"], "'vp'"),
                                        (["sample", "--grid", "edn"], "'edm'")])
def test_a_mistyped_choice_suggests_the_nearest(args, near):
    result = invoke(*args)
    line = assert_refused(result, 2, args[-2], f"'{args[-1]}'")
    assert f"Did you mean {near}" in line  # click's suggestion, beside the list of choices


def test_a_choice_nothing_like_any_suggests_nothing():
    result = invoke("sample", "--solver", "zzz")
    assert result.exit_code == 2 and "Did you mean" not in result.stderr
