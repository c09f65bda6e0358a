"""score_sde_pytorch's checkpoints: our networks give the reference's outputs and scores.

The fixtures (tests/data/score_sde_*_small.pt) hold the reference's own network of a shrunk
VP DDPM++ and VE NCSN++ config with random weights, as its checkpoint (DataParallel names, an
EMA unlike the raw weights), fixed inputs, its outputs and its ``get_score_fn`` scores, all
computed by the reference code on the CPU (tools/score_sde_fixtures.py; BENCHMARKS.md). The
tolerance is float32 round-off: 1e-5 of each sample's largest entry (the differences measured
are below 1e-6; a swapped or missing tensor moves outputs by order one).
"""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from problems import assert_refused, invoke
from scoresde import SCORE_SDE_CONFIGS, convert_score_sde, from_score_sde, load_run
from scoresde.convert import pixel_scale
from scoresde.data import load_run_array
from scoresde.models import DDPMpp, build_net, resolve_net
from scoresde.models.resample import fir_downsample, fir_kernel, fir_upsample
from scoresde.models.score_sde import reference_names
from scoresde.hardware import count_params

DATA = Path(__file__).parent / "data"
CASES = {"vp": ("score_sde_vp_ddpmpp_small", "small_ddpmpp_continuous"),
         "ve": ("score_sde_ve_ncsnpp_small", "small_ncsnpp_continuous")}


def _fixture(kind):
    return torch.load(DATA / f"{CASES[kind][0]}.pt", weights_only=True)


def _close(ours, ref, rtol=1e-5):
    """Equal up to ``rtol`` of each sample's largest entry."""
    scale = ref.abs().flatten(1).amax(1)
    err = (ours - ref).abs().flatten(1).amax(1)
    assert (err <= rtol * scale).all(), (err / scale).tolist()


def _network_output(model, fixture, kind):
    """Our network's output where the reference's network was called: at ``999 t`` (VP), or
    at ``log sigma`` with the reference's division by sigma (VE), on its input scale."""
    x, t, labels = fixture["x"], fixture["t"], fixture["labels"]
    with torch.no_grad():
        if kind == "vp":
            return model.net(x, 999 * t)
        return model.net(2 * x - 1, labels.log()) / labels[:, None, None, None]


@pytest.mark.parametrize("kind", ["vp", "ve"])
def test_network_and_score_equal_the_reference(kind):
    fixture = _fixture(kind)
    model, sde = from_score_sde(fixture["checkpoint"], CASES[kind][1])
    _close(_network_output(model, fixture, kind), fixture["output"])
    with torch.no_grad():
        _close(model(fixture["x"], fixture["t"]), fixture["score"])
    assert sde.config()["name"] == kind


def test_the_ema_weights_are_taken_unless_asked_otherwise():
    """The network holds the EMA's averages (the reference's order of trainable parameters);
    with ``ema=False`` the raw weights, which give other outputs."""
    fixture = _fixture("ve")
    ckpt = fixture["checkpoint"]
    names = list(reference_names(from_score_sde(ckpt, CASES["ve"][1])[0].net).items())
    trainable = [(ref, ours) for ref, (ours, grad) in names if grad]
    averaged = from_score_sde(ckpt, CASES["ve"][1])[0].net.state_dict()
    raw = from_score_sde(ckpt, CASES["ve"][1], ema=False)[0].net.state_dict()
    for (ref, ours), shadow in zip(trainable, ckpt["ema"]["shadow_params"], strict=True):
        assert torch.equal(averaged[ours], shadow)
        assert torch.equal(raw[ours], ckpt["model"][f"module.{ref}"])
        assert not torch.equal(raw[ours], shadow)
    fixed = [ours for _, (ours, grad) in names if not grad]
    assert fixed == ["time.W"] and torch.equal(averaged["time.W"], raw["time.W"])


