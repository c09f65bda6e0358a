"""Training runs: learning, exact resume, refused checkpoints, non-finite losses, DDP."""

import json
import re

import pytest
import torch

import scoresde
import scoresde.runs
from scoresde import GaussianMixture, dsm_loss, load_run, train
from scoresde.runs import load_checkpoint, read_config

from problems import (TINY, assert_equal_states, free_port, Interrupt, invoke, make_old,
                      run_python, run_states, stop_at, torchrun)





@pytest.mark.slow
def test_training_approaches_the_exact_score(tmp_path):
    """The DSM loss of the trained model, on fixed evaluation draws, moves at least halfway from
    the untrained model's loss to that of the exact mixture score (the minimum). The evaluation
    noise (20,000 draws, same draws for all three) is far below those gaps."""
    train(tmp_path / "run", steps=200, lr=1e-2,
          **{**TINY, "batch_size": 256, "net_params": {"hidden": 64, "depth": 2}, "log_every": 2})
    model, sde, config = load_run(tmp_path / "run")
    untrained = scoresde.ScoreModel(scoresde.ScoreMLP(hidden=64, depth=2), sde,
                                    config["sigma_data"])
    gen = torch.Generator().manual_seed(123)
    x0 = scoresde.toys.TOYS["8gaussians"](20_000, gen)
    t = torch.rand(20_000, generator=gen) * (1 - 1e-3) + 1e-3
    z = torch.randn(x0.shape, generator=gen)
    mix = scoresde.toys.EIGHT_GAUSSIANS
    with torch.no_grad():
        loss = {name: float(dsm_loss(fn, sde, x0, t=t, noise=z).mean()) for name, fn in
                [("exact", mix.score_fn(sde)), ("trained", model), ("untrained", untrained)]}
    assert loss["trained"] - loss["exact"] < 0.5 * (loss["untrained"] - loss["exact"]), loss
    lines = [json.loads(s) for s in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["step"] for r in lines] == list(range(2, 201, 2))
    assert config["data_shape"] == [2] and config["sde"]["name"] == "vp"


def test_interrupted_run_resumes_bit_identically(tmp_path):
    opts = dict(TINY, steps=12, checkpoint_every=5, log_every=2)
    train(tmp_path / "full", **opts)
    with pytest.raises(Interrupt):
        train(tmp_path / "cut", callback=stop_at(8), **opts)
    assert run_states(tmp_path / "cut")["step"] == 5
    result = train(tmp_path / "cut", resume=True, **opts)
    assert result["resumed_from"] == 5
    assert_equal_states(run_states(tmp_path / "full"), run_states(tmp_path / "cut"))
    steps = [json.loads(s)["step"] for s in open(tmp_path / "cut" / "metrics.jsonl")]
    assert steps == [2, 4, 6, 8, 10, 12]


def test_existing_runs_are_not_overwritten(tmp_path):
    train(tmp_path / "run", steps=2, **TINY)
    with pytest.raises(FileExistsError, match="resume=True"):
        train(tmp_path / "run", steps=2, **TINY)
    with pytest.raises(ValueError, match="lr"):
        train(tmp_path / "run", steps=4, lr=1.0, resume=True, **TINY)


