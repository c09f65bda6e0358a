"""The Gaussian exponential integrator: exact on Gaussian data at any number of calls, its
quadrature against the closed form, its convergence orders on a mixture, honest call counts."""

import json
import math

import pytest
import torch

from scoresde import GaussianMixture, get_sde
from scoresde.sampling import impute, sample, solve_inverse
from scoresde.sampling.fewstep import data_stats
from scoresde.sampling.gei import gaussian_part, gei_grid, residual_weights, sample_gei
from scoresde.sampling.grids import time_log_snr

from conftest import SDE_NAMES
from problems import assert_refused, invoke


def anisotropic_gaussian(d=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    cov = a @ a.T / d + torch.diag(torch.logspace(-4, 0, d, dtype=torch.float64))
    mean = 3 * torch.randn(d, generator=gen, dtype=torch.float64)
    return mean, cov


@pytest.mark.parametrize("sde_name", SDE_NAMES)
@pytest.mark.parametrize("steps", [1, 2, 3, 5])
def test_exact_on_gaussian_data_at_any_number_of_calls(sde_name, steps):
    """With the data's mean and covariance the sample is mu + S^(1/2) z for the prior draw's
    z = x_T / s(T), to float64 round-off, whatever the calls see."""
    sde = get_sde(sde_name)
    mean, cov = anisotropic_gaussian()
    score = GaussianMixture(mean[None], cov[None]).score_fn(sde)
    calls = []

    def counted(x, t):
        calls.append(1)
        return score(x, t)

    x, info = sample(counted, sde, (64, 5), solver="gei", steps=steps, dtype=torch.float64,
                     generator=torch.Generator().manual_seed(1), data_mean=mean, data_cov=cov)
    x_T = sde.prior_sampling((64, 5), generator=torch.Generator().manual_seed(1),
                             dtype=torch.float64)
    s_T = float(sde.marginal_coeffs(torch.tensor([sde.T], dtype=torch.float64))[1])
    evals, evecs = torch.linalg.eigh(cov)
    exact = mean + (x_T / s_T) @ (evecs * evals.sqrt()) @ evecs.T
    torch.testing.assert_close(x, exact, rtol=0, atol=1e-11)
    assert info["nfe"] == len(calls) == steps and info["gaussian_head"]


def test_an_isotropic_gaussian_from_data_std_alone():
    sde = get_sde("ve")
    score = GaussianMixture(torch.full((1, 3), 0.5), 4 * torch.eye(3)[None]).score_fn(sde)
    x, _ = sample(score, sde, (32, 3), solver="gei", steps=3, dtype=torch.float64,
                  generator=torch.Generator().manual_seed(2), data_std=2.0, data_mean=0.5)
    x_T = sde.prior_sampling((32, 3), generator=torch.Generator().manual_seed(2),
                             dtype=torch.float64)
    s_T = float(sde.marginal_coeffs(torch.tensor([sde.T], dtype=torch.float64))[1])
    torch.testing.assert_close(x, 0.5 + 2 * x_T / s_T, rtol=0, atol=1e-11)


def test_it_follows_the_exact_flow_of_a_mixture():
    """With the default options on a log-SNR grid from T to eps = 1e-5 it converges, at second
    order, to the adaptive ODE solve (1e-9) from the same prior draw with Tweedie's step: the
    residual's weights, their sign and the start all enter (halving the weights alone gives an
    RMS error of 0.07 at 100 steps, measured)."""
    mix = GaussianMixture.unseen(3)
    mean, cov = mix.moments()
    sde = get_sde("vp")
    kw = dict(eps=1e-5, dtype=torch.float64)
    ref, _ = sample(mix.score_fn(sde), sde, (300, 2), solver="ode", rtol=1e-9, atol=1e-9,
                    generator=torch.Generator().manual_seed(4), **kw)
    err = []
    for steps in (25, 100):
        x, info = sample(mix.score_fn(sde), sde, (300, 2), solver="gei", steps=steps,
                         grid="log_snr", generator=torch.Generator().manual_seed(4),
                         data_mean=mean, data_cov=cov, **kw)
        assert info["nfe"] == steps and info["grid_name"] == "log_snr"
        err.append(float((x - ref).pow(2).mean().sqrt()))
    assert err[1] < 2e-3 * float(ref.std()) / 0.36 and err[0] / err[1] > 8, err  # 3.5e-4, 16x


@pytest.mark.parametrize("options", [dict(grid="edm"), dict(grid="uniform"),
                                     dict(sigma_max=5.0)])
def test_a_grid_of_the_callers_keeps_it_exact_on_gaussian_data(options):
    sde = get_sde("vp")
    mean, cov = anisotropic_gaussian()
    x, info = sample(GaussianMixture(mean[None], cov[None]).score_fn(sde), sde, (16, 5),
                     solver="gei", steps=3, dtype=torch.float64, data_mean=mean, data_cov=cov,
                     generator=torch.Generator().manual_seed(1), **options)
    x_T = sde.prior_sampling((16, 5), generator=torch.Generator().manual_seed(1),
                             dtype=torch.float64)
    evals, evecs = torch.linalg.eigh(cov)
    s_T = float(sde.marginal_coeffs(torch.tensor([1.0], dtype=torch.float64))[1])
    exact = mean + (x_T / s_T) @ (evecs * evals.sqrt()) @ evecs.T
    torch.testing.assert_close(x, exact, rtol=0, atol=1e-10)
    assert info["nfe"] == 3


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_a_last_call_that_returns_nan_is_named(steps):
    sde = get_sde("vp")
    mix = GaussianMixture.ring()
    mean, cov = mix.moments()

    stats = data_stats((2,), data_mean=mean, data_cov=cov)
    last = float(gei_grid(sde, steps, 1e-3, gaussian_part(stats))[-1])

    def poisoned(x, t):  # NaN at the last call only
        out = mix.score_fn(sde)(x, t)
        return torch.where((t <= last)[:, None], torch.full_like(out, math.nan), out)

    with pytest.raises(FloatingPointError, match=r"gei: .*last step.*t = "):
        sample(poisoned, sde, (8, 2), solver="gei", steps=steps, data_mean=mean, data_cov=cov,
               generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("a,b", [(2.0, 1.0), (0.5, -3.0), (-4.0, -6.0)])
def test_the_quadrature_equals_the_closed_form(a, b):
    """One node: int_a^b (lambda + e^(2 tau))^(-1/2) dtau = [-asinh(sqrt(lambda) e^-tau) /
    sqrt(lambda)]_a^b, and -[e^-tau]_a^b at lambda = 0. Two nodes integrate tau exactly too:
    their weights sum to the one-node weight."""
    evals = torch.tensor([0.0, 1e-4, 0.3, 2.0, 50.0], dtype=torch.float64)
    (one,) = residual_weights([a], a, b, evals)
    root = evals[1:].sqrt()
    closed = (torch.asinh(root * math.exp(-a)) - torch.asinh(root * math.exp(-b))) / root
    torch.testing.assert_close(one[1:], closed, rtol=1e-12, atol=0)
    assert abs(float(one[0]) - (math.exp(-a) - math.exp(-b))) < 1e-10 * math.exp(-b)
    two = residual_weights([a, a + 0.7], a, b, evals)
    torch.testing.assert_close(two[0] + two[1], one, rtol=1e-12, atol=0)


@pytest.mark.slow  # five orders x five solves of up to 2560 steps
def test_convergence_orders_on_a_mixture():
    """Error against a 2560-step solve from the same draw, on a grid whose first call is at T
    (so no part of the path is left to the Gaussian alone): each point of the residual's
    polynomial adds one order, and the Adams-Moulton step one more."""
    mix = GaussianMixture.unseen(3)
    mean, cov = mix.moments()
    sde = get_sde("vp")
    gaussian = gaussian_part(data_stats((2,), data_mean=mean, data_cov=cov))
    x_T = sde.prior_sampling((200, 2), generator=torch.Generator().manual_seed(0),
                             dtype=torch.float64)

    def solve(steps, **options):
        ts = time_log_snr(sde, steps, 1e-3)
        ts = torch.cat([ts[:1], ts[:1] * (1 - 1e-9), ts[1:]])  # the first call at T
        x, _ = sample_gei(mix.score_fn(sde), sde, x_T, ts, gaussian=gaussian, warm_start=False,
                          **options)
        return x

    for options, expected in [(dict(order=1), 1), (dict(order=2), 2),
                              (dict(order=2, moulton=True), 3), (dict(order=3), 3),
                              (dict(order=3, moulton=True), 4)]:
        ref = solve(2560, **options)
        err = [float((solve(n, **options) - ref).pow(2).mean().sqrt()) for n in (80, 160)]
        slope = math.log2(err[0] / err[1])
        assert slope > expected - 0.4, (options, err, slope)


def test_refusals():
    sde = get_sde("vp")
    score = GaussianMixture.ring().score_fn(sde)
    with pytest.raises(ValueError, match="data_std"):
        sample(score, sde, (4, 2), solver="gei", steps=5)
    with pytest.raises(ValueError, match="denoise=False"):
        sample(score, sde, (4, 2), solver="gei", steps=5, data_std=3.0, denoise=False)
    with pytest.raises(ValueError, match="order"):
        sample(score, sde, (4, 2), solver="gei", steps=5, data_std=3.0, order=4)
    with pytest.raises(TypeError, match="moulton"):
        sample(score, sde, (4, 2), solver="gei", steps=5, data_std=3.0, moulton="none")
    with pytest.raises(ValueError, match="gei"):
        impute(score, sde, torch.zeros(4, 2), torch.zeros(4, 2, dtype=torch.bool),
               solver="gei", steps=5)
    with pytest.raises(ValueError, match="gei"):
        solve_inverse(score, sde, torch.eye(2)[:1], torch.zeros(1, 1), solver="gei", steps=5)


def test_the_command_draws_with_it_from_the_runs_statistics(in_workdir):
    """`scoresde sample --solver gei --steps 5`: five calls, no denoising call after them."""
    result = invoke("sample", "--solver", "gei", "--steps", 5, "--n", 16, "--json", "--out",
                    "g.npz")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["solver"] == "gei" and record["nfe"] == 5
    result = invoke("sample", "--solver", "gei", "--no-denoise", "--n", 4, "--out", "h.npz")
    assert_refused(result, 2, "gei", "denoise", besides=["using run"])