def test_a_bare_state_dict_file_loads(tmp_path):
    """The ``model`` state dict alone, in a file without the DataParallel prefix: raw weights."""
    fixture = _fixture("vp")
    bare = {k.removeprefix("module."): v for k, v in fixture["checkpoint"]["model"].items()}
    torch.save(bare, tmp_path / "bare.pt")
    model, _ = from_score_sde(tmp_path / "bare.pt", CASES["vp"][1])
    ref, _ = from_score_sde(fixture["checkpoint"], CASES["vp"][1], ema=False)
    x, t = fixture["x"], fixture["t"]
    with torch.no_grad():
        assert torch.equal(model(x, t), ref(x, t))


def _convert_fails(tmp_path, checkpoint, config, match):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=match):
        convert_score_sde(checkpoint, config, out)
    assert not out.exists()


def test_another_architecture_is_one_error_naming_tensors(tmp_path):
    ckpt = _fixture("vp")["checkpoint"]
    _convert_fails(tmp_path, ckpt, "small_ncsnpp_continuous",
                   r"\bsmall_ncsnpp_continuous\b.*\ball_modules\.0\.W\b")
    _convert_fails(tmp_path, _fixture("ve")["checkpoint"], "small_ddpmpp_continuous",
                   r"\bsmall_ddpmpp_continuous\b.*\ball_modules\.0\.weight\b.*"
                   r"\ball_modules\.0\.W\b")  # a tensor missing, one unexpected


def test_a_missing_or_misshaped_tensor_is_named(tmp_path):
    ckpt = _fixture("vp")["checkpoint"]
    model = dict(ckpt["model"])
    del model["module.all_modules.5.Conv_1.bias"]
    _convert_fails(tmp_path, dict(ckpt, model=model), "small_ddpmpp_continuous",
                   r"\b1\b.*\(all_modules\.5\.Conv_1\.bias\)")
    model = dict(ckpt["model"], **{"module.all_modules.5.Conv_1.bias": torch.zeros(3)})
    _convert_fails(tmp_path, dict(ckpt, model=model), "small_ddpmpp_continuous",
                   r"\ball_modules\.5\.Conv_1\.bias\b.*\(3,\).*\(16,\)")
    _convert_fails(tmp_path, dict(ckpt, ema={"decay": 0.999}), "small_ddpmpp_continuous",
                   r"'ema'.*\bscore_sde_pytorch\b")
    shadow = ckpt["ema"]["shadow_params"][:-1]
    _convert_fails(tmp_path, dict(ckpt, ema=dict(ckpt["ema"], shadow_params=shadow)),
                   "small_ddpmpp_continuous", rf"\bEMA\b.*\b{len(shadow)}\b")