class _Payload:
    """Unpickling this would create a file: a checkpoint that carries code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_checkpoint_with_code_is_refused_without_running_it(tmp_path):
    train(tmp_path / "run", steps=2, **TINY)
    marker = tmp_path / "pwned"
    state = run_states(tmp_path / "run")
    state["extra"] = _Payload(str(marker))
    torch.save(state, tmp_path / "run" / "checkpoint.pt")
    code = re.escape(str(tmp_path / "run" / "checkpoint.pt")) + r".*\bopen\b"  # the object
    with pytest.raises(ValueError, match=code):
        load_run(tmp_path / "run")
    with pytest.raises(ValueError, match=code):
        train(tmp_path / "run", steps=4, resume=True, **TINY)
    assert not marker.exists()


def test_non_finite_loss_names_the_step_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    def poison(step, record):
        if step == 6:
            with torch.no_grad():
                for p in model_params:
                    p.fill_(float("nan"))

    model_params = []
    orig = scoresde.runs.ScoreModel  # runs.build_model wraps the network of a run

    class Spy(orig):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            model_params.extend(self.parameters())

    monkeypatch.setattr(scoresde.runs, "ScoreModel", Spy)
    with pytest.raises(FloatingPointError, match="step 7"):
        train(tmp_path / "run", steps=10, checkpoint_every=5, callback=poison, **TINY)
    monkeypatch.undo()
    state = run_states(tmp_path / "run")
    assert state["step"] == 5 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_images_with_labels_and_mixtures(tmp_path):
    train(tmp_path / "digits", data="digits", conditional=True, steps=2, batch_size=8,
          net_params={"ch": 8, "ch_mult": [1, 2], "num_res_blocks": 1}, progress=False)
    model, sde, config = load_run(tmp_path / "digits", ema=False)
    assert config["is_image"] and config["data_shape"] == [1, 8, 8] and config["raw_scale"] == 8
    out = model(torch.zeros(3, 1, 8, 8), torch.full((3,), 0.5), y=torch.tensor([0, 1, 9]))
    assert out.shape == (3, 1, 8, 8) and torch.isfinite(out).all()
    mix = GaussianMixture.ring()
    train(tmp_path / "mix", **{**TINY, "data": mix}, steps=2, sde="ve")
    _, sde, config = load_run(tmp_path / "mix")
    assert isinstance(sde, scoresde.VESDE) and len(config["data"]["means"]) == 8


DDP_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from scoresde import train
train(sys.argv[1], data="moons", net_params={"hidden": 16, "depth": 1}, batch_size=32,
      steps=int(sys.argv[2]), resume=sys.argv[3] == "1", lr_decay="none", progress=False)
"""


