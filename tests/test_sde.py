"""The SDEs against the closed forms of Song et al. (2021) and against their own simulation."""

import math

import numpy as np
import pytest
import torch

from scoresde import SDE, CosineVPSDE, SubVPSDE, VESDE, VPSDE, get_sde, subVPSDE

from problems import OrnsteinUhlenbeck

TIMES = np.linspace(0.0, 1.0, 41)


def paper_formulas(name):
    """(f(t), g(t), m(t), s(t)) written out from the papers, in NumPy."""
    b0, b1, smin, smax = 0.1, 20.0, 0.01, 50.0
    beta = lambda t: b0 + t * (b1 - b0)
    integral = lambda t: b0 * t + 0.5 * (b1 - b0) * t**2  # int_0^t beta
    if name == "vp":
        return (lambda t: -0.5 * beta(t), lambda t: np.sqrt(beta(t)),
                lambda t: np.exp(-0.5 * integral(t)), lambda t: np.sqrt(1 - np.exp(-integral(t))))
    if name == "subvp":
        return (lambda t: -0.5 * beta(t),
                lambda t: np.sqrt(beta(t) * (1 - np.exp(-2 * integral(t)))),
                lambda t: np.exp(-0.5 * integral(t)), lambda t: 1 - np.exp(-integral(t)))
    if name == "ve":
        sigma = lambda t: smin * (smax / smin) ** t
        return (lambda t: 0 * t, lambda t: sigma(t) * np.sqrt(2 * np.log(smax / smin)),
                lambda t: 1 + 0 * t, lambda t: np.sqrt(sigma(t) ** 2 - smin**2))
    # Nichol & Dhariwal: alpha_bar(t) = f(t) / f(0), f(t) = cos^2((t' + s) / (1 + s) pi / 2).
    s, tmax = 0.008, 0.9946
    phi = lambda t: (t * tmax + s) / (1 + s) * np.pi / 2
    abar = lambda t: np.cos(phi(t)) ** 2 / np.cos(phi(0)) ** 2
    dlog_abar = lambda t: -2 * np.tan(phi(t)) * tmax / (1 + s) * np.pi / 2
    return (lambda t: 0.5 * dlog_abar(t), lambda t: np.sqrt(-dlog_abar(t)),
            lambda t: np.sqrt(abar(t)), lambda t: np.sqrt(1 - abar(t)))


