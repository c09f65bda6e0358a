"""Cascaded diffusion: a base model at 4x4 and a super-resolution model 4x4 -> 8x8.

Conditioning augmentation is a fact about what the network sees: in training, the
low-resolution image noised at a level drawn per sample (and that level); at sampling, the
clean upsampled base samples unless a level is asked for. The runs train a few steps only: these
tests are about plumbing, not quality (BENCHMARKS.md measures that).
"""

import functools
import json
import os
import sys

import numpy as np
import pytest
import torch

from scoresde import UNet, load_run, train
from scoresde.cascade import cascade, low_res_condition
from scoresde.images import downsample, upsample
from scoresde.runs import read_config

from problems import assert_refused, invoke

IMAGE = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(0)).clamp(-2, 2)
TINY = dict(batch_size=64, net_params={"ch": 8, "num_res_blocks": 1}, progress=False,
            sigma_data=0.5)


@pytest.fixture(scope="module")
def same(tmp_path_factory):
    """A data set of one image repeated: every clean condition is up(down(IMAGE))."""
    root = tmp_path_factory.mktemp("cascade")
    np.save(root / "same.npy", IMAGE.expand(40, 1, 8, 8).numpy().astype(np.float32))
    return root


@pytest.fixture
def seen(monkeypatch):
    """The conditions ``y`` every UNet receives, in call order."""
    calls = []
    forward = UNet.forward

    def spy(self, x, c_noise, y=None):
        calls.append(None if y is None else y.detach().clone())
        return forward(self, x, c_noise, y)

    monkeypatch.setattr(UNet, "forward", spy)
    return calls


