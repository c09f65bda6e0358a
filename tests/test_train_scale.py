"""Training at scale: micro-batches, mixed precision, the gradient scaler, compilation, device-side
records and their non-finite checks, sample grids while training, the parameter count."""

import json
import os

import numpy as np
import pytest
import torch

import scoresde
import scoresde.loop
import scoresde.runs
import scoresde.training
from scoresde import load_run, train
from scoresde.runs import read_config

from problems import (TINY, Interrupt, assert_equal_states, assert_refused, invoke, make_old,
                      run_states, stop_at)

# A small U-Net on the 8x8 digits: a few seconds for tens of steps on one core.
DIGITS = dict(data="digits", batch_size=32, progress=False, log_every=1,
              net_params={"ch": 8, "ch_mult": [1, 2], "num_res_blocks": 1})


_BUILT = []  # the model of each train() call of a test, and its weights before training


@pytest.fixture(autouse=True)
def _spy_on_the_model(monkeypatch):
    """Lets a test reach the model that the loop trains, and its initial weights."""
    orig = scoresde.loop.build_parts

    def spy(*args, **kwargs):
        parts = orig(*args, **kwargs)
        initial = {k: v.clone() for k, v in parts.model.state_dict().items()}
        _BUILT.append({"model": parts.model, "initial": initial})
        return parts

    monkeypatch.setattr(scoresde.training, "build_parts", spy)
    yield
    _BUILT.clear()




def _metrics(run_dir):
    return [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]


def _max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)




# ----- micro-batches ------------------------------------------------------------------------------
@pytest.mark.parametrize("opts", [dict(TINY, lr=1e-2, warmup=1),
                                  dict(DIGITS, lr=2e-3, warmup=1, channels_last=True)],
                         ids=["mlp", "unet"])
def test_micro_batches_equal_the_whole_batch(tmp_path, opts):
    """Six steps with the batch of 32 whole, in micro-batches of 8 and of 12 (12 + 12 + 8, so a
    wrong weighting of unequal pieces would show). Only the order of float32 additions differs:
    the recorded losses and gradient norms agree to rtol 1e-5 (observed: ~1e-7, a few float32
    ulps), and weights of order 1 to atol 1e-5 after six Adam steps (observed: ~3e-7; each step
    adds a few ulps of 1.2e-7). Wrong weights of the pieces would change the gradient norm by
    percents, and the weights move by more than 1e-3 from their initial values."""
    runs = {bg: tmp_path / f"bg{bg}" for bg in (None, 8, 12)}
    for bg, run in runs.items():
        train(run, steps=6, batch_gpu=bg, **opts)
    whole = run_states(runs[None])
    for bg in (8, 12):
        split = run_states(runs[bg])
        assert _max_diff(whole["model"], split["model"]) < 1e-5
        assert _max_diff(whole["ema"], split["ema"]) < 1e-5
        for a, b in zip(_metrics(runs[None]), _metrics(runs[bg])):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
            assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
        assert torch.equal(whole["rng"]["data"], split["rng"]["data"])  # the same data stream
    assert _max_diff(whole["model"], _BUILT[-1]["initial"]) > 1e-3


def test_resume_with_micro_batches_and_bf16_is_bit_identical(tmp_path):
    opts = dict(DIGITS, steps=6, checkpoint_every=3, batch_gpu=6, precision="bf16",
                batch_size=16)
    train(tmp_path / "full", **opts)
    with pytest.raises(Interrupt):
        train(tmp_path / "cut", callback=stop_at(4), **opts)
    assert run_states(tmp_path / "cut")["step"] == 3
    train(tmp_path / "cut", resume=True, **opts)
    assert_equal_states(run_states(tmp_path / "full"), run_states(tmp_path / "cut"))
    config = read_config(tmp_path / "cut")
    assert config["precision"] == "bf16" and config["batch_gpu"] == 6
    # batch_gpu may change on resume (round-off only); the precision may not.
    train(tmp_path / "cut", **dict(opts, steps=7, batch_gpu=None), resume=True)
    with pytest.raises(ValueError, match="precision"):
        train(tmp_path / "cut", **dict(opts, steps=8, precision="fp32"), resume=True)


