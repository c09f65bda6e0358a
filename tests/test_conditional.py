"""Conditional generation against exact targets: guidance, labels, imputation (issue 7).

The classes are the components of Gaussian mixtures, whose conditional scores, class posteriors
and conditionals on known coordinates are exact (``scoresde.targets``).
"""

import math

import numpy as np
import pytest
import torch

from scoresde import (GaussianMixture, NULL_LABEL, ScoreMLP, ScoreModel, VPSDE,
                      classifier_free_guidance, classifier_guidance, conditional_score, get_sde,
                      impute, IMPUTATION_SOLVERS, sample)

from problems import labelled_points


def data_posterior_argmax(mix: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    """argmax_k of the exact posterior p(k | x_0 = x) of the data, shape (B,)."""
    log_w = mix.weights.log()
    return torch.stack([mix.component(k).log_prob(x).double() + log_w[k]
                        for k in range(mix.num_components)], 1).argmax(1)


@pytest.mark.parametrize("solver,steps", [("euler", 40), ("pc", 100)])
@pytest.mark.parametrize("w", [0.0, 2.0])
def test_guided_exact_samples_land_in_the_requested_component(solver, steps, w):
    # Ring of 8 components (radius 4, std 0.3): neighbours are 3.06 apart, so the decision
    # boundary is 1.53 = 5.1 std from each mean and an exact draw of component k is misjudged
    # with probability 2 Phi(-5.1) ~ 3e-7. Fewer than 99% of 400 draws in place means the
    # sampler or the guidance is wrong, not bad luck.
    mix, sde = GaussianMixture.ring(), VPSDE()
    y = torch.arange(400) % 8
    score = classifier_free_guidance(mix.conditional_score_fn(sde), y, w, num_classes=8)
    x, info = sample(score, sde, (400, 2), solver=solver, steps=steps,
                     generator=torch.Generator().manual_seed(0))
    assert (data_posterior_argmax(mix, x) == y).float().mean() >= 0.99
    assert info["nfe"] > steps


def test_classifier_guidance_with_the_exact_classifier_is_the_conditional_score(sde):
    # Bayes: grad log p_t(x | y) = grad log p_t(x) + grad log p(y | x_t); float64 round-off only.
    mix = GaussianMixture.random(3, k=4, seed=1)
    x, t, y = labelled_points()
    exact = mix.conditional_score_fn(sde)(x, t, y)
    guided = classifier_guidance(mix.score_fn(sde), lambda x, t: mix.class_log_prob(x, t, sde),
                                 y, scale=1.0, num_classes=4)
    with torch.no_grad():  # samplers call it under no_grad
        got = guided(x, t)
    assert torch.allclose(got, exact, rtol=1e-9, atol=1e-9)
    assert not torch.allclose(got, mix.score_fn(sde)(x, t), atol=1e-3)


def test_classifier_free_guidance_is_the_stated_combination():
    mix, sde = GaussianMixture.ring(k=4), VPSDE()
    cond_fn = mix.conditional_score_fn(sde)
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t = torch.full((16,), 0.3, dtype=torch.float64)
    y = torch.arange(16) % 4
    cond, uncond = cond_fn(x, t, y), cond_fn(x, t, None)
    for w in (0.0, 1.5, -0.5):
        got = classifier_free_guidance(cond_fn, y, w, num_classes=4)(x, t)
        assert torch.allclose(got, (1 + w) * cond - w * uncond, atol=1e-12)
    assert torch.equal(conditional_score(cond_fn, 2, num_classes=4)(x, t),
                       cond_fn(x, t, torch.full((16,), 2)))


def test_the_null_label_is_the_unconditional_network():
    net = ScoreMLP(event_shape=(2,), hidden=16, depth=1, num_classes=3)
    torch.nn.init.normal_(net.out[1].weight)  # the zero-initialised head would hide labels
    model = ScoreModel(net, VPSDE())
    x, t = torch.randn(6, 2), torch.full((6,), 0.5)
    null = torch.full((6,), NULL_LABEL)
    assert torch.equal(model(x, t, null), model(x, t))
    assert not torch.allclose(model(x, t, torch.zeros(6, dtype=torch.long)), model(x, t))


@pytest.mark.parametrize("bad,match", [
    (3, r"\[0, 3\)"), (-1, r"\[0, 3\)"), (torch.tensor([0, 1]), r"\b6\b.*\(2,\)"),
    (torch.tensor([0.0] * 6), "integers"), (1.0, "integers"), (True, "integers"),
    ("a", "integers")])
def test_bad_labels_give_clear_errors(bad, match):
    model = ScoreModel(ScoreMLP(event_shape=(2,), hidden=8, depth=1, num_classes=3), VPSDE())
    x, t = torch.randn(6, 2), torch.full((6,), 0.5)
    with pytest.raises(ValueError, match=match):
        classifier_free_guidance(model, bad, 1.0)(x, t)
    with pytest.raises(ValueError, match=match):
        classifier_guidance(model, lambda x, t: torch.zeros(len(x), 3), bad, num_classes=3)(x, t)
    if not (isinstance(bad, int) and bad == NULL_LABEL):  # the model takes -1: the null label
        with pytest.raises(ValueError, match=match):
            model(x, t, bad)


def test_unconditional_models_and_bad_weights_are_refused():
    uncond = ScoreModel(ScoreMLP(event_shape=(2,), hidden=8, depth=1), VPSDE())
    with pytest.raises(ValueError, match="unconditional"):
        classifier_free_guidance(uncond, 0, 1.0)
    with pytest.raises(ValueError, match="unconditional"):
        uncond(torch.randn(2, 2), torch.full((2,), 0.5), torch.zeros(2, dtype=torch.long))
    cond = GaussianMixture.ring(k=3).conditional_score_fn(VPSDE())
    with pytest.raises(ValueError, match="finite"):
        classifier_free_guidance(cond, 0, math.nan, num_classes=3)


def ks_statistic(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov distance between the empirical CDFs of a and b."""
    a, b = a.double().sort().values, b.double().sort().values
    grid = torch.cat([a, b])
    cdf_a = torch.searchsorted(a, grid, right=True) / len(a)
    cdf_b = torch.searchsorted(b, grid, right=True) / len(b)
    return float((cdf_a - cdf_b).abs().max())


@pytest.mark.parametrize("sde_name", ["vp", "ve", "rf"])
def test_imputation_matches_the_exact_conditional(sde_name):
    # The 3x3 grid mixture is a product of two 1D mixtures, so the replacement method is exact
    # in theory (the unknown coordinate's score ignores the known one); condition() gives the
    # truth: weights 0.84 / 0.16 over two columns, three rows each.
    # Threshold: the two-sample KS critical value at level 1e-3 for n = m = 2000,
    # 1.95 sqrt(2 / n) = 0.062 (Kolmogorov's limit law); true-vs-true draws below confirm it.
    mix, sde, n = GaussianMixture.grid(), get_sde(sde_name), 2000
    known, v = torch.tensor([True, False]), torch.tensor([1.45, 0.0])
    exact = mix.condition(known, v)
    truth = exact.sample(n, torch.Generator().manual_seed(2))[:, 0]
    crit = 1.95 * math.sqrt(2 / n)
    null = [ks_statistic(exact.sample(n, torch.Generator().manual_seed(s))[:, 0], truth)
            for s in (3, 4, 5)]
    assert max(null) < crit
    x, _ = impute(mix.score_fn(sde), sde, v.expand(n, 2).clone(), known, solver="pc", steps=100,
                  generator=torch.Generator().manual_seed(1))
    assert torch.equal(x[:, 0], v[0].expand(n))
    assert ks_statistic(x[:, 1], truth) < crit
    # It can fail: the unconditioned second coordinate is far from the conditional (rows weigh
    # the same, but the known column's shift is absent); a fixed value is even farther.
    assert ks_statistic(torch.zeros(n), truth) > crit


def test_imputation_runs_in_every_sampler_with_a_hook_and_keeps_known_entries():
    mix, sde = GaussianMixture.random(4, k=2, seed=0, scale=1.0), VPSDE()
    values = mix.sample(8, torch.Generator().manual_seed(0)).reshape(8, 1, 2, 2)
    mask = torch.tensor([[[True, False], [False, True]]])  # one sample's shape, broadcast
    score = lambda x, t: mix.score_fn(sde)(x.reshape(-1, 4), t).reshape(x.shape)  # noqa: E731
    for solver in IMPUTATION_SOLVERS:
        x, _ = impute(score, sde, values, mask, solver=solver, steps=5,
                      generator=torch.Generator().manual_seed(1))
        assert torch.equal(x[:, 0][:, mask[0]], values[:, 0][:, mask[0]])
        assert torch.isfinite(x).all() and not torch.equal(x, values)


@pytest.mark.parametrize("mask,match", [
    (torch.ones(3, dtype=torch.bool), "shape"), (torch.ones(8, 3), "shape"),
    (torch.full((2,), 0.5), "0/1")])
def test_bad_masks_and_solvers_give_clear_errors(mask, match):
    mix, sde = GaussianMixture.ring(), VPSDE()
    values = torch.zeros(8, 2)
    with pytest.raises(ValueError, match=match):
        impute(mix.score_fn(sde), sde, values, mask, steps=2)
    for solver in ("ode", "torchsde"):
        with pytest.raises(ValueError, match=f"'{solver}'"):
            impute(mix.score_fn(sde), sde, values, torch.tensor([True, False]), solver=solver)


def test_mask_files_are_read_and_checked(tmp_path):
    from scoresde.data import load_mask
    mask = np.zeros((1, 8, 8), dtype=bool)
    mask[:, :4] = True
    values = np.random.default_rng(0).uniform(-1, 1, (1, 8, 8))
    np.savez(tmp_path / "m.npz", mask=mask, values=values)
    got_mask, got_values = load_mask(tmp_path / "m.npz", (1, 8, 8))
    assert torch.equal(got_mask, torch.from_numpy(mask))
    assert torch.allclose(got_values.double(), torch.from_numpy(values), atol=1e-7)
    np.save(tmp_path / "m.npy", mask.astype(np.uint8))
    assert torch.equal(load_mask(tmp_path / "m.npy", (1, 8, 8))[0], torch.from_numpy(mask))
    np.savez(tmp_path / "wrong.npz", mask=np.ones((8, 8)), values=values)
    np.savez(tmp_path / "half.npz", mask=np.full((1, 8, 8), 0.5))
    np.savez(tmp_path / "nokey.npz", x=mask)
    for name, match in (("wrong.npz", "shape"), ("half.npz", "0/1"), ("nokey.npz", "'mask'"),
                        ("absent.npz", r"absent\.npz")):
        with pytest.raises(ValueError, match=match):
            load_mask(tmp_path / name, (1, 8, 8))
