"""GaussianMixture.condition_linear: the exact posterior given y = A x + noise_std n.

Checked against Bayes' rule read on a 2D grid (noisy and noiseless, full and rank-deficient A),
against self-normalised importance sampling of the prior in 4D, and against condition() for
masks written as any selection or mixing of the same rows.
"""

import math

import pytest
import torch

from scoresde import GaussianMixture
from scoresde.observe import LinearObservation, grey_matrix, mask_matrix


def _gauss_log(y, mean, var):
    var = torch.as_tensor(var, dtype=torch.float64)
    return -0.5 * ((y - mean) ** 2 / var + torch.log(2 * math.pi * var))


def test_noisy_average_matches_bayes_on_a_grid():
    mix, sd = GaussianMixture.random(2, k=4, seed=0), 0.3
    a, y = torch.tensor([[0.5, 0.5]]), torch.tensor([0.4])
    post = mix.condition_linear(a, y, sd)
    ticks = torch.linspace(-8, 8, 301, dtype=torch.float64)
    pts = torch.cartesian_prod(ticks, ticks)
    joint = mix.log_prob(pts).double() + _gauss_log(y.double(), pts @ a.double().T, sd**2)[:, 0]
    log_evidence = torch.logsumexp(joint, 0) + 2 * torch.log(ticks[1] - ticks[0])
    truth = joint - log_evidence
    got = post.log_prob(pts).double()
    where = truth > -12  # where the posterior has mass; far out both are tiny
    torch.testing.assert_close(got[where], truth[where], atol=2e-4, rtol=0)
    # The weights are w_k N(y; A mu_k, A S_k A^T + sd^2), read directly.
    pred = (a.double() @ mix.covs @ a.double().T)[:, 0, 0] + sd**2
    log_w = mix.weights.log() + _gauss_log(y.double(), (mix.means @ a.double().T)[:, 0], pred)
    torch.testing.assert_close(post.weights, torch.softmax(log_w, 0))


