"""Weighted denoising score matching: values at the known optimum, and the times it draws."""

import math

import pytest
import torch

from scoresde import (VPSDE, GaussianMixture, classifier_loss, dsm_loss, sample_time,
                      time_weight)

N = 20_000  # samples per Monte Carlo check; thresholds are 5 standard errors of these means


def _gaussian(dim=3):
    """N(mu, S) with a full covariance, as a one-component mixture (its exact score is known)."""
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    cov = a @ a.T / dim + 0.2 * torch.eye(dim, dtype=torch.float64)
    return GaussianMixture(torch.randn(1, dim, generator=gen, dtype=torch.float64), cov[None])


def _at(t, n, dtype=torch.float64):
    return torch.full((n,), t, dtype=dtype)


@pytest.mark.parametrize("t", [0.05, 0.4, 0.9])
def test_exact_score_gives_the_closed_form_minimum_and_esm_offset(sde, t):
    """DSM(theta) = ESM(theta) + C(t), with C(t) = lambda (d / s^2 - tr Sigma_t^-1) >= 0.

    For Gaussian data the exact score has ESM = 0, so its DSM loss is C(t); with lambda = s^2,
    C = d - s^2 sum_i 1 / (m^2 l_i + s^2). Adding a constant c to the score adds exactly
    ESM = s^2 |c|^2 on average.
    """
    mix, gen = _gaussian(), torch.Generator().manual_seed(0)
    x0 = mix.sample(N, gen, dtype=torch.float64)
    tt = _at(t * sde.T, N)
    z = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    exact = mix.score_fn(sde)
    m, s = (v[0] for v in sde.marginal_coeffs(tt[:1]))
    const = mix.dim - s**2 * (1 / (m**2 * mix.evals[0] + s**2)).sum()
    g2 = float(sde.diffusion_coeff(tt[:1])[0] ** 2)
    for weighting, lam_over_s2 in [("sigma2", 1.0), ("likelihood", g2 / s**2),
                                   ("flow", (g2 / (2 * s)) ** 2)]:
        loss = dsm_loss(exact, sde, x0, weighting=weighting, t=tt, noise=z)
        assert loss.shape == (N,)
        se = loss.std() / math.sqrt(N)
        assert abs(loss.mean() - lam_over_s2 * const) < 5 * se
    c = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    shifted = dsm_loss(lambda x, t: exact(x, t) + c, sde, x0, t=tt, noise=z)
    diff = shifted - dsm_loss(exact, sde, x0, t=tt, noise=z)
    assert abs(diff.mean() - s**2 * (c**2).sum()) < 5 * diff.std() / math.sqrt(N) + 1e-12


def test_log_snr_identity_behind_importance_sampling(sde):
    """int_eps^T g^2 / s^2 dt = log_snr(eps) - log_snr(T): the normaliser of the IS density."""
    eps = 1e-3
    # Uniform in logit(t): dense near 0 and near T (rectified flow's g^2 / s^2 ~ 1 / (1 - t)).
    logit = lambda v: math.log(v / (1 - v))
    t = torch.sigmoid(torch.linspace(logit(eps), logit(sde.T * (1 - 1e-12)), 200_001,
                                     dtype=torch.float64))
    _, s = sde.marginal_coeffs(t)
    integral = torch.trapezoid(sde.diffusion_coeff(t) ** 2 / s**2, t)
    lam = sde.log_snr(torch.tensor([eps, sde.T], dtype=torch.float64))
    assert torch.allclose(integral, lam[0] - lam[1], rtol=1e-6)
    w = time_weight(sde, torch.tensor([0.3]), "likelihood_is", eps=eps)
    assert torch.allclose(w.double(), (lam[0] - lam[1]) / (sde.T - eps), rtol=1e-6)


