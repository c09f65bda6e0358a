"""`scoresde sample`'s solver options: torchsde's adaptive stepping and whose tolerance is whose."""

import json
import warnings

import pytest

from problems import assert_refused, invoke


def test_torchsde_adaptive_runs_with_the_given_tolerances_and_reports_them(in_workdir):
    with warnings.catch_warnings():  # torchsde's warning on non-additive noise is not ours
        warnings.simplefilter("error")
        result = invoke("sample", "--solver", "torchsde", "--adaptive", "--rtol", "1e-2",
                        "--atol", "1e-2", "--steps", 20, "--n", 16, "--json", "--out", "a.npz")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["solver"] == "torchsde" and record["nfe"] > 1
    assert record["options"] == {"adaptive": True, "rtol": 0.01, "atol": 0.01}


@pytest.mark.slow  # torchsde's adaptive stepping at its own 1e-3 tolerances
def test_no_default_tolerance_is_passed_over_the_solvers_own(in_workdir):
    result = invoke("sample", "--solver", "torchsde", "--adaptive", "--steps", 20, "--n", 16,
                    "--json", "--out", "b.npz")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["options"] == {"adaptive": True}  # torchsde's 1e-3 holds


def test_adaptive_is_refused_by_the_other_solvers(in_workdir):
    result = invoke("sample", "--solver", "pc", "--adaptive", "--steps", 5, "--n", 4)
    assert_refused(result, 2, "adaptive", "'pc'", besides=["using run"])


def test_help_says_which_solver_uses_which_tolerance():
    text = " ".join(invoke("sample", "--help").output.split())
    assert "--adaptive" in text and "torchsde only" in text
    import inspect

    from scoresde.sampling import sample_ode, sample_torchsde

    for tol in ("rtol", "atol"):
        ode, sde = (inspect.signature(f).parameters[tol].default
                    for f in (sample_ode, sample_torchsde))
        assert f"ode [default: {ode}]; torchsde with --adaptive [default: {sde}]" in text
    assert ode != sde  # the help tells two different defaults apart


def test_the_ode_picks_its_own_steps_so_its_file_does_not_name_any(in_workdir):
    """--steps does not change what ode draws (it uses the grid's ends only): the default name
    has no steps in it, and the same command with other --steps finds its own file."""
    first = invoke("sample", "--solver", "ode", "--steps", 5, "--n", 12, "--json")
    assert first.exit_code == 0, first.output
    record = json.loads(first.stdout)
    name = record["out"].rsplit("/", 1)[-1]
    assert name.startswith("samples-ode-n12-seed0") and record["steps"] is None
    again = invoke("sample", "--solver", "ode", "--steps", 50, "--n", 12, "--json")
    assert again.exit_code == 0, again.output
    reused = json.loads(again.stdout)
    assert reused["out"] == record["out"] and reused["chunks_reused"] == reused["chunks"] == 1
    other = invoke("sample", "--solver", "euler", "--steps", 5, "--n", 12, "--json")
    assert "samples-euler-5-n12-seed0" in json.loads(other.stdout)["out"]


@pytest.mark.parametrize("solver", ["em", "pc", "euler", "heun", "dpmpp_2m", "unipc"])
def test_one_steps_gives_one_nfe_from_the_command_and_the_api(in_workdir, solver):
    """The command gives a few-step solver the data's statistics (tasks.data_statistics); the
    API given the same statistics makes the same number of score calls for the same steps."""
    import scoresde
    from scoresde.runs import latest_run
    from scoresde.tasks import data_statistics

    result = invoke("sample", "--solver", solver, "--steps", 6, "--n", 10, "--json", "--out",
                    f"nfe-{solver}.npz")
    assert result.exit_code == 0, result.output
    model, sde, config = scoresde.load_run(latest_run("runs"))
    _, info = scoresde.sample(model, sde, (10, 2), solver=solver, steps=6,
                              **data_statistics(config, solver, 6))
    assert info["nfe"] == json.loads(result.stdout)["nfe"]
