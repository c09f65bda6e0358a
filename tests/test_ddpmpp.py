"""DDPM++ (the paper's network): the reference's layers and count, the network contract, presets."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from problems import assert_refused, invoke

from scoresde import load_run, train
from scoresde.models import NET_PRESETS, TRAIN_NETS, DDPMpp, build_net, resolve_net

FIXTURES = Path(__file__).parent / "data"


def _preset(name, event_shape=(3, 32, 32), **over):
    net, params = resolve_net(name, over)
    return build_net({"name": net, "event_shape": list(event_shape), **params})


def _shapes(net):
    return [list(t.shape) for t in net.state_dict().values()]


def _small(**over):
    """A small DDPM++ with every branch's weights drawn at unit scale, so that all of them
    matter to the output."""
    kw = dict(event_shape=(3, 8, 8), nf=16, ch_mult=(1, 2), num_res_blocks=1,
              attn_resolutions=(4,), dropout=0.0, embedding_type="fourier", init_scale=1.0)
    torch.manual_seed(0)
    return DDPMpp(**{**kw, **over})


def _reference(config: str) -> dict:
    """The reference's tensor list of one CIFAR-10 config (``sigmas``, its noise levels, is a
    buffer of the SDE's, not the network's)."""
    return json.loads((FIXTURES / "score_sde_cifar10_shapes.json").read_text())[config]


def test_cifar10_preset_is_the_reference_network_and_runs_at_32x32():
    """The tensors of the reference's CIFAR-10 DDPM++ cont. (VP) checkpoint, in order, have our
    tensors' shapes (tools/score_sde_fixtures.py lists them), the parameter count is the
    reference's 61,804,419, and one forward pass at 32x32 gives the input's shape."""
    ref = _reference("cifar10_ddpmpp_continuous")
    net = _preset("ddpmpp_cifar10").eval()
    assert _shapes(net) == [shape for name, shape in ref["tensors"] if name != "sigmas"]
    assert sum(p.numel() for p in net.parameters()) == ref["num_parameters"] == 61_804_419
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = net(x, torch.tensor([0.3]))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_deep_preset_is_the_reference_deep_network():
    ref = _reference("cifar10_ddpmpp_deep_continuous")
    net = _preset("ddpmpp_cifar10_deep")
    assert _shapes(net) == [shape for name, shape in ref["tensors"] if name != "sigmas"]
    assert sum(p.numel() for p in net.parameters()) == ref["num_parameters"]


def test_labels_come_after_the_reference_tensors_and_the_null_label_adds_nothing():
    plain, labelled = _small(), _small(num_classes=3)
    assert list(labelled.state_dict())[-1] == "label.weight"
    assert _shapes(labelled)[:-1] == _shapes(plain)
    x, c = torch.randn(4, 3, 8, 8), torch.randn(4)
    y = torch.tensor([0, 2, -1, 1])
    out = labelled(x, c, y)
    assert out.shape == x.shape
    assert not torch.allclose(out, labelled(x, c, torch.tensor([1, 0, -1, 2])))  # labels count
    uncond = labelled(x, c)
    assert torch.allclose(out[2], uncond[2]) and not torch.allclose(out[0], uncond[0])


def test_config_rebuilds_the_network_and_the_noise_input_counts():
    net = _small(embedding_type="fourier", fourier_scale=4.0)
    clone = build_net(net.config())
    assert clone.config() == net.config() and clone.config()["name"] == "ddpmpp"
    clone.load_state_dict(net.state_dict())  # the Fourier frequencies travel in the state dict
    x, c = torch.randn(2, 3, 8, 8), torch.tensor([-0.5, 1.0])
    assert torch.equal(clone(x, c), net(x, c))
    assert not torch.allclose(net(x, c), net(x, c + 0.5))
    blind = _small(noise_conditional=False, embedding_type="positional")
    assert torch.equal(blind(x, c), blind(x, c + 0.5))


def test_dropout_acts_in_training_mode_only():
    net = _small(dropout=0.5)
    x, c = torch.randn(2, 3, 8, 8), torch.randn(2)
    assert not torch.equal(net.train()(x, c), net(x, c))
    net.eval()
    assert torch.equal(net(x, c), net(x, c))


@pytest.mark.parametrize("over, match", [
    (dict(event_shape=(3, 8, 8), attn_resolutions=(16,)), "attn_resolutions"),
    (dict(event_shape=(3, 12, 12), ch_mult=(1, 2, 2, 2)), r"\(3, 12, 12\)"),
    (dict(nf=6), "GroupNorm"),
    (dict(embedding_type="sinusoid"), "embedding_type"),
    (dict(num_classes=2, noise_conditional=False), "noise_conditional"),
])
def test_layouts_that_do_not_fit_are_refused(over, match):
    kw = dict(event_shape=(3, 16, 16), nf=16, ch_mult=(1, 2), attn_resolutions=(8,))
    with pytest.raises(ValueError, match=match):
        DDPMpp(**{**kw, **over})


def test_presets_are_train_choices_and_their_resolution_is_checked(tmp_path):
    assert set(NET_PRESETS) <= set(TRAIN_NETS) and "ddpmpp" in TRAIN_NETS
    assert "unet_classifier" not in TRAIN_NETS
    with pytest.raises(ValueError, match="attn_resolutions"):
        train(tmp_path / "run", data="digits", net="ddpmpp_cifar10", steps=1)
    result = invoke("train", "--data", "digits", "--net", "ddpmpp_cifar10_deep", "--run",
                    tmp_path / "cli", "--steps", 1, "--quiet")
    assert_refused(result, 2, "attn_resolutions")
    result = invoke("train", "--net", "ddpmpp_huge", "--run", tmp_path / "cli2")
    assert_refused(result, 2, "--net", "'ddpmpp_huge'", "ddpmpp_small8")


@pytest.mark.parametrize("preset, shape", [("ddpmpp_small16", (3, 16, 16)),
                                           ("ddpmpp_small32", (3, 32, 32))])
def test_small_presets_train_on_images_of_their_size(tmp_path, preset, shape):
    images = np.random.default_rng(0).uniform(-1, 1, (12, *shape)).astype(np.float32)
    np.save(tmp_path / "images.npy", images)
    train(tmp_path / "run", data=str(tmp_path / "images.npy"), net=preset, steps=2,
          batch_size=4, progress=False)
    model, _, config = load_run(tmp_path / "run")
    assert config["net"] == {**_preset(preset, shape).config()}
    x = torch.from_numpy(images[:2])
    assert model(x, torch.tensor([0.2, 0.7])).shape == x.shape


def test_a_preset_run_resumes_through_the_cli_and_keeps_its_network(tmp_path):
    run = tmp_path / "run"
    args = ("--data", "digits", "--batch-size", 8, "--run", run, "--quiet")
    result = invoke("train", *args, "--net", "ddpmpp_small8", "--steps", 2)
    assert result.exit_code == 0, result.output
    result = invoke("train", *args, "--resume", "--steps", 3)
    assert result.exit_code == 0, result.output
    model, _, config = load_run(run)
    assert config["steps"] == 3 and config["net"] == _preset("ddpmpp_small8", (1, 8, 8)).config()
    assert isinstance(model.net, DDPMpp)