def test_importance_sampled_times_follow_g2_over_s2(sde):
    """Kolmogorov-Smirnov against F(t) = (lam(eps) - lam(t)) / (lam(eps) - lam(T)).

    1.63 / sqrt(n) is the 1% critical value of the KS statistic for n iid draws.
    """
    eps, n = 1e-4, 20_000
    t = sample_time(sde, n, eps=eps, weighting="likelihood_is",
                    generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert t.min() >= eps and t.max() <= sde.T
    t, _ = torch.sort(t)
    lam = sde.log_snr(torch.tensor([eps, sde.T], dtype=torch.float64))
    cdf = (lam[0] - sde.log_snr(t)) / (lam[0] - lam[1])
    emp = torch.arange(1, n + 1, dtype=torch.float64) / n
    assert (cdf - emp).abs().max() < 1.63 / math.sqrt(n)


def test_stratified_and_antithetic_times(sde):
    eps, n = 1e-3, 64
    gen = torch.Generator().manual_seed(0)
    t = sample_time(sde, n, eps=eps, t_sampling="stratified", generator=gen, dtype=torch.float64)
    strata = torch.floor((t - eps) / (sde.T - eps) * n)
    assert torch.equal(strata, torch.arange(n, dtype=torch.float64))
    t = sample_time(sde, n, eps=eps, t_sampling="antithetic", generator=gen, dtype=torch.float64)
    assert torch.allclose(t[: n // 2] + t[n // 2:], torch.full((n // 2,), eps + sde.T,
                                                               dtype=torch.float64))


def test_log_snr_share_mixes_uniform_t_with_uniform_log_snr(sde):
    """The first ``n - k`` times are uniform in t, the last ``k = round(p n)`` uniform in log-SNR
    (KS at the 1% critical value 1.63 / sqrt(n)); share 0 draws exactly what it drew before."""
    eps, n, share = 1e-4, 20_000, 0.3
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    t = sample_time(sde, n, eps=eps, log_snr_share=share, generator=gen(), dtype=torch.float64)
    k = round(share * n)
    assert t.shape == (n,) and t.min() >= eps and t.max() <= sde.T
    lam = sde.log_snr(torch.tensor([eps, sde.T], dtype=torch.float64))
    for part, cdf in [(t[:n - k], lambda u: (u - eps) / (sde.T - eps)),
                      (t[n - k:], lambda u: (lam[0] - sde.log_snr(u)) / (lam[0] - lam[1]))]:
        part, _ = torch.sort(part)
        emp = torch.arange(1, len(part) + 1, dtype=torch.float64) / len(part)
        assert (cdf(part) - emp).abs().max() < 1.63 / math.sqrt(len(part))
    assert torch.equal(sample_time(sde, 64, eps=eps, log_snr_share=0.0, generator=gen()),
                       sample_time(sde, 64, eps=eps, generator=gen()))
    stratified = sample_time(sde, 10, eps=eps, t_sampling="stratified", log_snr_share=0.5,
                             generator=gen(), dtype=torch.float64)
    strata = torch.floor((stratified[:5] - eps) / (sde.T - eps) * 5)
    assert torch.equal(strata, torch.arange(5, dtype=torch.float64))  # each part stratified
    lam_strata = torch.floor((lam[0] - sde.log_snr(stratified[5:])) / (lam[0] - lam[1]) * 5)
    assert torch.equal(lam_strata, torch.arange(5, dtype=torch.float64))


def test_bad_options_are_refused(sde):
    x0 = torch.zeros(4, 2)
    for share in (-0.1, 1.5, True, "0.3", float("nan")):
        with pytest.raises(ValueError, match=r"^log_snr_share\b.*\[0, 1\]"):
            dsm_loss(lambda x, t: x, sde, x0, log_snr_share=share)
    for weighting in ("likelihood", "likelihood_is"):
        with pytest.raises(ValueError, match=f"^log_snr_share\\b.*'{weighting}'"):
            sample_time(sde, 4, weighting=weighting, log_snr_share=0.5)
    with pytest.raises(ValueError, match="log_snr_share"):  # checked even when t is given
        dsm_loss(lambda x, t: x, sde, x0, t=torch.full((4,), 0.5), log_snr_share=2.0)
    with pytest.raises(ValueError, match="weighting"):
        dsm_loss(lambda x, t: x, sde, x0, weighting="snr")
    with pytest.raises(ValueError, match="t_sampling"):
        dsm_loss(lambda x, t: x, sde, x0, t_sampling="sobol")
    with pytest.raises(ValueError, match="eps"):
        dsm_loss(lambda x, t: x, sde, x0, eps=0.0)
    with pytest.raises(ValueError, match="noise"):
        dsm_loss(lambda x, t: x, sde, x0, noise=torch.zeros(4, 3))


def test_a_bad_number_of_times_is_a_one_line_error():
    # Before: sample_time(n=-1) was a RuntimeError from torch.
    with pytest.raises(ValueError, match=r"^n\b.*>= 1.*-1\b"):
        sample_time(VPSDE(), -1)


def test_classifier_loss_checks_the_noise_shape_like_dsm_loss():
    # classifier_loss had its own copy of dsm_loss's diffusion step, without the noise check: a
    # (B, 1) noise broadcast silently into every coordinate. One helper now serves both.
    sde, x0 = VPSDE(), torch.randn(4, 2)
    t, noise = torch.full((4,), 0.5), torch.randn(4, 2)
    logits = lambda x, t: torch.stack([x[:, 0], -x[:, 0]], 1)  # noqa: E731
    y = torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"^noise\b.*\bx0\b.*\(4, 1\)"):
        classifier_loss(logits, sde, x0, y=y, t=t, noise=noise[:, :1])
    # With the same t and z the classifier sees x_t = m x0 + s z, as dsm_loss's score does.
    m, s = sde.marginal_coeffs(t)
    x_t = m[:, None] * x0 + s[:, None] * noise
    expected = torch.nn.functional.cross_entropy(logits(x_t, t), y, reduction="none")
    torch.testing.assert_close(classifier_loss(logits, sde, x0, y=y, t=t, noise=noise), expected)
    seen = []
    dsm_loss(lambda x, t: seen.append(x) or torch.zeros_like(x), sde, x0, t=t, noise=noise)
    torch.testing.assert_close(seen[0], x_t)