# ----- precision ----------------------------------------------------------------------------------
def test_bf16_on_the_cpu_trains_like_fp32(tmp_path):
    """20 steps of the digits U-Net in fp32 and in bf16 autocast on the same batches. bf16
    rounds each of the network's outputs to 8 significant bits (relative error 2^-9, about
    0.2%), and the loss adds up 64 pixels x 32 images of them, so its relative difference to
    fp32's is far below 1%: the bound asserted (observed: ~1e-4 over the last seven steps). The
    batch-to-batch noise of the loss is about 8%, so 1% still tells a trained bf16 run from an
    untrained one. Both fall: the mean of the last seven steps is below that of the first seven
    (by about 15%, twice the noise)."""
    for precision in ("fp32", "bf16"):
        train(tmp_path / precision, steps=20, lr=2e-3, warmup=5, precision=precision, **DIGITS)
    fp32, bf16 = ([r["loss"] for r in _metrics(tmp_path / p)] for p in ("fp32", "bf16"))
    assert fp32 != bf16  # bf16 did run: the losses differ in their low digits
    late32, late16 = np.mean(fp32[-7:]), np.mean(bf16[-7:])
    assert abs(late16 - late32) < 0.01 * late32
    assert late16 < np.mean(bf16[:7]) and late32 < np.mean(fp32[:7])
    assert all(torch.isfinite(v).all() and v.dtype == torch.float32
               for v in run_states(tmp_path / "bf16")["model"].values())


def test_fp16_on_the_cpu_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"\bprecision\b.*'fp16'.*\bCUDA\b"):
        train(tmp_path / "run", steps=2, precision="fp16", **TINY)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="precision"):
        train(tmp_path / "run", steps=2, precision="fp8", **TINY)


def _fp16_on_the_cpu(monkeypatch, init_scale):
    """fp16 with a gradient scaler on the CPU (torch has both; the library refuses the CPU
    only because it gains nothing there), the scaler starting at ``init_scale``."""
    monkeypatch.setattr(scoresde.training, "check_precision", lambda precision, device: None)

    def scaler(precision, device, state=None):
        out = torch.amp.GradScaler(device.type, init_scale=init_scale)
        if state is not None:
            out.load_state_dict(state)
        return out if precision == "fp16" else None

    monkeypatch.setattr(scoresde.loop, "grad_scaler", scaler)


def test_steps_the_scaler_skips_are_counted_not_stopped(tmp_path, monkeypatch):
    """Starting at a scale of 2^20, the float16 gradients of the first steps overflow (float16
    ends at 65504): the scaler skips those steps (weights unchanged) and halves its scale until
    they fit (here after three; 2^16 skips none). None of that is a non-finite-loss stop; the
    skips are counted in the records and the result, the scaler's state is in the checkpoint,
    the later steps train, and the run resumes bit-identically."""
    _fp16_on_the_cpu(monkeypatch, 2.0 ** 20)
    opts = dict(TINY, steps=8, checkpoint_every=4, log_every=2, precision="fp16")
    result = train(tmp_path / "full", **opts)
    records = _metrics(tmp_path / "full")
    skipped = [r["skipped_steps"] for r in records]
    assert result["skipped_steps"] == sum(skipped) and 0 < sum(skipped) < 8
    assert skipped[0] > 0 and skipped[-1] == 0
    state = run_states(tmp_path / "full")
    assert state["scaler"]["scale"] < 2.0 ** 20
    assert _max_diff(state["model"], _BUILT[0]["initial"]) > 1e-4
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    with pytest.raises(Interrupt):
        train(tmp_path / "cut", callback=stop_at(6), **opts)
    train(tmp_path / "cut", resume=True, **opts)
    assert_equal_states(state, run_states(tmp_path / "cut"))
    assert run_states(tmp_path / "cut")["scaler"] == state["scaler"]


