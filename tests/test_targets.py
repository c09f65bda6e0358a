"""Exact Gaussian-mixture targets: densities, scores and sampling."""

import math

import pytest
import torch

from scoresde import GaussianMixture, VPSDE, get_mixture, get_sde


@pytest.mark.parametrize("mixture", [GaussianMixture.ring(), GaussianMixture.narrow(),
                                     GaussianMixture.random(5, k=4, seed=2)])
def test_score_is_gradient_of_marginal_log_prob(mixture, sde):
    gen = torch.Generator().manual_seed(0)
    x = mixture.sample(32, generator=gen, dtype=torch.float64)
    t = torch.rand(32, generator=gen, dtype=torch.float64) * 0.99 + 0.01
    mean, std = sde.marginal_prob(x, t)
    x = mean + std[:, None] * torch.randn(x.shape, generator=gen, dtype=x.dtype)
    x.requires_grad_(True)
    logp = mixture.marginal_log_prob(x, t, sde)
    (grad,) = torch.autograd.grad(logp.sum(), x)
    torch.testing.assert_close(mixture.score_fn(sde)(x.detach(), t), grad, rtol=1e-9, atol=1e-9)


def test_single_component_matches_torch_distributions():
    gen = torch.Generator().manual_seed(4)
    a = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    cov = a @ a.T + 0.5 * torch.eye(3, dtype=torch.float64)
    mean = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    mixture = GaussianMixture(mean[None], cov[None])
    ref = torch.distributions.MultivariateNormal(mean, cov)
    x = torch.randn(50, 3, generator=gen, dtype=torch.float64) * 2
    torch.testing.assert_close(mixture.log_prob(x), ref.log_prob(x))
    # The diffused marginal of one Gaussian is N(m mean, m^2 cov + s^2 I).
    sde = VPSDE()
    t = torch.full((50,), 0.3, dtype=torch.float64)
    m, s = sde.marginal_coeffs(t[:1])
    ref_t = torch.distributions.MultivariateNormal(m * mean, m**2 * cov + s**2 * torch.eye(3))
    torch.testing.assert_close(mixture.marginal_log_prob(x, t, sde), ref_t.log_prob(x))


def test_mixture_log_prob_is_weighted_sum():
    mixture = GaussianMixture.narrow()
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    comps = torch.stack([
        torch.distributions.MultivariateNormal(mixture.means[k], mixture.covs[k]).log_prob(x)
        for k in range(3)
    ], dim=1)
    expected = torch.logsumexp(comps + mixture.weights.log(), dim=1)
    torch.testing.assert_close(mixture.log_prob(x), expected)


def test_sampling_matches_weights_and_moments():
    mixture = GaussianMixture(torch.tensor([[-5.0, 0.0], [5.0, 0.0]]),
                              torch.eye(2).repeat(2, 1, 1) * 0.25, weights=[0.2, 0.8])
    n = 40000
    x, labels = mixture.sample(n, generator=torch.Generator().manual_seed(0), return_labels=True)
    frac = (labels == 1).double().mean().item()
    assert abs(frac - 0.8) < 5 * math.sqrt(0.8 * 0.2 / n)  # 5 binomial standard errors
    assert torch.equal(labels == 1, x[:, 0] > 0)  # components are 20 std apart
    right = x[labels == 1]
    assert (right.mean(0) - torch.tensor([5.0, 0.0])).abs().max() < 5 * 0.5 / math.sqrt(len(right))


def test_event_shape_and_large_dimension():
    mixture = GaussianMixture.standard_normal(784)
    x = torch.randn(8, 784, dtype=torch.float64)
    sde = get_sde("ve")
    t = torch.full((8,), 0.5, dtype=torch.float64)
    _, s = sde.marginal_coeffs(t)
    torch.testing.assert_close(mixture.score_fn(sde)(x, t), -x / (1 + s[:, None] ** 2))
    images = GaussianMixture(torch.zeros(1, 16), torch.eye(16)[None], event_shape=(1, 4, 4))
    sample = images.sample(5)
    assert sample.shape == (5, 1, 4, 4)
    assert images.score_fn(sde)(sample, torch.full((5,), 0.5)).shape == (5, 1, 4, 4)
    assert images.log_prob(sample).shape == (5,)


def test_float32_in_float32_out():
    mixture = get_mixture("ring")
    x = mixture.sample(4)
    assert x.dtype == torch.float32
    assert mixture.score_fn(VPSDE())(x, torch.full((4,), 0.2)).dtype == torch.float32


def test_tweedie_posterior_mean_of_a_gaussian():
    mixture = GaussianMixture(torch.tensor([[1.0, 2.0]]), torch.eye(2)[None] * 4.0)
    sde = VPSDE()
    x = torch.randn(10, 2, dtype=torch.float64)
    t = torch.full((10,), 0.4, dtype=torch.float64)
    m, s = sde.marginal_coeffs(t[:1])
    # E[x0 | xt] = mu + 4 m / (4 m^2 + s^2) (xt - m mu) for a N(mu, 4 I) prior.
    mu = torch.tensor([1.0, 2.0], dtype=torch.float64)
    expected = mu + 4 * m / (4 * m**2 + s**2) * (x - m * mu)
    torch.testing.assert_close(mixture.posterior_mean(x, t, sde), expected)