@pytest.mark.parametrize("name", ["vp", "subvp", "ve", "cosine"])
@pytest.mark.parametrize("shape", [(2,), (3, 4, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_closed_forms(name, shape, dtype):
    sde = get_sde(name)
    f, g, m, s = paper_formulas(name)
    t = torch.tensor(TIMES, dtype=dtype)
    x = torch.randn(len(TIMES), *shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    drift, diffusion = sde.sde(x, t)
    mean, std = sde.marginal_prob(x, t)
    rtol = 1e-5 if dtype == torch.float32 else 1e-10
    for out in (drift, diffusion, mean, std):
        assert out.dtype == dtype
    xn = x.double().numpy()
    bcast = (slice(None),) + (None,) * len(shape)
    np.testing.assert_allclose(drift.double(), f(TIMES)[bcast] * xn, rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(diffusion.double(), g(TIMES), rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(mean.double(), m(TIMES)[bcast] * xn, rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(std.double(), s(TIMES), rtol=rtol, atol=1e-7)
    # The prior is N(0, s(T)^2 I): its log-density, written out.
    z = x[:3]
    var = s(1.0) ** 2
    d = math.prod(shape)
    sq_norm = (z.double() ** 2).reshape(3, -1).sum(1)
    expected = -0.5 * d * np.log(2 * np.pi * var) - sq_norm / (2 * var)
    np.testing.assert_allclose(sde.prior_logp(z).double(), expected, rtol=rtol)
    assert sde.prior_logp(z).dtype == dtype


def test_paper_defaults_and_alias():
    assert (VPSDE().beta_min, VPSDE().beta_max, VPSDE().T) == (0.1, 20.0, 1.0)
    assert (VESDE().sigma_min, VESDE().sigma_max) == (0.01, 50.0)
    assert subVPSDE is SubVPSDE
    assert isinstance(get_sde("cosine"), CosineVPSDE)
    assert get_sde("sub-VP").config() == SubVPSDE().config()


@pytest.mark.parametrize("name", ["vp", "subvp", "ve", "cosine"])
def test_log_snr_inverse(name):
    sde = get_sde(name)
    t = torch.linspace(1e-4, 1.0, 50, dtype=torch.float64)
    lam = sde.log_snr(t)
    assert (lam[1:] < lam[:-1]).all()  # decreasing in t
    torch.testing.assert_close(sde.t_from_log_snr(lam), t, rtol=1e-9, atol=1e-9)
    # The generic bisection agrees with each closed form.
    torch.testing.assert_close(SDE.t_from_log_snr(sde, lam), t, rtol=1e-9, atol=1e-9)


@pytest.mark.slow  # 20,000 Euler-Maruyama paths of 2,000 steps
@pytest.mark.parametrize("name", ["vp", "subvp", "ve", "cosine", "rf"])
def test_forward_simulation_matches_marginal(name):
    """Euler-Maruyama with 2000 steps from a fixed x0 reproduces marginal_prob's moments."""
    sde = get_sde(name)
    gen = torch.Generator().manual_seed(1)
    n, steps, t_end = 20000, 2000, 0.6
    x0 = torch.tensor([1.5, -0.5], dtype=torch.float64)
    x = x0.repeat(n, 1)
    dt = t_end / steps
    for i in range(steps):
        t = torch.full((n,), i * dt, dtype=torch.float64)
        drift, g = sde.sde(x, t)
        x = x + drift * dt + g[:, None] * math.sqrt(dt) * torch.randn(x.shape, generator=gen,
                                                                      dtype=x.dtype)
    mean, std = sde.marginal_prob(x0[None], torch.tensor([t_end], dtype=torch.float64))
    # Standard errors of the sample mean and variance of n Gaussian draws, and a 0.5% allowance
    # for the O(dt) bias of Euler-Maruyama at this step size.
    se_mean = float(std) / math.sqrt(n)
    var = float(std) ** 2
    se_var = var * math.sqrt(2 / (n - 1))
    assert torch.all((x.mean(0) - mean[0]).abs() < 5 * se_mean + 5e-3 * mean[0].abs())
    assert torch.all((x.var(0) - var).abs() < 5 * se_var + 5e-3 * var)


def test_user_sde_gets_everything():
    sde = OrnsteinUhlenbeck(theta=2.0, sigma=1.5)  # dx = -2 x dt + 1.5 dw
    x = torch.randn(6, 3, dtype=torch.float64)
    t = torch.full((6,), 0.5, dtype=torch.float64)
    drift, g = sde.sde(x, t)
    torch.testing.assert_close(drift, -2.0 * x)
    mean, std = sde.marginal_prob(x, t)
    torch.testing.assert_close(mean, math.exp(-1.0) * x)
    expected_std = 1.5 * math.sqrt((1 - math.exp(-2.0)) / 4.0)
    torch.testing.assert_close(std, torch.full((6,), expected_std, dtype=torch.float64))
    z = sde.prior_sampling((1000, 3), generator=torch.Generator().manual_seed(0),
                           dtype=torch.float64)
    assert z.shape == (1000, 3) and z.dtype == torch.float64
    assert abs(float(z.std()) - sde.prior_std()) < 0.05
    lam = sde.log_snr(t)
    torch.testing.assert_close(sde.t_from_log_snr(lam), t)
    # Reverse-time drift f x - g^2 score; the probability flow halves the score term.
    score = lambda x, t: -x
    rdrift, rdiff = sde.reverse(score).sde(x, t)
    torch.testing.assert_close(rdrift, -2.0 * x + 2.25 * x)
    torch.testing.assert_close(rdiff, torch.full((6,), 1.5, dtype=torch.float64))
    fdrift, fdiff = sde.reverse(score, probability_flow=True).sde(x, t)
    torch.testing.assert_close(fdrift, -2.0 * x + 1.125 * x)
    assert torch.all(fdiff == 0)
    assert "custom" in sde.config()["name"]


def test_prior_sampling_shapes_and_seeds(sde):
    a = sde.prior_sampling((4, 1, 3, 3), generator=torch.Generator().manual_seed(3))
    b = sde.prior_sampling((4, 1, 3, 3), generator=torch.Generator().manual_seed(3))
    assert a.shape == (4, 1, 3, 3) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: VPSDE(beta_min=5.0, beta_max=1.0), "beta_max"),
        (lambda: VPSDE(beta_min=-1.0), "beta_min"),
        (lambda: SubVPSDE(beta_min=2.0, beta_max=2.0), "beta_max"),
        (lambda: VESDE(sigma_min=0.0), "sigma_min"),
        (lambda: VESDE(sigma_min=-1.0), "sigma_min"),
        (lambda: VESDE(sigma_min=10.0, sigma_max=5.0), "sigma_max"),
        (lambda: CosineVPSDE(t_max=1.0), "t_max"),
        (lambda: VPSDE(T=0.0), "T"),
        (lambda: get_sde("nope"), "vp, subvp, ve, cosine"),
        (lambda: get_sde("vp", sigma_max=3.0), "'vp'.*sigma_max"),
    ],
)
def test_bad_parameters(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_times(sde):
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"^t\b.*\b1\.5\b"):  # the time, the value outside
        sde.sde(x, torch.tensor([0.1, 0.2, 1.5, 0.3]))
    with pytest.raises(ValueError, match=r"^t\b.*-0\.1\b"):
        sde.marginal_prob(x, -0.1)
    with pytest.raises(ValueError, match=r"^t\b.*\(4,\).*\(2,\)"):  # the shape wanted, given
        sde.sde(x, torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"^t\b.*\bnan\b"):
        sde.sde(x, torch.tensor([0.1, float("nan"), 0.2, 0.3]))
    drift, diffusion = sde.sde(x, 0.5)  # a number is broadcast over the batch
    assert drift.shape == (4, 2) and diffusion.shape == (4,)


def test_reverse_sde_number_time_is_its_tensor_time(sde):
    """The solvers' fast path (one number t, coefficients as floats) equals the tensor path."""
    score = lambda x, t: -x * (1 + t[:, None])
    x = torch.randn(5, 3, dtype=torch.float64)
    for flow in (False, True):
        rev = sde.reverse(score, probability_flow=flow)
        on_grid = sde.reverse(score, probability_flow=flow,
                              times=torch.tensor([0.7, 0.3], dtype=torch.float64))
        for t in (0.7, 0.3, 0.45):
            drift, diffusion = rev.sde(x, torch.full((5,), t, dtype=torch.float64))
            for r in (rev, on_grid):
                fast_drift, fast_diffusion = r.sde(x, t)
                torch.testing.assert_close(fast_drift, drift, rtol=1e-12, atol=1e-12)
                torch.testing.assert_close(fast_diffusion, diffusion, rtol=1e-12, atol=0)
                assert r.diffusion(t) == float(diffusion[0])
            f, c, g = rev.coeffs(t)
            torch.testing.assert_close(rev.drift(x, t, score=score(x, torch.full((5,), t))),
                                       f * x + c * score(x, torch.full((5,), t)))
        assert on_grid.coeffs(0.3) == rev.coeffs(0.3)
    with pytest.raises(ValueError, match=rf"^t\b.*\b{sde.T + 0.5:g}\b"):
        rev.coeffs(sde.T + 0.5)