def _noise_to_level(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(levels (B,), noise (B, 16))``: the level channel, and the condition's low-res
    deviation from the clean IMAGE (nearest upsampling: block means recover it exactly)."""
    clean = downsample(IMAGE[None], 2)
    return y[:, -1, 0, 0], (downsample(y[:, :1], 2) - clean).flatten(1)


@pytest.mark.slow
def test_training_noises_the_condition_at_a_level_drawn_per_sample(same, seen, tmp_path):
    train(tmp_path / "aug", data=same / "same.npy", super_res=2, cond_aug=0.5, steps=2, **TINY)
    y = torch.cat(seen)
    assert y.shape[1:] == (2, 8, 8)
    level, noise = _noise_to_level(y)
    assert (y[:, -1] == level[:, None, None]).all()  # one level per sample, given as a channel
    assert level.min() >= 0 and level.max() <= 0.5 and level.std() > 0.1  # U[0, 0.5]: 0.144
    # noise = level * N(0, I): the pooled ratio of 128 x 16 squares is 1 within ~4% (1 sd)
    ratio = noise.pow(2).sum() / (16 * level.pow(2)).sum()
    assert 0.85 < ratio < 1.15
    seen.clear()
    train(tmp_path / "plain", data=same / "same.npy", super_res=2, cond_aug=0.0, steps=2, **TINY)
    level, noise = _noise_to_level(torch.cat(seen))
    assert (level == 0).all() and noise.abs().max() < 1e-6


def test_sampling_conditions_on_the_clean_base_samples_unless_asked(same, seen, tmp_path):
    train(tmp_path / "base", data=same / "same.npy", downsample=2, steps=2, **TINY)
    train(tmp_path / "sr", data=same / "same.npy", super_res=2, cond_aug=0.5, steps=2, **TINY)
    base, base_sde, base_config = load_run(tmp_path / "base")
    sr, sr_sde, _ = load_run(tmp_path / "sr")
    assert base_config["data_shape"] == [1, 4, 4] and sr.cond_channels == 1
    for level in (0.0, 0.3):
        seen.clear()
        with torch.no_grad():
            x, info = cascade(base, base_sde, sr, sr_sde, 32, solver="euler", steps=3,
                              sr_solver="heun", sr_steps=2, aug_level=level,
                              generator=torch.Generator().manual_seed(0))
        assert x.shape == (32, 1, 8, 8) and info["nfe"] == info["base"]["nfe"] + info["sr"]["nfe"]
        conds = [y for y in seen if y is not None]
        assert len(conds) == info["sr"]["nfe"]  # every SR call is conditioned, on the same y
        assert all(torch.equal(y, conds[0]) for y in conds)
        up = upsample(info["low_res"], 2)
        if level == 0:
            assert torch.equal(conds[0], low_res_condition(info["low_res"], 2, torch.zeros(32)))
            assert torch.equal(conds[0][:, :1], up)
        else:
            assert (conds[0][:, -1] == level).all()
            dev = (conds[0][:, :1] - up)[:, :, ::2, ::2].flatten()  # one entry per block
            assert abs(float(dev.std()) / level - 1) < 0.15  # 512 draws: sd of the ratio ~3%


@pytest.mark.slow
def test_cli_trains_a_digits_cascade_and_samples_it(tmp_path, monkeypatch):
    common = ("--data", "digits", "--steps", 3, "--batch-size", 16, "--quiet")
    result = invoke("train", *common, "--downsample", 2, "--run", tmp_path / "base")
    assert result.exit_code == 0, result.output
    result = invoke("train", *common, "--super-res", 2, "--cond-aug", 0.3,
                    "--run", tmp_path / "sr")
    assert result.exit_code == 0, result.output
    config = read_config(tmp_path / "sr")
    assert config["super_res"] == 2 and config["cond_aug"] == 0.3
    assert config["net"]["cond_channels"] == 1
    out = tmp_path / "c.npz"
    result = invoke("sample", "--cascade", tmp_path / "base", tmp_path / "sr", "--solver",
                    "euler", "--steps", 4, "--sr-solver", "dpmpp_2m", "--sr-steps", 3,
                    "--n", 6, "--out", out, "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["nfe"] == record["nfe_base"] + record["nfe_sr"]
    # The default file name holds each stage's solver and steps: other SR options, another file.
    result = invoke("sample", "--cascade", tmp_path / "base", tmp_path / "sr", "--solver",
                    "euler", "--steps", 2, "--sr-steps", 3, "--aug-level", 0.1, "--n", 2,
                    "--json")
    assert result.exit_code == 0, result.output
    name = os.path.basename(json.loads(result.output)["out"])
    assert name.startswith("cascade-euler-2-sr-euler-3-aug0.1-n2-seed0-")
    with np.load(out) as f:
        assert f["samples"].shape == (6, 1, 8, 8) and f["low_res"].shape == (6, 1, 4, 4)
    # Chunk by chunk, as `sample`: chunk k from (seed, k), and a run stopped after its first
    # chunk continues to the file the uninterrupted command writes.
    chunked = ("sample", "--cascade", tmp_path / "base", tmp_path / "sr", "--solver", "euler",
               "--steps", 4, "--n", 6, "--batch-size", 4, "--json")
    straight = invoke(*chunked, "--out", tmp_path / "straight.npz")
    assert straight.exit_code == 0, straight.output
    assert json.loads(straight.output)["chunks"] == 2
    module = sys.modules["scoresde.tasks.cascades"]  # the cascade draw calls its `cascade`
    calls, draw = [], module.cascade

    @functools.wraps(draw)  # its signature too: the CLI's defaults read it
    def stop_at_the_second_chunk(*args, **kwargs):
        calls.append(args[4])
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a kill between chunks
        return draw(*args, **kwargs)

    monkeypatch.setattr(module, "cascade", stop_at_the_second_chunk)
    cut = tmp_path / "cut.npz"
    assert invoke(*chunked, "--out", cut).exit_code != 0 and not cut.exists()
    monkeypatch.setattr(module, "cascade", draw)
    again = invoke(*chunked, "--out", cut)
    assert again.exit_code == 0 and json.loads(again.output)["chunks_reused"] == 1
    assert calls == [4, 2]
    with np.load(tmp_path / "straight.npz") as a, np.load(cut) as b:
        assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
    # Chunks whose score calls differ (as an adaptive ode's do): the record's total is the sum of
    # its two stages' means, as the line printed says, "NFE 40.4 (20.2 + 20.2)".
    chunk_nfe = iter([21, 20, 20, 20])

    @functools.wraps(draw)
    def adaptive(*args, **kwargs):
        x, info = draw(*args, **kwargs)
        calls = next(chunk_nfe)
        info["base"], info["sr"] = dict(info["base"], nfe=calls), dict(info["sr"], nfe=calls)
        return x, dict(info, nfe=2 * calls)

    monkeypatch.setattr(module, "cascade", adaptive)
    varied = invoke(*chunked[:-5], "--n", 8, "--batch-size", 2, "--out", tmp_path / "v.npz")
    monkeypatch.setattr(module, "cascade", draw)
    assert varied.exit_code == 0, varied.output
    assert "NFE 40.4 (20.2 + 20.2)" in varied.stdout, varied.stdout
    for args in (("--cascade", tmp_path / "sr", tmp_path / "base"),  # swapped
                 ("--run", tmp_path / "sr"),  # an SR run alone has no condition
                 ("--cascade", tmp_path / "base", tmp_path / "sr", "--label", 1)):
        result = invoke("sample", *args, "--steps", 2, "--n", 2, "--out", tmp_path / "x.npz")
        assert result.exit_code != 0 and "Traceback" not in result.output
        assert result.output.startswith("Error")
    # A base at 2x2 gives the 4x4 -> 8x8 model a condition of another scale: refused.
    result = invoke("train", *common, "--downsample", 4, "--run", tmp_path / "base2")
    assert result.exit_code == 0, result.output
    for base, facts in ((tmp_path / "base2", [tmp_path / "sr", tmp_path / "base2", "2x2"]),
                        (tmp_path / "sr", [tmp_path / "sr"])):  # the base is an SR run
        result = invoke("sample", "--cascade", base, tmp_path / "sr", "--steps", 2, "--n", 2,
                        "--out", tmp_path / "x.npz")
        assert_refused(result, 2, "--cascade", *facts)
        assert not (tmp_path / "x.npz").exists()
    # A base run on 2D points is no stage of a cascade: a usage error, not an IndexError.
    result = invoke("train", "--steps", 2, "--batch-size", 8, "--width", 8, "--quiet", "--run",
                    tmp_path / "points")
    assert result.exit_code == 0, result.output
    result = invoke("sample", "--cascade", tmp_path / "points", tmp_path / "sr", "--steps", 2,
                    "--n", 2, "--out", tmp_path / "x.npz")
    assert_refused(result, 2, "--cascade", tmp_path / "points", "(2,)")


def test_bad_super_res_options_are_one_line(same, tmp_path):
    with pytest.raises(ValueError, match=r"\bsuper_res=3\b"):
        train(tmp_path / "a", data=same / "same.npy", super_res=3, steps=1, **TINY)
    with pytest.raises(ValueError, match="conditional"):
        train(tmp_path / "b", data="digits", super_res=2, conditional=True, steps=1, **TINY)
    with pytest.raises(ValueError, match="downsample"):
        train(tmp_path / "c", data="moons", downsample=2, steps=1, **TINY)
