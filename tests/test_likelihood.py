"""Likelihood through the probability-flow ODE, checked against exact Gaussian-mixture densities."""

import math

import pytest
import torch

from scoresde import (GaussianMixture, bits_per_dim, decode, encode, get_sde, log_likelihood)

EPS = 1e-5
FLOW_SDES = ["vp", "subvp", "ve", "rf"]


def exact_prior(mixture, sde):
    """The mixture's exact density at T, in place of the SDE's Gaussian prior."""
    return lambda z: mixture.marginal_log_prob(z, sde.T, sde)


def draw(mixture, n, seed, dtype=torch.float64):
    return mixture.sample(n, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ----- exactness against the mixture's log p_eps --------------------------------------------
# RK45 at its default per-sample tolerance 1e-5 keeps 2D errors near 1e-4 (worst seen 2.3e-4
# over 64 samples of each case). In 5D an outlier between modes reached 1.0e-3 at 1e-5 and
# 1.3e-5 at 1e-6 (the global error is not bounded by the local tolerance), so 5D runs at 1e-6.
@pytest.mark.parametrize("sde_name", FLOW_SDES)
@pytest.mark.parametrize("mixture, tol", [
    (GaussianMixture.ring(), 1e-5), (GaussianMixture.narrow(), 1e-5),
    (GaussianMixture.random(5, k=3, seed=1), 1e-6),
], ids=["ring", "narrow", "random5d"])
def test_exact_divergence_matches_mixture_density(mixture, tol, sde_name):
    sde = get_sde(sde_name)
    x = draw(mixture, 64, seed=3)
    logp, info = log_likelihood(mixture.score_fn(sde), sde, x, rtol=tol, atol=tol,
                                prior_logp=exact_prior(mixture, sde))
    exact = mixture.marginal_log_prob(x, EPS, sde)
    assert logp.shape == (64,) and logp.dtype == torch.float64
    assert info["divergence"] == "exact" and info["nfe"] > 0
    assert (logp - exact).abs().max() < 1e-3
    torch.testing.assert_close(info["prior_logp"] + info["divergence_integral"], logp)
    assert (info["stderr"] == 0).all()


def test_float32_within_stated_tolerance():
    # float32 rounds the score to ~1e-7 relative; along ~150 evaluations that moved logp by
    # <= 2e-5 nats from float64 on these mixtures, so 2e-3 leaves the 1e-3 ODE budget doubled.
    mixture, sde = GaussianMixture.ring(), get_sde("vp")
    x = draw(mixture, 48, seed=4, dtype=torch.float32)
    logp, _ = log_likelihood(mixture.score_fn(sde), sde, x, prior_logp=exact_prior(mixture, sde))
    assert logp.dtype == torch.float32
    exact = mixture.marginal_log_prob(x.double(), EPS, sde)
    assert (logp.double() - exact).abs().max() < 2e-3


def test_any_data_shape():
    mixture = GaussianMixture.random(4, k=2, seed=5)
    mixture = GaussianMixture(mixture.means, mixture.covs, mixture.weights, event_shape=(1, 2, 2))
    sde = get_sde("subvp")
    x = draw(mixture, 16, seed=6)
    assert x.shape == (16, 1, 2, 2)
    logp, info = log_likelihood(mixture.score_fn(sde), sde, x, prior_logp=exact_prior(mixture, sde))
    assert info["z"].shape == x.shape
    assert (logp - mixture.marginal_log_prob(x, EPS, sde)).abs().max() < 1e-3


@pytest.mark.parametrize("sde_name", FLOW_SDES)
def test_default_prior_differs_by_exactly_the_prior_mismatch(sde_name):
    # With the SDE's N(0, s(T)^2 I) prior, logp is off by log N(z) - log p_T(z) at the latent z,
    # which is ~0.002 nats for VP on the ring and ~0.02 for VE: the test checks the difference
    # per sample to the ODE's 1e-3 budget, and that it is the mismatch that is not negligible.
    mixture, sde = GaussianMixture.ring(), get_sde(sde_name)
    x = draw(mixture, 32, seed=7)
    logp, info = log_likelihood(mixture.score_fn(sde), sde, x)
    z = info["z"]
    mismatch = sde.prior_logp(z) - mixture.marginal_log_prob(z, sde.T, sde)
    torch.testing.assert_close(info["prior_logp"], sde.prior_logp(z))
    error = logp - mixture.marginal_log_prob(x, EPS, sde)
    assert (error - mismatch).abs().max() < 1e-3
    assert error.abs().max() < mismatch.abs().max() + 1e-3


def test_nfe_counts_real_calls():
    mixture, sde = GaussianMixture.ring(), get_sde("vp")
    calls = []
    score = mixture.score_fn(sde)

    def counting(x, t):
        calls.append(x.shape[0])
        return score(x, t)

    _, info = log_likelihood(counting, sde, draw(mixture, 8, seed=8))
    assert info["nfe"] == len(calls) > 10 and set(calls) == {8}


# ----- Hutchinson in 784 dimensions ----------------------------------------------------------
def test_hutchinson_unbiased_with_honest_stderr_and_root_probes_decay():
    # N(0, I) is stationary under VP: score = -x, the flow leaves x in place and each Gaussian
    # probe v gives the divergence integral c (|v|^2 - D), c = log m(eps) - log m(T), so the
    # estimate's error per sample has mean 0 and std c sqrt(2 D / probes) exactly. Rademacher
    # probes have |v|^2 = D: zero error for this diagonal Jacobian.
    dim, batch = 784, 64
    sde = get_sde("vp")
    x = torch.randn(batch, dim, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    normal = torch.distributions.Normal(0.0, 1.0)
    exact = normal.log_prob(x).sum(1)
    log_m = torch.log(sde.marginal_coeffs(torch.tensor([EPS, sde.T], dtype=torch.float64))[0])
    c = float(log_m[0] - log_m[1])
    run = dict(prior_logp=lambda z: normal.log_prob(z).sum(1), divergence="auto")
    score = lambda y, t: -y  # noqa: E731  (the exact score of N(0, I) at every t under VP)
    logp, info = log_likelihood(score, sde, x, hutchinson="rademacher", **run)
    assert info["divergence"] == "hutchinson" and torch.isnan(info["stderr"]).all()
    assert (logp - exact).abs().max() < 1e-3
    rmse = {}
    for probes in (1, 4, 16):
        gen = torch.Generator().manual_seed(probes)
        logp, info = log_likelihood(score, sde, x, hutchinson="gaussian", probes=probes,
                                    generator=gen, **run)
        error, sigma = logp - exact, c * math.sqrt(2 * dim / probes)
        # The mean of 64 errors has std sigma / 8: 4 of those is a 6e-5 false-alarm rate.
        assert abs(float(error.mean())) < 4 * sigma / math.sqrt(batch)
        rmse[probes] = float(error.pow(2).mean().sqrt())
        # An RMS over 64 near-Gaussian errors is within 4 / sqrt(2 * 64) = 35% of sigma.
        assert abs(rmse[probes] / sigma - 1) < 0.35
        if probes > 1:
            # The reported stderr^2 has (probes - 1) degrees of freedom per sample; averaged over
            # 64 samples its relative std is sqrt(2 / (64 (probes - 1))) <= 10%: allow 4 of it.
            assert abs(float(info["stderr"].pow(2).mean()) / sigma**2 - 1) < 0.4
            z_scores = error / info["stderr"]
            assert float(z_scores.abs().median()) < 1.5  # |t_3| median 0.76, |N(0,1)| 0.67
    slope = math.log(rmse[16] / rmse[1]) / math.log(16)
    assert abs(slope + 0.5) < 0.15


# ----- bits per dimension of discrete data ---------------------------------------------------
def discrete_log_prob(mixture, sde, x_int, bits, lo, hi):
    """Exact log P(x_int) of p_eps binned on the 2^bits cells of [lo, hi] (diagonal covariances)."""
    m, s = sde.marginal_coeffs(torch.tensor(EPS, dtype=torch.float64))
    std = torch.sqrt(m**2 * torch.diagonal(mixture.covs, dim1=1, dim2=2) + s**2)  # (K, D)
    width = (hi - lo) / 2**bits
    left = lo + width * x_int.reshape(x_int.shape[0], 1, -1).double()  # (B, 1, D)
    normal = torch.distributions.Normal(m * mixture.means, std)
    cell = normal.cdf(left + width) - normal.cdf(left)  # (B, K, D)
    return torch.log((mixture.weights * cell.prod(-1)).sum(-1))


@pytest.mark.parametrize("lo, hi", [(-1.0, 1.0), (0.0, 1.0)])
def test_bits_per_dim_of_quantised_mixture(lo, hi):
    # Two diagonal Gaussians on [-1, 1]^2, affinely moved onto [lo, hi]^2, binned at 8 bits.
    a, b = (hi - lo) / 2, (hi + lo) / 2
    means = torch.tensor([[-0.3, 0.2], [0.4, -0.1]], dtype=torch.float64) * a + b
    covs = torch.diag_embed(torch.tensor([[0.09, 0.04], [0.04, 0.0625]], dtype=torch.float64))
    mixture, sde = GaussianMixture(means, covs * a**2, [0.6, 0.4]), get_sde("vp")
    x = draw(mixture, 400, seed=10)
    inside = ((x > lo) & (x < hi)).all(1)
    x_int = ((x[inside][:24] - lo) / (hi - lo) * 256).floor().to(torch.uint8)
    gen = torch.Generator().manual_seed(11)
    bpd, info = bits_per_dim(mixture.score_fn(sde), sde, x_int, data_range=(lo, hi),
                             dequant_samples=2, dtype=torch.float64, generator=gen,
                             prior_logp=exact_prior(mixture, sde))
    exact = discrete_log_prob(mixture, sde, x_int, 8, lo, hi)
    # Every dequantised draw and log P itself lie between the min and max of log p over the
    # cell, so they differ by at most that range: |score| . width at the centre, plus a
    # curvature term width^2 / min variance (the cell is 1/256 of the range) -- and the ODE's 1e-3.
    width = (hi - lo) / 256
    centre = lo + width * (x_int.double() + 0.5)
    score = mixture.score_fn(sde)(centre, torch.full((len(centre),), EPS, dtype=torch.float64))
    spread = width * score.abs().sum(1) + 2 * width**2 / (0.04 * a**2)
    error = info["log_prob_bound"] - exact
    assert (error.abs() < spread + 1e-3).all()
    # A constant-offset mistake (the log-Jacobian 2 log(width) = -9.7 to -11 nats) is far out.
    assert float(error.abs().mean()) < 0.05
    torch.testing.assert_close(bpd, -info["log_prob_bound"] / (2 * math.log(2)))
    assert (info["bpd_jensen"] >= bpd).all()  # log-mean-exp >= mean of logs, draw by draw
    assert info["dequant_samples"] == 2 and info["log_jacobian"] == pytest.approx(
        2 * math.log(width))


def test_bits_per_dim_importance_weighted_bound_reaches_coarse_probabilities():
    # At 2 bits (cells 0.5 wide, std 0.4) log p varies by ~1 nat across a cell, so one
    # dequantisation draw is far from log P; 32 importance-weighted draws estimate it with a
    # measured standard error of ~0.013 nats on the mean over 32 cells: 0.05 is ~4 of them.
    mixture = GaussianMixture(torch.tensor([[0.1, -0.2]]), torch.eye(2)[None] * 0.16)
    sde = get_sde("vp")
    x_int = ((draw(mixture, 32, seed=12).clamp(-0.99, 0.99) + 1) * 2).floor().long()
    exact = discrete_log_prob(mixture, sde, x_int, 2, -1.0, 1.0)
    _, info = bits_per_dim(mixture.score_fn(sde), sde, x_int, bits=2, dequant_samples=32,
                           dtype=torch.float64, generator=torch.Generator().manual_seed(14),
                           prior_logp=exact_prior(mixture, sde))
    assert abs(float((exact - info["log_prob_bound"]).mean())) < 0.05


# ----- encode / decode ----------------------------------------------------------------------
@pytest.mark.parametrize("sde_name", FLOW_SDES)
@pytest.mark.parametrize("mixture", [GaussianMixture.ring(), GaussianMixture.narrow()],
                         ids=["ring", "narrow"])
def test_encode_decode_round_trip(mixture, sde_name):
    sde = get_sde(sde_name)
    x = draw(mixture, 64, seed=15)
    z = encode(mixture.score_fn(sde), sde, x)
    assert z.shape == x.shape and 0.5 < float(z.std()) / sde.prior_std() < 2  # prior-like
    back = decode(mixture.score_fn(sde), sde, z)
    assert (back - x).abs().max() < 1e-4


# ----- bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    (dict(x=torch.ones(4, 2, dtype=torch.long)), "floating-point"),
    (dict(x=torch.tensor([[0.0, math.nan]])), "finite"),
    (dict(x=torch.ones(4)), "shape"),
    (dict(divergence="trace"), "divergence"),
    (dict(hutchinson="normal"), "hutchinson"),
    (dict(probes=0), "probes"),
    (dict(eps=0.0), "eps"),
    (dict(eps=1.0), "eps"),
    (dict(error_norm="max"), "error_norm"),
])
def test_bad_input_raises_value_error(change, message):
    mixture, sde = GaussianMixture.ring(), get_sde("vp")
    kwargs = dict(x=torch.ones(4, 2), divergence="auto")
    kwargs.update(change)
    with pytest.raises(ValueError, match=message):
        log_likelihood(mixture.score_fn(sde), sde, **kwargs)


