"""Post-hoc EMA: the power-function kernels against their closed form, the reconstruction of a
tracked profile and of a third one, snapshots through a crash and a resume, the command."""

import json
import math
import os
import re
import shutil

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from scoresde import load_run, train
from scoresde.phema import (PowerEMA, gamma_to_sigma_rel, kernel_error, kernel_products,
                            power_kernel, reconstruct, sigma_rel_to_gamma, solve_coefficients)
from scoresde.runs import ema_snapshot_steps, ema_weights, load_checkpoint, read_ema_snapshot

from problems import TINY, Interrupt, assert_equal_states, assert_refused, invoke, run_states
from problems import stop_at

# A short run with snapshots of two profiles every 10 steps (20 of each).
STEPS, EVERY = 200, 10
RUN = dict(TINY, steps=STEPS, ema_snapshot_every=EVERY, log_every=50, checkpoint_every=50)


def _flat(weights, names):
    return torch.cat([weights[k].flatten().double() for k in names])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs from one seed: one tracking 0.05, 0.10 and 0.07, one tracking 0.05 and 0.10."""
    root = tmp_path_factory.mktemp("phema")
    train(root / "three", ema_profiles=[0.05, 0.1, 0.07], **RUN)
    train(root / "two", ema_profiles=[0.05, 0.1], **RUN)
    return root / "three", root / "two"


# ----- the mathematics ------------------------------------------------------------------------
@pytest.mark.parametrize("sigma_rel", [0.02, 0.05, 0.07, 0.1, 0.2, 0.3])
def test_sigma_rel_and_exponent_are_inverse(sigma_rel):
    gamma = sigma_rel_to_gamma(sigma_rel)
    assert gamma > -1 and gamma_to_sigma_rel(gamma) == pytest.approx(sigma_rel, rel=1e-12)


@pytest.mark.parametrize("sigma_rel", [0.05, 0.1, 0.2])
def test_the_tracked_weights_of_the_steps_are_the_closed_form(sigma_rel):
    """Tracking a trajectory whose step t is the t-th unit vector gives, in the average, the
    weight of each step: it equals the density (g+1) tau^g / T^(g+1) integrated over the step,
    and its relative std (of the step's end over T) is sigma_rel up to the step's size."""
    T = 300
    live = torch.zeros(T, dtype=torch.float64)
    ema = PowerEMA([sigma_rel], {"w": live})
    for t in range(1, T + 1):
        live.zero_()[t - 1] = 1.0
        ema.update(t)
    tracked = ema.averages[0][0].numpy()
    gamma = sigma_rel_to_gamma(sigma_rel)
    closed = power_kernel(gamma, T)
    np.testing.assert_allclose(tracked, closed, rtol=1e-10, atol=1e-15)
    for i in (1, T // 2, T - 1, T):  # the closed form is the density's mass over the step
        mass = quad(lambda tau: (gamma + 1) * tau ** gamma / T ** (gamma + 1), i - 1, i)[0]
        assert closed[i - 1] == pytest.approx(mass, rel=1e-8, abs=1e-15)
    assert closed.sum() == pytest.approx(1.0, abs=1e-12)
    position = (np.arange(1, T + 1) - 0.5) / T  # each step's middle, relative to the length
    mean = (closed * position).sum()
    std = math.sqrt((closed * (position - mean) ** 2).sum())
    assert std == pytest.approx(sigma_rel, abs=1 / T)


def test_summed_kernel_products_approach_the_integrals_closed_form():
    """The exact sums over steps against EDM2's closed form of the densities' products: they
    agree when a step is small against the lengths, and not over a few tens of steps (where
    the sums are what the snapshots hold)."""
    gammas = [sigma_rel_to_gamma(0.05), sigma_rel_to_gamma(0.1), 3.0]
    for scale, agree in ((1000, True), (1, False)):
        steps = [20 * scale, 30 * scale, 40 * scale]
        exact = kernel_products(gammas, steps, gammas, steps, exact=True)
        closed = kernel_products(gammas, steps, gammas, steps, exact=False)
        assert np.allclose(exact, closed, rtol=1e-5, atol=0) == agree
        np.testing.assert_allclose(exact, closed, rtol=0.3)


def test_a_kernel_in_the_basis_is_its_own_reconstruction():
    gammas = [sigma_rel_to_gamma(s) for s in (0.05, 0.1)] * 3
    steps = [100, 100, 200, 200, 300, 300]
    x = solve_coefficients(gammas, steps, gammas[3], 200)
    np.testing.assert_allclose(x, np.eye(6)[3], atol=1e-9)  # snapshots after step 200: 0
    assert kernel_error(gammas, steps, x, gammas[3], 200) < 1e-9


# ----- runs -----------------------------------------------------------------------------------
def test_the_reconstruction_of_a_tracked_profile_is_that_profile(runs):
    three, _ = runs
    snapshots = [read_ema_snapshot(three, s) for s in ema_snapshot_steps(three)]
    for step, k in ((STEPS, 0), (STEPS, 1), (STEPS // 2, 2)):
        weights, info = reconstruct(snapshots, [0.05, 0.1, 0.07][k], step)
        tracked = read_ema_snapshot(three, step)["averages"][k]
        assert info["kernel_error"] < 1e-9 and weights.keys() == tracked.keys()
        for name in tracked:
            torch.testing.assert_close(weights[name], tracked[name], rtol=1e-5, atol=1e-6)


def test_a_third_profile_is_reconstructed_from_two(runs):
    """The reconstruction of 0.07 from 20 snapshots each of 0.05 and 0.10 against the run that
    tracked 0.07 from the same seed. Its error is sum_i e_i theta_i, e the kernel's error over
    the steps: with sum_i e_i = 0 its norm is at most |e|_1 times the weights' distance from
    their average, which near the end of the window is of the order of the raw weights'
    distance from the EMA. So relative to that distance the error stays below |e|_1, the
    kernel's L1 error (0.23% for 20 snapshots each over 200 steps; measured: 0.012%), while
    the tracked 0.05 is 35% away."""
    three, two = runs
    for step in ema_snapshot_steps(two):  # the extra profile changes nothing of the training
        a, b = read_ema_snapshot(three, step), read_ema_snapshot(two, step)
        for k in range(2):
            assert all(torch.equal(a["averages"][k][n], b["averages"][k][n]) for n in a[
                "averages"][k])
    weights, info = ema_weights(two, 0.07)
    assert not info["tracked"] and info["snapshots"] == 2 * STEPS // EVERY
    bound = info["kernel_error"]
    assert 1e-4 < bound < 5e-3
    last = read_ema_snapshot(three, STEPS)
    tracked, names = last["averages"][2], list(last["averages"][2])
    raw = load_checkpoint(three / "checkpoint.pt")["model"]
    scale = (_flat(raw, names) - _flat(tracked, names)).norm()
    error = (_flat(weights, names) - _flat(tracked, names)).norm() / scale
    assert error < bound, (float(error), bound)
    assert (_flat(last["averages"][0], names) - _flat(tracked, names)).norm() / scale > 30 * bound


def test_load_run_takes_a_relative_length(runs):
    three, two = runs
    state = run_states(three)
    tracked = read_ema_snapshot(three, STEPS)["averages"][2]
    for ema, expected in ((0.07, tracked), (True, {k.removeprefix("module."): v for k, v in
                                                    state["ema"].items() if k != "n_averaged"}),
                          (False, state["model"])):
        model = load_run(three, ema=ema)[0]
        for name, value in model.state_dict().items():
            assert torch.equal(value, expected[name]), (ema, name)
    rebuilt = load_run(two, ema=0.15)[0].state_dict()
    weights, _ = ema_weights(two, 0.15)
    assert all(torch.equal(rebuilt[k], weights[k]) for k in weights)
    with pytest.raises(ValueError, match="0.5"):
        load_run(two, ema=0.5)


def test_snapshots_and_averages_survive_a_crash_bit_identically(tmp_path, runs):
    _, two = runs
    run = tmp_path / "crashed"
    opts = dict(RUN, ema_profiles=[0.05, 0.1])
    with pytest.raises(Interrupt):  # after the checkpoint of step 50 and the snapshot of 70
        train(run, callback=stop_at(75), **opts)
    assert ema_snapshot_steps(run)[-1] == 70 and run_states(run)["step"] == 50
    (run / "ema_snapshots" / ".tmp-cut.pt").write_bytes(b"half")  # a write a kill cut short
    train(run, resume=True, **opts)
    assert sorted(os.listdir(run / "ema_snapshots")) == sorted(os.listdir(two / "ema_snapshots"))
    for step in ema_snapshot_steps(two):
        a, b = read_ema_snapshot(run, step), read_ema_snapshot(two, step)
        assert a["step"] == b["step"] and a["sigma_rels"] == b["sigma_rels"]
        for x, y in zip(a["averages"], b["averages"]):
            assert all(torch.equal(x[n], y[n]) for n in x), step
    a, b = run_states(run), run_states(two)
    assert_equal_states(a, b)
    for x, y in zip(a["power_ema"]["averages"], b["power_ema"]["averages"]):
        assert all(torch.equal(x[n], y[n]) for n in x)


def test_the_ema_at_a_step_is_at_a_snapshots_step_only(runs):
    _, two = runs
    weights, info = ema_weights(two, 0.07, step=50)
    assert info["step"] == 50 and 0 < info["snapshots"] <= 10
    assert not all(torch.equal(weights[k], ema_weights(two, 0.07)[0][k]) for k in weights)
    with pytest.raises(ValueError, match=f"10 to {STEPS}"):
        ema_weights(two, 0.07, step=55)


@pytest.mark.parametrize("spoil", ["keys", "step", "names"])
def test_a_snapshot_that_is_not_the_runs_is_refused(tmp_path, runs, spoil):
    _, two = runs
    run = tmp_path / "run"
    shutil.copytree(two, run)
    folder = run / "ema_snapshots"
    snap = read_ema_snapshot(run, 100)
    if spoil == "keys":
        torch.save({"step": 100}, folder / "step_000100.pt")
    elif spoil == "step":
        os.replace(folder / "step_000100.pt", folder / "step_000105.pt")
    else:
        averages = [{f"x.{k}": v.clone() for k, v in a.items()} for a in snap["averages"]]
        torch.save(dict(snap, averages=averages), folder / "step_000100.pt")
    with pytest.raises(ValueError, match="step_0001|step 100"):
        ema_weights(run, 0.07)
    assert_refused(invoke("ema", "--run", run, "--sigma-rel", 0.07, "--out", tmp_path / "o"),
                   2, "--run")


@pytest.mark.parametrize("device", [
    "cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                         reason="no CUDA device"))])
def test_the_averages_state_is_a_copy_on_the_cpu(device):
    live = torch.arange(6.0, device=device)
    ema = PowerEMA([0.05, 0.1], {"w": live})
    ema.update(1)
    state = ema.state_dict()
    saved = state["averages"][1]["w"]
    assert saved.device.type == "cpu" and torch.equal(saved, live.cpu())
    live.add_(1.0)
    ema.update(2)
    assert torch.equal(saved, torch.arange(6.0))  # a copy, not the average itself
    again = PowerEMA([0.05, 0.1], {"w": live})
    again.load_state_dict(ema.state_dict())
    assert all(torch.equal(a[0], b[0]) and a[0].device == live.device
               for a, b in zip(again.averages, ema.averages))


def test_without_profiles_a_run_is_as_before(tmp_path):
    train(tmp_path / "run", steps=3, **TINY)
    assert set(run_states(tmp_path / "run")) == {"step", "elapsed_s", "model", "ema",
                                                 "optimizer", "rng"}
    assert not (tmp_path / "run" / "ema_snapshots").exists()
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["optim"]["ema_profiles"] is None
    assert config["optim"]["ema_snapshot_every"] is None
    with pytest.raises(ValueError, match="no EMA snapshots"):
        load_run(tmp_path / "run", ema=0.07)


@pytest.mark.parametrize("options, facts", [
    (dict(ema_profiles=[0.05, 0.5]), ["ema_profiles", "0.5"]),
    (dict(ema_profiles=[0.05, 0.05]), ["ema_profiles", "0.05"]),
    (dict(ema_snapshot_every=5), ["ema_snapshot_every", "ema_profiles"])])
def test_bad_profiles_are_refused(tmp_path, options, facts):
    with pytest.raises(ValueError) as err:
        train(tmp_path / "run", steps=2, **dict(TINY, **options))
    assert all(fact in str(err.value) for fact in facts)
    assert not (tmp_path / "run").exists()


def test_a_resume_must_keep_the_profiles(tmp_path, runs):
    run = tmp_path / "run"
    train(run, steps=4, ema_profiles=[0.05, 0.1], **TINY)
    with pytest.raises(ValueError, match="ema_profiles"):
        train(run, resume=True, steps=6, ema_profiles=[0.05], **TINY)
    train(run, resume=True, steps=6, ema_snapshot_every=3, **TINY)  # how often may change
    assert ema_snapshot_steps(run) == [1, 2, 3, 4, 6]


# ----- the command ----------------------------------------------------------------------------
def test_the_command_writes_a_run_of_a_length_that_sample_takes(tmp_path, runs):
    _, two = runs
    out = tmp_path / "ema07"
    result = invoke("ema", "--run", two, "--sigma-rel", 0.07, "--out", out, "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["step"] == STEPS and not record["tracked"]
    model = load_run(out)[0]
    weights, _ = ema_weights(two, 0.07)
    assert all(torch.equal(model.state_dict()[k], weights[k]) for k in weights)
    samples = tmp_path / "s.npz"
    result = invoke("sample", "--run", out, "--n", 8, "--solver", "euler", "--steps", 4,
                    "--out", samples)
    assert result.exit_code == 0, result.output
    assert np.load(samples)["samples"].shape == (8, 2)
    assert_refused(invoke("ema", "--run", two, "--sigma-rel", 0.07, "--out", out), 2, "--out",
                   str(out))


def test_the_sweep_prints_the_table_marks_the_best_and_draws_the_curve(tmp_path, runs):
    _, two = runs
    figure = tmp_path / "sweep.png"
    result = invoke("ema", "--run", two, "--sweep", "0.05,0.1,0.2", "--metric", "likelihood",
                    "--n", 20, "--figure", figure, "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    values = [row["log_likelihood"] for row in record["rows"]]
    assert [row["sigma_rel"] for row in record["rows"]] == [0.05, 0.1, 0.2]
    assert record["best"]["log_likelihood"] == max(values)
    assert figure.stat().st_size > 0 and record["classic"]["log_likelihood"] < 0
    result = invoke("ema", "--run", two, "--sweep", "0.05,0.1", "--metric", "likelihood",
                    "--n", 20, "--figure", tmp_path / "again.png")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert sum("<- best" in line for line in lines) == 1 and any("classic" in x for x in lines)


def test_a_resume_passes_over_a_post_hoc_folder_and_refuses_one_named(tmp_path, runs,
                                                                     monkeypatch):
    _, two = runs
    monkeypatch.chdir(tmp_path)
    shutil.copytree(two, "runs/00000-vp-toy")
    assert invoke("ema", "--run", "runs/00000-vp-toy", "--sigma-rel", 0.07).exit_code == 0
    (made,) = [p for p in (tmp_path / "runs").iterdir() if p.name != "00000-vp-toy"]
    assert made.name == "00001-vp-toy-ema0p07"  # the length whole, the run's name once
    result = invoke("train", "--resume", "--steps", STEPS + 2, "--quiet")
    assert result.exit_code == 0, result.output
    assert "00000-vp-toy" in result.stderr + result.stdout
    assert load_checkpoint(tmp_path / "runs/00000-vp-toy/checkpoint.pt")["step"] == STEPS + 2
    assert_refused(invoke("train", "--resume", "--run", made, "--steps", STEPS + 4), 2,
                   str(made), "post-hoc")
    state = load_checkpoint("runs/00000-vp-toy/checkpoint.pt")
    shutil.copytree("runs/00000-vp-toy", "bare")
    torch.save({k: v for k, v in state.items() if k != "optimizer"}, "bare/checkpoint.pt")
    assert_refused(invoke("train", "--resume", "--run", "bare", "--steps", STEPS + 4), 2,
                   "bare", "optimizer")


def test_the_out_folder_is_written_whole_or_not_at_all(tmp_path, runs, monkeypatch):
    from scoresde.tasks import ema as task

    _, two = runs
    out = tmp_path / "a" / "ema"
    out.mkdir(parents=True)  # an empty folder given stays empty until the whole is there
    monkeypatch.setattr(task, "write_config", lambda *args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        task.ema_run(two, out, 0.07)
    assert os.listdir(out) == [] and os.listdir(tmp_path / "a") == ["ema"]
    monkeypatch.undo()
    task.ema_run(two, out, 0.07)
    assert load_run(out)[2]["source"]["format"] == "post-hoc EMA"
    said = re.escape(f"post-hoc EMA of relative length 0.07 of {two}")
    with pytest.raises(ValueError, match=said):  # its config lists the profiles, not snapshots
        load_run(out, ema=0.1)
    assert sorted(os.listdir(tmp_path / "a")) == ["ema"]
    (tmp_path / "file").write_text("")
    for bad in (two / "inside", tmp_path / "file" / "x"):
        assert_refused(invoke("ema", "--run", two, "--sigma-rel", 0.07, "--out", bad), 2,
                       "--out", str(bad))
    assert not (two / "inside").exists()


@pytest.mark.parametrize("args, facts", [
    (["--sweep", "0.3:0.1:4"], ["--sweep", "0.3:0.1:4"]),
    (["--sweep", ""], ["--sweep", "LOW:HIGH:K"]),
    (["--sweep", ","], ["--sweep", "LOW:HIGH:K"]),
    (["--sweep", "0.02:0.4:4"], ["--sweep", "0.4"]),
    (["--sigma-rel", 0.07, "--sweep", "0.1,0.2"], ["--sigma-rel", "--sweep"]),
    (["--sigma-rel", 0.07, "--metric", "fid"], ["--metric"]),
    (["--sigma-rel", 0.9], ["--sigma-rel", "0.9"])])
def test_the_command_refuses_bad_input(runs, tmp_path, args, facts):
    _, two = runs
    assert_refused(invoke("ema", "--run", two, *args, "--out", tmp_path / "x")
                   if "--sweep" not in args else invoke("ema", "--run", two, *args),
                   2, *facts)


def test_a_sweep_of_no_lengths_is_refused_before_measuring(runs):
    from scoresde.checks import OptionError
    from scoresde.tasks import sweep_ema

    with pytest.raises(OptionError, match="LOW:HIGH:K"):
        sweep_ema(runs[1], [], metric="likelihood", n=20)


def test_a_sweep_checks_its_metric_first_and_never_marks_a_nan_best(runs, tmp_path,
                                                                   monkeypatch):
    import tempfile

    import scoresde.tasks
    from scoresde.checks import OptionError
    from scoresde.tasks import ema as task

    _, two = runs
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    made = []
    monkeypatch.setattr(task, "ema_run", lambda run, out, s: made.append(out.mkdir()) or {
        "kernel_error": 0.0})
    assert_refused(invoke("ema", "--run", two, "--sweep", "0.05,0.1"), 2, "--metric",
                   "likelihood")
    values = iter([{"n": 20}, {"log_likelihood": float("nan")}, {"log_likelihood": -3.0},
                   {"log_likelihood": -2.0}])
    monkeypatch.setattr(scoresde.tasks, "run_likelihood", lambda *a, **k: (next(values),))
    with pytest.raises(OptionError, match="log_likelihood"):  # the classic EMA's, first
        task.sweep_ema(two, [0.05, 0.1, 0.2], metric="likelihood")
    assert made == [] and os.listdir(tmp_path) == []
    result = task.sweep_ema(two, [0.05, 0.1, 0.2], metric="likelihood", classic=False)
    assert result["best"] == {"sigma_rel": 0.2, "log_likelihood": -2.0}


@pytest.mark.slow  # a digits U-Net, three FIDs
def test_a_fid_sweep_measures_each_length_as_the_fid_task_measures_its_run(tmp_path):
    from scoresde.tasks import ema_run, run_fid, sweep_ema

    run = tmp_path / "digits"
    train(run, data="digits", steps=4, batch_size=8, ema_profiles=[0.05, 0.1],
          ema_snapshot_every=2, progress=False)
    options = dict(n=100, batch_size=100, steps=2, progress=False, say=lambda line: None)
    result = sweep_ema(run, [0.07, 0.1], metric="fid", figure=tmp_path / "sweep.png", **options)
    ema_run(run, tmp_path / "e07", 0.07)
    assert result["rows"][0]["fid"] == run_fid(tmp_path / "e07", **options)["fid"]
    assert result["classic"]["record"]["n"] == 100 and result["classic"]["fid"] > 0
    fids = [row["fid"] for row in result["rows"]]
    assert result["best"] == {"sigma_rel": [0.07, 0.1][fids.index(min(fids))], "fid": min(fids)}
    assert (tmp_path / "sweep.png").stat().st_size > 0 and fids[0] != fids[1]
