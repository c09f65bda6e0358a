"""Trained conditional models on a labelled 2D mixture: label dropout, guidance, classifiers."""

import pytest
import torch

from scoresde import (GaussianMixture, NoiseClassifier, classifier_free_guidance,
                      classifier_guidance, load_run, sample, train, train_classifier)

# Two overlapping classes: N((-1, 0), I) and N((1, 0), I). An exact class-k draw lies on its
# class's side of x_1 = 0 with probability Phi(1) = 0.841; guidance must push this towards 1.
MIX = GaussianMixture([[-1.0, 0.0], [1.0, 0.0]], [torch.eye(2).tolist()] * 2)
RECIPE = dict(data=MIX, steps=400, batch_size=256, net_params=dict(hidden=64, depth=2),
            progress=False, log_every=400, checkpoint_every=400)
N = 2000  # a fraction's standard error is <= 0.5 / sqrt(2000) = 0.011


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cond")
    train(root / "score", conditional=True, **RECIPE)  # label_dropout 0.1 by default
    train_classifier(root / "clf", **RECIPE)
    return root


def in_class(x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of samples on their requested class's side (the exact posterior's argmax)."""
    return float(((x[:, 0] > 0).long() == y).float().mean())


def draw(score_fn, sde):
    x, _ = sample(score_fn, sde, (N, 2), solver="euler", steps=25,
                  generator=torch.Generator().manual_seed(0))
    return x


@pytest.mark.slow  # the module's runs train 400 steps each
def test_classifier_free_guidance_of_a_trained_model_sharpens_classes(runs):
    model, sde, config = load_run(runs / "score")
    assert config["conditional"] and config["label_dropout"] == 0.1
    assert config["objective"] == "score" and model.num_classes == 2
    y = torch.arange(N) % 2
    frac = {w: in_class(draw(classifier_free_guidance(model, y, w), sde), y)
            for w in (0.0, 1.0, 4.0)}
    # w = 0 should give ~0.84 (exact) after 400 steps of training; rising by > 0.08 is > 7
    # standard errors of each fraction.
    assert frac[0.0] > 0.75
    assert frac[1.0] > frac[0.0] + 0.05 and frac[4.0] > frac[0.0] + 0.08
    # The dropped labels taught the same network the unconditional score: classes split evenly
    # (0.5 exact; 0.06 is 5 standard errors).
    x = draw(lambda x, t: model(x, t), sde)
    assert abs(float((x[:, 0] > 0).float().mean()) - 0.5) < 0.06


@pytest.mark.slow  # the module's runs train 400 steps each
def test_a_trained_noise_classifier_guides_the_unconditional_score(runs):
    model, sde, _ = load_run(runs / "score")
    clf, _, config = load_run(runs / "clf")
    assert isinstance(clf, NoiseClassifier) and config["net"]["name"] == "mlp_classifier"
    y = torch.arange(N) % 2
    # At a moderate noise level the exact class posterior is known: the classifier's accuracy
    # there must be near the Bayes rate Phi(m(t) / sqrt(m^2 + s^2)) (within 0.05, ~4 s.e.).
    t = torch.full((N,), 0.3)
    xt, lab = MIX.sample(N, torch.Generator().manual_seed(5), return_labels=True)
    m, s = sde.marginal_coeffs(t[:1])
    xt = m * xt + s * torch.randn(N, 2, generator=torch.Generator().manual_seed(6))
    bayes = float((MIX.class_log_prob(xt, t, sde).argmax(1) == lab).float().mean())
    acc = float((clf(xt, t).argmax(1) == lab).float().mean())
    assert abs(acc - bayes) < 0.05
    frac = {sc: in_class(draw(classifier_guidance(lambda x, t: model(x, t), clf, y, sc), sde), y)
            for sc in (0.0, 1.0, 3.0)}
    assert abs(frac[0.0] - 0.5) < 0.06  # no guidance: the unconditional model
    assert frac[1.0] > 0.75 and frac[3.0] > frac[1.0]


def test_conditional_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="label_dropout"):
        train(tmp_path / "a", conditional=True, label_dropout=1.0, **RECIPE)
    with pytest.raises(ValueError, match="labels"):
        train_classifier(tmp_path / "b", **{**RECIPE, "data": "moons"})
    with pytest.raises(ValueError, match="objective"):
        train(tmp_path / "c", objective="energy", **RECIPE)