def test_a_truncated_file_an_unknown_config_or_not_a_checkpoint_is_one_error(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save(_fixture("vp")["checkpoint"], path)
    (tmp_path / "cut.pth").write_bytes(path.read_bytes()[:5000])
    _convert_fails(tmp_path, tmp_path / "cut.pth", "small_ddpmpp_continuous",
                   re.escape(str(tmp_path / "cut.pth")))
    _convert_fails(tmp_path, path, "cifar10_ddpm",
                   r"'cifar10_ddpm'.*\bcifar10_ddpmpp_continuous\b")  # the name, the choices
    torch.save({"step": 3}, tmp_path / "other.pth")
    _convert_fails(tmp_path, tmp_path / "other.pth", "small_ddpmpp_continuous",
                   r"other\.pth.*\bscore_sde_pytorch\b.*'model'")


SHAPES = "score_sde_cifar10_shapes.json"  # the reference's CIFAR-10 configs, by name


def _shape_list(config):
    """``{name: shape}`` of the reference's tensors of ``config`` (its noise levels aside)."""
    record = json.loads((DATA / SHAPES).read_text())[config]
    return {k: v for k, v in record["tensors"] if k != "sigmas"}


def _our_names(config):
    spec = SCORE_SDE_CONFIGS[config]
    name, params = resolve_net(spec["net"])
    net = build_net({"name": name, "event_shape": spec["shape"], **params})
    shapes = {k: list(v.shape) for k, v in net.state_dict().items()}
    return {ref: shapes[ours] for ref, (ours, _) in reference_names(net).items()}


def test_cifar10_ncsnpp_maps_name_by_name_onto_the_reference():
    """Every tensor name of the reference's CIFAR-10 NCSN++ cont. has ours, of its shape
    (the lists were written from the reference by tools/score_sde_fixtures.py)."""
    config = "cifar10_ncsnpp_continuous"
    assert _our_names(config) == _shape_list(config)
    record = json.loads((DATA / SHAPES).read_text())[config]
    name, params = resolve_net("ncsnpp_cifar10")
    net = build_net({"name": name, "event_shape": [3, 32, 32], **params})
    assert count_params(net) == record["num_parameters"] == 62_758_787


def test_ncsnpp_keywords_are_checked_and_kept_in_the_config():
    """The NCSN++ options: the pyramid needs a filter, taps are checked, and ``config()``
    rebuilds the same network (a run's config.json keeps them)."""
    kw = dict(event_shape=(3, 16, 16), nf=8, ch_mult=(1, 2), num_res_blocks=1,
              attn_resolutions=(8,))
    with pytest.raises(ValueError, match=r"\bprogressive_input='residual'.*\bfir_kernel\b"):
        DDPMpp(**kw, progressive_input="residual")
    with pytest.raises(ValueError, match=r"\bprogressive_input\b.*'output_skip'.*\bnone, "
                                         r"residual\b"):
        DDPMpp(**kw, fir_kernel=[1, 3, 3, 1], progressive_input="output_skip")
    for bad in ([1, -1], 3, "13", [[1, 3], [3, 1]]):
        with pytest.raises(ValueError, match=r"^fir_kernel\b"):
            DDPMpp(**kw, fir_kernel=bad)
    net = DDPMpp(**kw, fir_kernel=[1, 3, 3, 1], progressive_input="residual")
    again = build_net(net.config())
    assert net.config()["fir_kernel"] == [1.0, 3.0, 3.0, 1.0]
    assert [t.shape for t in again.state_dict().values()] == [
        t.shape for t in net.state_dict().values()]


@pytest.mark.slow
def test_cifar10_ddpmpp_and_the_deep_variants_map_name_by_name():
    for config in ("cifar10_ncsnpp_deep_continuous", "cifar10_ddpmpp_continuous",
                   "cifar10_ddpmpp_deep_continuous"):
        assert _our_names(config) == _shape_list(config)


def test_fir_resampling_keeps_constants_and_box_taps_are_nearest_and_average():
    """[1, 3, 3, 1] keeps a constant image constant away from the border; taps [1, 1] are
    nearest-neighbour upsampling and 2x2 averaging."""
    k = fir_kernel([1, 3, 3, 1])
    ones = torch.ones(1, 2, 8, 8)
    assert torch.allclose(fir_upsample(ones, k)[..., 2:-2, 2:-2], torch.ones(1, 2, 12, 12))
    assert torch.allclose(fir_downsample(ones, k)[..., 1:-1, 1:-1], torch.ones(1, 2, 2, 2))
    x = torch.randn(2, 3, 4, 6)
    box = fir_kernel([1, 1])
    assert torch.equal(fir_upsample(x, box), x.repeat_interleave(2, 2).repeat_interleave(2, 3))
    assert torch.allclose(fir_downsample(x, box), torch.nn.functional.avg_pool2d(x, 2))
    with pytest.raises(ValueError, match=r"^fir_kernel\b"):
        fir_kernel([1])


def test_the_pixel_scales_dequantise_as_the_reference():
    """The reference measures bits/dim on (p + u) / 256 in [0, 1] (or 2 (p + u) / 256 - 1): the
    bins of the converted runs' scales span exactly [0, 1] and [-1, 1]."""
    for centered, span in ((True, (-1.0, 1.0)), (False, (0.0, 1.0))):
        px = pixel_scale(centered)
        lo = (-0.5 - px["raw_offset"]) / px["raw_scale"]
        hi = (2 ** px["pixel_bits"] - 0.5 - px["raw_offset"]) / px["raw_scale"]
        assert (lo, hi) == span


def test_images_given_to_a_converted_run_come_on_its_scale(tmp_path):
    """8-bit --data for likelihood: level p is (p - 127.5) / 128 on a centred run (as on our
    own runs) and (p + 0.5) / 256 on a [0, 1] one, the centres of the reference's bins."""
    levels = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    np.save(tmp_path / "levels.npy", levels)
    p = torch.arange(256.0).reshape(1, 1, 16, 16)
    for centered, expected in ((True, (p - 127.5) / 128), (False, (p + 0.5) / 256)):
        x = load_run_array(tmp_path / "levels.npy", pixel_scale(centered))
        assert torch.equal(x, expected)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vp", "ve"])
def test_convert_then_sample_and_likelihood_through_the_cli(kind, tmp_path):
    fixture = _fixture(kind)
    path, run = tmp_path / "ckpt.pth", tmp_path / "run"
    torch.save(fixture["checkpoint"], path)
    result = invoke("convert", path, "--from", "score_sde", "--config", CASES[kind][1],
                    "--out", run, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["sde"] == kind
    model, _, config = load_run(run)  # the run's model is the reference's score
    with torch.no_grad():
        _close(model(fixture["x"], fixture["t"]), fixture["score"])
    result = invoke("sample", "--run", run, "--solver", "euler", "--steps", 3, "--n", 2,
                    "--out", tmp_path / "s.npz", "--json")
    assert result.exit_code == 0, result.output
    samples = np.load(tmp_path / "s.npz")["samples"]
    assert samples.shape == (2, *config["data_shape"]) and np.isfinite(samples).all()
    levels = np.random.default_rng(0).integers(0, 256, (2, *config["data_shape"]), np.uint8)
    np.save(tmp_path / "images.npy", levels)
    result = invoke("likelihood", "--run", run, "--data", tmp_path / "images.npy", "--n", 2,
                    "--divergence", "hutchinson", "--rtol", 0.1, "--atol", 0.1, "--json")
    assert result.exit_code == 0, result.output
    assert math.isfinite(json.loads(result.output)["bits_per_dim"])
    result = invoke("fid", "--run", run, "--n", 10_000)  # no data of its own to compare with
    assert_refused(result, 2, "--samples", "--data")  # the form that measures such a run


def test_cli_bad_inputs_are_one_line_and_write_nothing(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save(_fixture("vp")["checkpoint"], path)
    cases = [([path, "--config", "nope"], ["--config", "'nope'"]),
             ([tmp_path / "absent.pth", "--config", "small_ddpmpp_continuous"],
              [tmp_path / "absent.pth"]),
             ([path, "--config", "small_ncsnpp_continuous"], ["small_ncsnpp_continuous"])]
    for args, facts in cases:
        result = invoke("convert", *args, "--from", "score_sde", "--out", tmp_path / "run")
        assert_refused(result, 2, *facts)
        assert not (tmp_path / "run").exists()
    result = invoke("convert", path, "--from", "score_sde", "--config",
                    "small_ddpmpp_continuous", "--out", tmp_path / "run", "--no-ema")
    assert result.exit_code == 0, result.output
    raw, _ = from_score_sde(path, "small_ddpmpp_continuous", ema=False)
    model, _, _ = load_run(tmp_path / "run")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                  raw.state_dict().values(), strict=True))
    result = invoke("likelihood", "--run", tmp_path / "run", "--n", 2)
    assert_refused(result, 2, "--data")