@pytest.mark.parametrize("rows", [[[1.0, 2.0]], [[1.0, 2.0], [-2.0, -4.0]]])
def test_noiseless_line_matches_bayes_along_the_line(rows):
    # y = x_1 + 2 x_2 exactly: the posterior lives on a line; a second, dependent row (rank 1)
    # with a consistent measurement changes nothing.
    mix, a = GaussianMixture.ring(k=5, radius=3.0, std=0.5), torch.tensor(rows)
    y = a[:, 0] * 1.5
    post = mix.condition_linear(a, y)
    assert post.basis.shape == (2, 1)
    direction = post.basis[:, 0]
    z = torch.linspace(-8, 8, 8001, dtype=torch.float64)
    pts = post.offset + z[:, None] * direction
    torch.testing.assert_close(pts @ a.double().T, y.double().expand(len(z), -1))
    joint = mix.log_prob(pts).double()
    truth = joint - torch.logsumexp(joint, 0) - torch.log(z[1] - z[0])
    where = truth > -12
    torch.testing.assert_close(post.log_prob(pts).double()[where], truth[where], atol=1e-5,
                               rtol=0)
    x = post.sample(500, torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(x @ a.double().T, y.double().expand(500, -1))


def test_posterior_mean_and_weights_match_importance_sampling_in_4d():
    mix = GaussianMixture.random(4, k=3, seed=1, scale=1.5)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(2, 4, generator=gen, dtype=torch.float64)
    y, sd = torch.tensor([0.7, -0.4], dtype=torch.float64), 0.5
    post = mix.condition_linear(a, y, sd)
    exact_mean = (post.weights[:, None] * post.mixture.means).sum(0)
    x, labels = mix.sample(400_000, gen, dtype=torch.float64, return_labels=True)
    log_w = _gauss_log(y, x @ a.T, sd**2).sum(1)
    w = torch.softmax(log_w, 0)
    ess = 1 / (w**2).sum()
    est = (w[:, None] * x).sum(0)
    # Standard error of a self-normalised estimate: posterior std over sqrt(ESS).
    sd_post = ((w[:, None] * (x - est) ** 2).sum(0)).sqrt()
    assert ess > 10_000
    assert ((est - exact_mean).abs() < 5 * sd_post / ess.sqrt()).all()
    est_w = torch.stack([w[labels == k].sum() for k in range(3)])
    assert ((est_w - post.weights).abs() < 5 * (post.weights * (1 - post.weights) / ess).sqrt()
            + 1e-12).all()


def test_condition_is_the_mask_case_however_the_rows_are_written():
    mix = GaussianMixture.random(4, k=3, seed=2)
    known = torch.tensor([True, False, True, False])
    values = torch.tensor([0.5, 0.0, -1.0, 0.0], dtype=torch.float64)
    cond = mix.condition(known, values)
    # The same rows scaled and reordered: still a mask, same free coordinates.
    a = torch.tensor([[0, 0, 2.0, 0], [-1.0, 0, 0, 0]])
    scaled = mix.condition_linear(a, torch.tensor([-2.0, -0.5])).mixture
    for got in (scaled, mix.condition_linear(mask_matrix(known), values[known]).mixture):
        torch.testing.assert_close(got.means, cond.means)
        torch.testing.assert_close(got.covs, cond.covs)
        torch.testing.assert_close(got.weights, cond.weights)
    # Rows mixed by an invertible matrix: a general A (SVD basis), the same posterior on
    # the same set: equal weights and equal density at points of that set.
    mixing = torch.tensor([[1.0, 2.0], [0.5, -1.0]], dtype=torch.float64)
    general = mix.condition_linear(mixing @ mask_matrix(known), mixing @ values[known])
    torch.testing.assert_close(general.weights, cond.weights)
    x = general.sample(64, torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(x[:, known], values[known].expand(64, -1))
    torch.testing.assert_close(general.log_prob(x), cond.log_prob(x[:, ~known]))


def test_bad_measurements_are_refused_in_one_line():
    mix = GaussianMixture.ring()
    with pytest.raises(ValueError, match=r"\bnoise_std\b.*\by\b.*\bA\b.*\brank 1\b"):
        mix.condition_linear([[1.0, 0.0], [2.0, 0.0]], [1.0, 1.0])  # 2 x_1 = 1 and x_1 = 1
    with pytest.raises(ValueError, match=r"^A\b.*\brank 2\b.*\bnoise_std\b"):
        mix.condition_linear(torch.eye(2), [1.0, 1.0])
    with pytest.raises(ValueError, match="columns"):
        mix.condition_linear([[1.0, 0.0, 0.0]], [1.0])
    with pytest.raises(ValueError, match=r"^y\b.*\(1,\).*\(2,\)"):
        mix.condition_linear([[1.0, 0.0]], [1.0, 2.0])
    with pytest.raises(ValueError, match="noise_std"):
        mix.condition_linear([[1.0, 0.0]], [1.0], -0.1)
    with pytest.raises(ValueError, match="zero"):
        mix.condition_linear([[0.0, 0.0]], [0.0])
    with pytest.raises(ValueError, match="finite"):
        mix.condition_linear([[math.nan, 0.0]], [0.0])
    with pytest.raises(ValueError, match=r"\bC >= 2\b.*\(1, 4, 4\)"):
        grey_matrix((1, 4, 4))
    # Noise makes an inconsistent y fine: the part outside the range of A is uninformative.
    post = mix.condition_linear([[1.0, 0.0], [2.0, 0.0]], [1.0, 1.0], 0.5)
    assert torch.isfinite(post.mixture.means).all()


def test_the_observation_reduces_to_the_row_space():
    a = torch.tensor([[1.0, 1.0, 0.0], [2.0, 2.0, 0.0]])
    obs = LinearObservation(a, torch.tensor([[1.0, 2.0]]), 0.0)
    assert obs.rank == 1
    torch.testing.assert_close(obs.x_row, torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64))
    # Kalman with noise 0 puts the row-space part on x_row and leaves the rest.
    mean = torch.tensor([[3.0, -1.0, 4.0]], dtype=torch.float64)
    post, row_std = obs.kalman(mean, 0.25)
    torch.testing.assert_close(post, torch.tensor([[2.5, -1.5, 4.0]], dtype=torch.float64))
    assert float(row_std.abs().max()) == 0.0