def test_bad_input_elsewhere():
    mixture, sde = GaussianMixture.ring(), get_sde("ve")
    score = mixture.score_fn(sde)
    with pytest.raises(ValueError, match="eps"):
        encode(score, sde, torch.ones(2, 2), eps=-1.0)
    with pytest.raises(ValueError, match="finite"):
        decode(score, sde, torch.full((2, 2), math.inf))
    with pytest.raises(TypeError, match="callable"):
        log_likelihood("score", sde, torch.ones(2, 2))
    with pytest.raises(ValueError, match="integer"):
        bits_per_dim(score, sde, torch.ones(2, 2))
    with pytest.raises(ValueError, match="levels"):
        bits_per_dim(score, sde, torch.full((2, 2), 300, dtype=torch.int64))
    with pytest.raises(ValueError, match="data_range"):
        bits_per_dim(score, sde, torch.zeros(2, 2, dtype=torch.uint8), data_range=(1.0, 1.0))
    with pytest.raises(ValueError, match="shape"):
        log_likelihood(lambda x, t: x[:, :1], sde, torch.ones(2, 2))


def test_bad_tolerances_give_one_line_errors_that_name_them():
    # Before: rtol=-1 was reported as "rtol=-0.5" (after the per-sample scaling) and a string
    # atol as a bare comparison TypeError.
    sde, mix = get_sde("vp"), GaussianMixture.ring()
    x = mix.sample(4, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"^rtol\b.*\D-1$"):  # the value given, unscaled
        log_likelihood(mix.score_fn(sde), sde, x, rtol=-1)
    with pytest.raises(ValueError, match=r"^atol\b.*'x'"):
        encode(mix.score_fn(sde), sde, x, atol="x")