def test_a_real_nan_with_a_scaler_still_stops(tmp_path, monkeypatch):
    _fp16_on_the_cpu(monkeypatch, 2.0 ** 16)
    with pytest.raises(FloatingPointError, match=r"\bloss\b.*\bstep 4\b"):
        train(tmp_path / "run", steps=6, callback=_poison_after(3), precision="fp16",
              **dict(TINY, log_every=5), checkpoint_every=2)
    state = run_states(tmp_path / "run")
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_weights_made_non_finite_between_records_are_never_checkpointed(tmp_path):
    """A callback that spoils the weights right after a finite step, just before its
    checkpoint: the weights are checked before writing, and no checkpoint of them exists."""
    with pytest.raises(FloatingPointError, match=r"\bweights\b.*\bstep 4\b"):
        train(tmp_path / "run", steps=8, checkpoint_every=4, callback=_poison_after(4),
              **dict(TINY, log_every=100))
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


# ----- non-finite values, read from the device only at records --------------------------------
def _poison_after(step):
    """A callback that fills the trained weights with NaN once ``step`` is done."""
    def callback(done, record):
        if done == step:
            with torch.no_grad():
                for p in _BUILT[-1]["model"].parameters():
                    p.fill_(float("nan"))
    return callback


@pytest.mark.parametrize("log_every, stop", [(3, 9), (100, 10)])
def test_a_non_finite_loss_stops_naming_its_step_before_any_checkpoint_of_it(tmp_path,
                                                                             log_every, stop):
    """The weights turn NaN after step 7, so step 8's loss is NaN. The loop reads the device
    at records (every log_every steps) and before each checkpoint (every 5): it stops at the
    first of those after step 8 (step 9's record, or step 10's checkpoint, which is then never
    written), naming step 8; the checkpoint of step 5 is kept, finite."""
    with pytest.raises(FloatingPointError, match=rf"\bloss\b.*\bstep 8\b.*\bstep {stop}\b"):
        train(tmp_path / "run", steps=12, checkpoint_every=5, callback=_poison_after(7),
              **dict(TINY, log_every=log_every))
    state = run_states(tmp_path / "run")
    assert state["step"] == 5 and all(torch.isfinite(v).all() for v in state["model"].values())
    if log_every == 3:
        assert [r["step"] for r in _metrics(tmp_path / "run")] == [3, 6]  # none of step 9


def test_a_non_finite_gradient_norm_stops_too():
    """Inf gradients with a finite loss (no scaler) would turn the weights into NaN: the first
    such step is named (the recorder's logic, on made-up values)."""
    proc = scoresde.loop.Process(0, 1, torch.device("cpu"), "RUN")
    opts = scoresde.config.TrainConfig.of(steps=10, log_every=100)
    recorder = scoresde.loop._Recorder(opts, proc, 0, 0.0, None, False)
    one = torch.tensor(1.0)
    recorder.record(1, one, 1e-3, one, None)
    recorder.settle(1)
    recorder.record(2, one, 1e-3, torch.tensor(float("inf")), None)
    recorder.record(3, torch.tensor(float("nan")), 1e-3, one, None)
    with pytest.raises(FloatingPointError, match=r"gradient norm\b.*\bstep 2\b.*\bstep 3\b"):
        recorder.settle(3)
    scaled = scoresde.loop._Recorder(opts, proc, 0, 0.0, None, False, scaled=True)
    scaled.record(1, one, 1e-3, torch.tensor(float("inf")), torch.tensor(1))
    scaled.settle(1)  # the scaler's skip, not a stop
    assert int(scaled.skipped) == 1