@pytest.mark.parametrize(
    "args, match",
    [
        (dict(means=torch.zeros(2, 2), covs=torch.eye(2)[None]), r"^covs\b.*\(1, 2, 2\)"),
        (dict(means=torch.zeros(2), covs=torch.eye(2)[None]), r"^means\b.*\(K, D\)"),
        (dict(means=torch.zeros(1, 2), covs=-torch.eye(2)[None]), "positive definite"),
        (dict(means=torch.zeros(1, 2), covs=torch.tensor([[[1.0, 0.5], [0.0, 1.0]]])), "symmetric"),
        (dict(means=torch.zeros(2, 2), covs=torch.eye(2).repeat(2, 1, 1), weights=[1, -1]),
         "non-negative"),
        (dict(means=torch.full((1, 2), float("nan")), covs=torch.eye(2)[None]), "finite"),
    ],
)
def test_bad_mixtures(args, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**args)


def test_bad_inputs():
    mixture = get_mixture("ring")
    with pytest.raises(ValueError, match=r"^x\b.*\(B, 2\).*\(3, 3\)"):
        mixture.log_prob(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="'spiral'"):
        get_mixture("spiral")
    with pytest.raises(ValueError, match=r"^n\b.*>= 1.*\b0\b"):
        mixture.sample(0)


def test_class_posterior_and_conditional_scores(sde):
    mixture = GaussianMixture.narrow()
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(16, 2, generator=gen, dtype=torch.float64) * 2
    t = torch.full((16,), 0.3, dtype=torch.float64)
    # Bayes: log p(y | x) = log w_y + log p_t(x | y) - log p_t(x), component by component.
    log_post = mixture.class_log_prob(x, t, sde)
    for k in range(3):
        comp = mixture.component(k)
        expected = (mixture.weights[k].log() + comp.marginal_log_prob(x, t, sde)
                    - mixture.marginal_log_prob(x, t, sde))
        torch.testing.assert_close(log_post[:, k], expected)
        y = torch.full((16,), k)
        torch.testing.assert_close(mixture.conditional_score_fn(sde)(x, t, y),
                                   comp.score_fn(sde)(x, t))
    # Classifier guidance with the exact classifier recovers the conditional score.
    y = torch.randint(0, 3, (16,), generator=gen)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(mixture.class_log_prob(xg, t, sde)[torch.arange(16), y].sum(), xg)
    torch.testing.assert_close(mixture.score_fn(sde)(x, t) + grad,
                               mixture.conditional_score_fn(sde)(x, t, y))
    with pytest.raises(ValueError, match=r"^labels\b.*\[0, 3\).*\b3\b"):
        mixture.conditional_score_fn(sde)(x, t, torch.full((16,), 3))
    with pytest.raises(ValueError, match=r"\blabel.*\b16\b.*\(4,\)"):
        mixture.conditional_score_fn(sde)(x, t, torch.zeros(4, dtype=torch.long))


def test_condition_matches_bayes_on_a_grid():
    """p(x_u | x_k) from `condition` equals p(x_u, x_k) / p(x_k), the joint read on a grid."""
    mixture = GaussianMixture.narrow()
    known = torch.tensor([True, False])
    values = torch.tensor([1.8, 0.0], dtype=torch.float64)
    cond = mixture.condition(known, values)
    grid = torch.linspace(-6, 6, 4001, dtype=torch.float64)
    joint = mixture.log_prob(torch.stack([torch.full_like(grid, 1.8), grid], dim=1))
    # log p(x_k) by quadrature over the grid
    log_marginal = torch.logsumexp(joint, 0) + torch.log(grid[1] - grid[0])
    torch.testing.assert_close(cond.log_prob(grid[:, None]), joint - log_marginal, atol=1e-6,
                               rtol=1e-6)
    with pytest.raises(ValueError, match=r"^known\b"):
        mixture.condition(torch.tensor([True, True]), values)


def test_unseen_mixtures_are_reproducible_and_span_scales_and_widths():
    a, b = GaussianMixture.unseen(3, narrow=True), GaussianMixture.unseen(3, narrow=True)
    assert torch.equal(a.means, b.means) and torch.equal(a.covs, b.covs)
    scales, narrowest = [], []
    for seed in range(20):
        mix = GaussianMixture.unseen(seed, narrow=True)
        assert 2 <= len(mix.weights) <= 6 and mix.means.shape[1] == 2
        assert abs(float(mix.weights.sum()) - 1) < 1e-12
        std = torch.linalg.eigvalsh(mix.covs).clamp_min(0).sqrt()  # (k, 2) axis stds
        scale = float(std.max())
        scales.append(scale)
        narrowest.append(float(std.min()) / scale)
    # Scales over about a decade; the narrow axis at least ten times below the widest one.
    assert max(scales) / min(scales) > 5
    assert max(narrowest) < 0.1
    assert GaussianMixture.unseen(0, dim=5).means.shape[1] == 5
