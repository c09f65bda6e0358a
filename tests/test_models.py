"""Networks and the ScoreModel wrapper."""

import pytest
import torch

from scoresde import VESDE, GaussianMixture, NoiseClassifier, ScoreMLP, ScoreModel, UNet
from scoresde.models import ClassifierMLP, TimeFeatures, build_net


@pytest.mark.parametrize("shape", [(2,), (1, 4, 4)])
def test_untrained_model_is_the_exact_score_of_gaussian_data(sde, shape):
    """The network's output layer starts at zero, and the skip term c_skip c_in x / s is then
    -x / (m^2 sigma_data^2 + s^2): the exact score of N(0, sigma_data^2 I) under any SDE."""
    sigma_data, dim = 1.7, int(torch.tensor(shape).prod())
    eye = torch.eye(dim, dtype=torch.float64)
    mix = GaussianMixture(torch.zeros(1, dim), sigma_data**2 * eye[None],
                          event_shape=shape)
    net = ScoreMLP(event_shape=shape, hidden=16, depth=1)
    model = ScoreModel(net, sde, sigma_data=sigma_data)
    x = torch.randn(5, *shape, dtype=torch.float64) * 3
    t = torch.tensor([1e-3, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64) * sde.T
    model.double()
    assert torch.allclose(model(x, t), mix.score_fn(sde)(x, t), rtol=1e-10, atol=1e-12)


def test_shapes_labels_and_config_round_trip():
    torch.manual_seed(0)
    mlp = ScoreMLP(event_shape=(3, 4), hidden=32, depth=2, time_features="sinusoidal",
                   num_classes=5)
    unet = UNet(event_shape=(3, 8, 8), ch=8, ch_mult=(1, 2, 2), num_res_blocks=1,
                attn_resolutions=(2,), num_classes=5)
    y = torch.tensor([0, 4])
    for net, shape in [(mlp, (2, 3, 4)), (unet, (2, 3, 8, 8))]:
        for p in net.parameters():  # leave the zero initialisation so the output depends on x
            torch.nn.init.normal_(p, std=0.1)
        x, c = torch.randn(shape), torch.randn(2)
        out = net(x, c, y)
        assert out.shape == shape and torch.isfinite(out).all()
        assert not torch.allclose(out, net(x, c, torch.tensor([1, 2])))  # labels are used
        clone = build_net(net.config())
        clone.load_state_dict(net.state_dict())
        assert torch.equal(clone(x, c, y), out)


def test_input_features_feed_the_first_layer_and_old_configs_still_load():
    """Fourier features of the input widen the first layer by 2k and are saved with the weights;
    a network config from before they existed (no such keys) builds the plain network."""
    torch.manual_seed(0)
    for cls, extra in [(ScoreMLP, {}), (ClassifierMLP, {"num_classes": 3})]:
        net = cls(event_shape=(2,), hidden=16, depth=1, input_features=8, input_scale=0.5,
                  **extra)
        assert net.inp.in_features == 2 + 16 and net.features.freqs.shape == (2, 8)
        assert "features.freqs" in net.state_dict()
        for p in net.parameters():
            torch.nn.init.normal_(p, std=0.1)
        x, c = torch.randn(4, 2), torch.randn(4)
        clone = build_net(net.config())
        clone.load_state_dict(net.state_dict())
        assert torch.equal(clone(x, c), net(x, c))
        old = {k: v for k, v in cls(hidden=16, depth=1, **extra).config().items()
               if not k.startswith("input_")}
        plain = build_net(old)
        assert plain.inp.in_features == 2
        assert not any(k.startswith("features.") for k in plain.state_dict())
        plain.load_state_dict(cls(hidden=16, depth=1, **extra).state_dict())
    for bad in [{"input_features": -1}, {"input_features": 4, "input_scale": 0.0},
                {"input_features": 4, "input_scale": float("inf")}, {"input_scale": -1.0},
                {"input_features": 2.5}]:
        with pytest.raises(ValueError, match="input_"):
            ScoreMLP(**bad)


def test_bad_networks_are_refused():
    with pytest.raises(ValueError, match="divisible"):
        UNet(event_shape=(1, 6, 6), ch_mult=(1, 2, 2))
    with pytest.raises(ValueError, match="fourier"):
        TimeFeatures(8, "wavelet")
    with pytest.raises(ValueError, match="'transformer'"):
        build_net({"name": "transformer"})
    with pytest.raises(ValueError, match="sigma_data"):
        ScoreModel(ScoreMLP(), None, sigma_data=0.0)


def test_score_model_and_noise_classifier_share_one_preconditioning():
    # NoiseClassifier had its own copy of ScoreModel's input scaling and sigma_data check.
    sde, sigma_data = VESDE(), 0.7
    seen = {}

    class Spy(torch.nn.Module):
        num_classes = 2

        def __init__(self, key):
            super().__init__()
            self.key = key

        def forward(self, x, c_noise, y=None):
            seen[self.key] = (x, c_noise)
            return torch.zeros(x.shape[0], 2) if self.key == "cls" else torch.zeros_like(x)

    x, t = torch.randn(3, 2), torch.tensor([0.1, 0.5, 0.9])
    ScoreModel(Spy("score"), sde, sigma_data)(x, t)
    NoiseClassifier(Spy("cls"), sde, sigma_data)(x, t)
    _, s = sde.marginal_coeffs(t)  # VE: m = 1
    torch.testing.assert_close(seen["cls"][0], x / torch.sqrt(sigma_data**2 + s**2)[:, None])
    torch.testing.assert_close(seen["cls"][1], torch.log(s) / 4)
    torch.testing.assert_close(seen["score"], seen["cls"])
    for wrapper in (ScoreModel, NoiseClassifier):
        with pytest.raises(ValueError, match=r"^sigma_data\b.*\bnan\b"):
            wrapper(Spy("x"), sde, float("nan"))