# ----- compilation --------------------------------------------------------------------------------
def test_a_platform_that_cannot_compile_gets_one_clear_line(tmp_path, monkeypatch):
    import torch._dynamo.exc as dynamo

    def refuses(module):
        raise RuntimeError("Windows not yet supported for torch.compile\nmore detail")

    monkeypatch.setattr(torch, "compile", refuses)
    with pytest.raises(RuntimeError, match=r"\bcompile=True\b.*Windows not yet supported") \
            as err:
        train(tmp_path / "a", steps=2, compile=True, **TINY)
    assert "more detail" not in str(err.value)  # the cause's first line only

    class FailsAtFirstCall(torch.nn.Module):  # what torch.compile gives: fails when first run
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args, **kwargs):
            raise dynamo.InternalTorchDynamoError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", FailsAtFirstCall)
    with pytest.raises(RuntimeError, match=r"\bcompile=True\b.*no C\+\+ compiler found"):
        train(tmp_path / "b", steps=2, compile=True, **TINY)
    assert not (tmp_path / "b" / "checkpoint.pt").exists()
    result = invoke("train", "--data", "moons", "--steps", 2, "--compile", "--quiet", "--run",
                    tmp_path / "c")
    assert_refused(result, 1, "compile", "no C++ compiler found")
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_a_compiled_run_trains_and_saves_the_plain_modules_weights(tmp_path):
    """torch.compile (inductor, about 10 s on this machine) gives the eager run's weights up to
    the round-off of fused kernels, and the checkpoint holds the uncompiled module's names."""
    opts = dict(TINY, steps=3, lr=1e-2, warmup=1)
    train(tmp_path / "eager", **opts)
    train(tmp_path / "compiled", compile=True, **opts)
    a, b = run_states(tmp_path / "eager"), run_states(tmp_path / "compiled")
    assert a["model"].keys() == b["model"].keys() and a["ema"].keys() == b["ema"].keys()
    assert not any("_orig_mod" in k for k in b["model"])
    assert _max_diff(a["model"], b["model"]) < 1e-5
    load_run(tmp_path / "compiled")


# ----- sample grids, the parameter count, the CLI -------------------------------------------------
def test_sample_grids_are_written_and_leave_training_alone(tmp_path):
    """Grids every 2 steps (and at the last) from the EMA weights; the trained weights, the
    data stream and torch's own random state after training equal those of a run without them,
    also when the run with grids was interrupted and resumed."""
    opts = dict(TINY, steps=5, checkpoint_every=2)
    train(tmp_path / "plain", **opts)
    with pytest.raises(Interrupt):
        train(tmp_path / "grids", sample_every=2, callback=stop_at(3), **opts)
    train(tmp_path / "grids", sample_every=2, resume=True, **opts)
    assert_equal_states(run_states(tmp_path / "plain"), run_states(tmp_path / "grids"))
    names = sorted(os.listdir(tmp_path / "grids" / "samples"))
    assert names == ["step_000002.png", "step_000004.png", "step_000005.png"]
    assert all((tmp_path / "grids" / "samples" / n).read_bytes()[:4] == b"\x89PNG" for n in names)
    train(tmp_path / "digits", steps=2, sample_every=2, **DIGITS)
    assert (tmp_path / "digits" / "samples" / "step_000002.png").stat().st_size > 1000
    np.save(tmp_path / "vectors.npy", np.random.default_rng(0).normal(size=(50, 3)))
    with pytest.raises(ValueError, match=r"\bsample_every\b.*\(3,\)"):
        train(tmp_path / "v", steps=2, sample_every=2, **dict(TINY, data=tmp_path / "vectors.npy"))


def test_the_parameter_count_is_in_the_config(tmp_path):
    train(tmp_path / "run", steps=1, **DIGITS)
    model, _, config = load_run(tmp_path / "run")
    assert config["num_params"] == sum(p.numel() for p in model.parameters()) > 1000