@pytest.mark.slow
def test_distributed_equals_one_process(tmp_path):
    """torchrun with 2 gloo processes, interrupted and resumed, equals one process run straight
    with the same global batch: the same data, times and noise, gradients averaged over ranks.
    Only the order of float additions differs, hence the tolerance."""
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    for steps, resume in [("3", "0"), ("6", "1")]:
        proc = run_python("-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
                          "--master_addr=127.0.0.1", f"--master_port={free_port()}", script,
                          tmp_path / "ddp", steps, resume, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    train(tmp_path / "one", data="moons", net_params={"hidden": 16, "depth": 1}, batch_size=32,
          steps=6, lr_decay="none", progress=False)
    a, b = run_states(tmp_path / "ddp"), run_states(tmp_path / "one")
    assert a["step"] == b["step"] == 6
    for key in ("model", "ema"):
        for k in a[key]:
            assert torch.allclose(a[key][k], b[key][k], rtol=1e-4, atol=1e-6), (key, k)


def test_sharp_edge_recipe_is_recorded_and_bad_shares_are_refused(tmp_path):
    # Defaults: uniform t and a plain MLP input; the checkerboard recipe turns both on.
    opts = dict(steps=1, progress=False, batch_size=8)
    train(tmp_path / "plain", data="8gaussians", **opts)
    train(tmp_path / "edges", data="checkerboard", log_snr_share=0.3,
          net_params={"input_features": 64}, **opts)
    cfg = {k: read_config(tmp_path / k) for k in ("plain", "edges")}
    assert cfg["plain"]["log_snr_share"] == 0.0 and cfg["plain"]["net"]["input_features"] == 0
    assert cfg["edges"]["log_snr_share"] == 0.3
    assert cfg["edges"]["net"]["input_features"] == 64 and cfg["edges"]["net"]["input_scale"] == 0.3
    model, _, _ = load_run(tmp_path / "edges")
    assert model.net.inp.in_features == 2 + 128
    for bad, match in [({"log_snr_share": 2.0}, r"^log_snr_share\b.*\b2(\.0)?\b"),
                       ({"log_snr_share": 0.3, "weighting": "likelihood_is"},
                        r"^log_snr_share\b.*'likelihood_is'"),
                       ({"log_snr_share": 0.3, "weighting": "likelihood"},
                        r"^log_snr_share\b.*'likelihood'")]:
        with pytest.raises(ValueError, match=match):
            train(tmp_path / "bad", data="8gaussians", **bad, **opts)
        assert not (tmp_path / "bad").exists()


def test_runs_saved_before_log_snr_share_and_input_features_resume(tmp_path):
    """A config.json without the keys those options added is read as the run it was: plain
    MLP input, uniform t. Both the library and the CLI resume it."""
    run = tmp_path / "old"
    old_opts = dict(TINY, net_params={"hidden": 16, "depth": 1}, log_snr_share=0.0)
    train(run, steps=2, **old_opts)
    make_old(run, ("log_snr_share",), ("input_features", "input_scale"))
    train(run, steps=3, resume=True, **old_opts)
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 3
    with pytest.raises(ValueError, match=r"\blog_snr_share\b"):
        train(run, steps=4, resume=True, **dict(old_opts, log_snr_share=0.3))
    with pytest.raises(ValueError, match=r"\bnet\.input_features\b"):
        train(run, steps=4, resume=True, **dict(old_opts, net_params={"hidden": 16, "depth": 1,
                                                                     "input_features": 8}))
    result = invoke("train", "--resume", "--run", run, "--steps", 4, "--quiet")
    assert result.exit_code == 0, result.output
    config = read_config(run)
    assert config["log_snr_share"] == 0.0 and config["net"]["input_features"] == 0
    assert load_run(run)[2]["steps"] == 4


def test_the_share_reaches_the_time_draws_of_every_step(tmp_path, monkeypatch):
    # train() draws its batch's times itself: with share 1 every time is uniform in log-SNR.
    import scoresde.loop as train_module  # the loop draws each batch's times

    drawn = []
    real = train_module.sample_time

    def spy(sde, n, **kw):
        t = real(sde, n, **kw)
        drawn.append((kw.get("log_snr_share"), t))
        return t

    monkeypatch.setattr(train_module, "sample_time", spy)
    train(tmp_path / "run", steps=3, log_snr_share=1.0, **{**TINY, "batch_size": 512})
    assert [share for share, _ in drawn] == [1.0] * 3
    sde = scoresde.get_sde("vp")
    lam = sde.log_snr(torch.cat([t for _, t in drawn]).double())
    lo, hi = sde.log_snr(torch.tensor([sde.T, 1e-5], dtype=torch.float64))
    # uniform in log-SNR: half the draws above the midpoint (uniform t would give ~11%)
    assert abs(float((lam > (lo + hi) / 2).double().mean()) - 0.5) < 0.05


def test_train_leaves_the_callers_random_state_alone(tmp_path, monkeypatch):
    """train() seeds and draws inside a fork of PyTorch's generators, fresh and resumed; the
    network is still initialised as torch.manual_seed(seed) followed by building it."""
    import scoresde.loop as loop

    built = []
    real = loop.build_model

    def spy(config, sde):
        model = real(config, sde)
        built.append((config, sde, {k: v.clone() for k, v in model.state_dict().items()}))
        return model

    monkeypatch.setattr(loop, "build_model", spy)
    torch.manual_seed(1234)
    torch.rand(3)
    before = torch.get_rng_state()
    train(tmp_path / "run", steps=3, checkpoint_every=2, seed=7, **TINY)
    assert torch.equal(torch.get_rng_state(), before)
    train(tmp_path / "run", steps=5, resume=True, seed=7, **TINY)
    assert torch.equal(torch.get_rng_state(), before)
    config, sde, initial = built[0]
    torch.manual_seed(7)
    expected = scoresde.runs.build_model(config, sde).state_dict()
    assert all(torch.equal(initial[k], expected[k]) for k in expected)
    torch.set_rng_state(before)


def test_progress_off_a_terminal_is_a_few_full_lines(tmp_path, capsys, monkeypatch):
    """Progress to a stream that is not a terminal (a log file): no carriage returns, a line
    whenever SCORESDE_PROGRESS_S seconds have passed, at whatever step, with the loss of the
    last record, and the last step."""
    opts = dict(TINY, progress=True, log_every=5)
    train(tmp_path / "a", steps=20, **opts)
    data, count, err = capsys.readouterr().err.split("\n", 2)  # what it trains on, first
    n = sum(p.numel() for p in scoresde.ScoreMLP(hidden=16, depth=1).parameters())
    assert data.startswith("data 8gaussians: ") and "8 classes" in data
    assert count == f"network mlp: {n:,} parameters"
    assert "\r" not in err and err.splitlines() == [err.strip()]
    assert err.startswith("step 20/20 100%") and "loss=" in err
    monkeypatch.setenv("SCORESDE_PROGRESS_S", "0")
    train(tmp_path / "b", steps=20, **opts)
    lines = capsys.readouterr().err.splitlines()[2:]
    assert "\r" not in "".join(lines)
    assert [line.split()[1] for line in lines] == [f"{i}/20" for i in range(1, 21)]
    assert ["loss=" in line for line in lines] == [i >= 5 for i in range(1, 21)]


def test_progress_in_a_terminal_is_a_tqdm_bar_with_the_loss():
    import io

    from scoresde.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    bar = Progress(10, unit="step", desc="", initial=4, stream=stream, last=True)
    for done in range(5, 11):
        bar.set(done, "loss=0.2500")
    bar.close()
    text = stream.getvalue()
    assert "\r" in text and "10/10" in text and "loss=0.2500" in text


def test_the_networks_own_defaults_are_what_train_builds(tmp_path):
    """One set of MLP defaults: ScoreMLP's (and ClassifierMLP's) are the tuned ones train() uses."""
    train(tmp_path / "run", steps=1, batch_size=8, progress=False)
    net = read_config(tmp_path / "run")["net"]
    assert net == scoresde.ScoreMLP().config()
    assert {k: net[k] for k in ("hidden", "depth", "time_dim", "time_features",
                                "time_scale")} == {"hidden": 128, "depth": 3, "time_dim": 64,
                                                   "time_features": "fourier",
                                                   "time_scale": 4.0}
    classifier = scoresde.ClassifierMLP(num_classes=3).config()
    assert all(classifier[k] == v for k, v in net.items() if k not in ("name", "num_classes",
                                                                         "embed_dim"))


def test_a_run_in_the_old_format_loads_and_resumes(tmp_path):
    """config.json as versions before objectives, label dropout, log-SNR shares and input
    features wrote it (the default 128 x 3 MLP stored in full), beside its checkpoint: load_run,
    train(resume=True) and `scoresde train --resume` read it as the run it was."""
    run = tmp_path / "old"
    opts = dict(data="moons", batch_size=32, progress=False, log_every=1)
    train(run, steps=2, **opts)
    config = make_old(run, ("objective", "label_dropout", "log_snr_share"),
             ("input_features", "input_scale"))
    model, _, loaded = load_run(run)
    assert loaded["objective"] == "score" and loaded["net"]["input_features"] == 0
    assert isinstance(model, scoresde.ScoreModel) and model.net.inp.in_features == 2
    train(run, steps=3, resume=True, **opts)
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 3
    (run / "config.json").write_text(json.dumps(config))  # the old format again
    result = invoke("train", "--resume", "--run", run, "--steps", 4, "--quiet")
    assert result.exit_code == 0, result.output
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 4
    new = read_config(run)
    assert new["log_every"] == 1 and new["data"] == "moons" and new["net"]["hidden"] == 128


def test_resume_with_fewer_steps_than_the_checkpoint_is_refused_and_keeps_the_run(tmp_path):
    # Before the fix, resuming a 4-step run with steps=2 "succeeded": it rewrote config.json with
    # steps=2 beside a checkpoint at step 4 and reported step 2 at a negative speed.
    run = tmp_path / "run"
    train(run, steps=4, **TINY)
    with pytest.raises(ValueError, match="step 4"):
        train(run, steps=2, resume=True, **TINY)
    assert read_config(run)["steps"] == 4
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 4


def test_a_fresh_run_does_not_append_to_metrics_of_an_attempt_without_checkpoint(tmp_path):
    # An attempt that died before its first checkpoint leaves config.json and metrics.jsonl; the
    # next train() into that folder starts afresh, but appended its records to the stale ones.
    run = tmp_path / "run"
    with pytest.raises(Interrupt):
        train(run, steps=6, checkpoint_every=5, callback=stop_at(3), **TINY)
    assert not (run / "checkpoint.pt").exists()
    train(run, steps=4, **TINY)
    steps = [json.loads(line)["step"] for line in open(run / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4]


def test_default_batch_size_depends_on_the_kind_of_data(tmp_path):
    # train(batch_size=None): 1024 points a step for vectors (tuned on the toys), 128 for images.
    opts = dict(steps=1, progress=False, checkpoint_every=1)
    train(tmp_path / "toy", data="8gaussians", net_params={"hidden": 16, "depth": 1}, **opts)
    train(tmp_path / "img", data="digits", **opts)
    batch = {k: read_config(tmp_path / k)["batch_size"] for k in ("toy", "img")}
    assert batch == {"toy": 1024, "img": 128}


@pytest.mark.slow  # torchrun and two ranks, twice
def test_the_command_under_torchrun_speaks_once_and_needs_a_run_folder(tmp_path):
    def train_under_torchrun(*args):
        return torchrun("train", "--steps", 2, "--batch-size", 8, "--width", 8, "--quiet", *args,
                        cwd=tmp_path)

    done = train_under_torchrun("--run", tmp_path / "run")  # "--": not torchrun's --run-path
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained 2 steps") == 1 and run_states(tmp_path / "run")["step"] == 2
    refused = train_under_torchrun()
    assert refused.returncode != 0 and "--run" in refused.stderr
    assert not (tmp_path / "runs").exists()