def test_runs_from_before_these_options_load_and_resume(tmp_path):
    run = tmp_path / "old"
    train(run, steps=2, **TINY)
    make_old(run, ("precision", "batch_gpu", "compile", "channels_last", "sample_every",
                   "num_params"))
    assert load_run(run)[2]["precision"] == "fp32"
    train(run, steps=3, resume=True, **TINY)
    assert run_states(run)["step"] == 3


def test_the_cli_options(tmp_path):
    import click

    from scoresde.cli import main
    from scoresde.config import option_default

    with click.Context(main.commands["train"]) as ctx:  # the flags' "off" is the library's
        for param in main.commands["train"].params:
            if param.name in ("compile_", "channels_last", "batch_gpu", "sample_every"):
                assert param.get_default(ctx) == option_default(param.name.rstrip("_"))
    run = tmp_path / "run"
    result = invoke("train", "--data", "moons", "--steps", 2, "--batch-size", 16, "--quiet",
                    "--precision", "bf16", "--batch-gpu", 4, "--sample-every", 2,
                    "--channels-last", "--run", run)
    assert_refused(result, 2, "channels_last", "'moons'")
    result = invoke("train", "--data", "moons", "--steps", 2, "--batch-size", 16, "--quiet",
                    "--precision", "bf16", "--batch-gpu", 4, "--sample-every", 2, "--run", run)
    assert result.exit_code == 0, result.output
    config = read_config(run)
    assert (config["precision"], config["batch_gpu"], config["sample_every"],
            config["compile"]) == ("bf16", 4, 2, False)
    # On resume the run's own options, unless given again.
    assert invoke("train", "--resume", "--run", run, "--steps", 3, "--quiet").exit_code == 0
    config = read_config(run)
    assert (config["precision"], config["batch_gpu"], config["sample_every"]) == ("bf16", 4, 2)
    assert invoke("train", "--resume", "--run", run, "--steps", 4, "--batch-gpu", 8,
                  "--quiet").exit_code == 0
    assert read_config(run)["batch_gpu"] == 8
    for bad, facts in [(["--batch-gpu", 0], ["--batch-gpu", "0"]),
                       (["--precision", "fp8"], ["--precision", "'fp8'"]),
                       (["--sample-every", "x"], ["--sample-every", "'x'"]),
                       (["--precision", "fp16"], ["'fp16'", "CUDA"])]:
        result = invoke("train", "--steps", 1, "--quiet", "--run", tmp_path / "bad", *bad)
        assert_refused(result, 2, *facts)


def test_training_steps_leave_times_and_labels_unread_on_the_host(tmp_path, monkeypatch):
    """The loop's times and labels are valid by construction, so the checks that would make a
    GPU wait (reading them back) are skipped inside its steps, and only there."""
    import scoresde.sde
    from scoresde.checks import trusted_values, values_trusted
    from scoresde.labels import check_labels

    seen, real = [], scoresde.sde._check_times
    monkeypatch.setattr(scoresde.sde, "_check_times",
                        lambda t, T: (seen.append(values_trusted()), real(t, T)))
    train(tmp_path / "run", data="8gaussians", conditional=True, steps=2, batch_size=16,
          net_params={"hidden": 16, "depth": 1}, progress=False)
    assert seen and all(seen) and not values_trusted()
    sde, x = scoresde.get_sde("vp"), torch.zeros(2, 2)
    with pytest.raises(ValueError, match=r"^t\b.*\[0, 1\].*\b2\b"):
        sde.check_time(torch.tensor([0.5, 2.0]), x)
    with pytest.raises(ValueError, match=r"^labels\b.*\[0, 8\).*\b9\b"):
        check_labels(torch.tensor([0, 9]), 2, num_classes=8)
    with trusted_values():
        sde.check_time(torch.tensor([0.5, 2.0]), x)
        check_labels(torch.tensor([0, 9]), 2, num_classes=8)
