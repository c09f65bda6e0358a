"""Convergence orders: Euler-Maruyama weak order 1, Euler order 1, Heun and DPM-Solver++(2M) 2.

As diffrax's ``test_ode_order``: fit the slope of log error against log step count.
"""

import math

import numpy as np
import pytest
import torch

from scoresde import GaussianMixture, get_sde
from scoresde.sampling import (sample_dpmpp_2m, sample_em, sample_euler, sample_heun, sample_ode,
                               time_log_snr, time_uniform)


def _slope(steps, errors):
    return float(np.polyfit(np.log(steps), np.log(errors), 1)[0])


@pytest.mark.slow  # 10^4 coupled paths at every step count
@pytest.mark.parametrize("sde_name", ["vp", "subvp"])
def test_euler_maruyama_weak_order_one(sde_name):
    """E[x^2] on a Gaussian target with one Brownian path shared by every step count.

    The error of E[x^2] is C / N + o(1 / N); the difference between N and 2N steps, C / (2N),
    is measured on coupled paths, so its Monte Carlo noise (about 1e-4 at 10^4 paths) stays
    well below the smallest difference (about 1e-3), and its slope is -1.
    """
    sde = get_sde(sde_name)
    gauss = GaussianMixture(torch.zeros(1, 1), torch.full((1, 1, 1), 0.25))
    n, finest, eps = 10_000, 512, 1e-3
    gen = torch.Generator().manual_seed(0)
    x_T = sde.prior_sampling((n, 1), generator=gen, dtype=torch.float64)
    fine = time_uniform(sde, finest, eps)
    dw = torch.randn(finest, n, 1, generator=gen, dtype=torch.float64)
    dw *= (fine[:-1] - fine[1:]).sqrt()[:, None, None]

    def brownian(steps):
        k = finest // steps

        def noise(t_cur, t_next):  # the path's increment over [t_next, t_cur], standardised
            i = round((sde.T - t_cur) / (sde.T - eps) * finest)
            return dw[i:i + k].sum(0) / math.sqrt(t_cur - t_next)

        return noise

    moments = {}
    for steps in (32, 64, 128, 256, 512):
        x, _ = sample_em(gauss.score_fn(sde), sde, x_T, time_uniform(sde, steps, eps),
                         noise_sampler=brownian(steps))
        moments[steps] = float((x**2).mean())
    steps = [32, 64, 128, 256]
    diffs = [abs(moments[s] - moments[2 * s]) for s in steps]
    assert -1.25 < _slope(steps, diffs) < -0.8, diffs


@pytest.fixture(scope="module", params=["subvp", "ve"])
def ode_problem(request):
    """A random 2D mixture, 100 prior draws, and a tight DOP853 solve as the reference."""
    sde = get_sde(request.param)
    eps = 1e-3 if request.param == "subvp" else 1e-5
    mix = GaussianMixture.random(2, k=3, seed=0)
    x_T = sde.prior_sampling((100, 2), generator=torch.Generator().manual_seed(0),
                             dtype=torch.float64)
    ref, _ = sample_ode(mix.score_fn(sde), sde, x_T, torch.tensor([sde.T, eps]),
                        method="DOP853", rtol=1e-10, atol=1e-10)
    return sde, eps, mix, x_T, ref


@pytest.mark.parametrize("solver,order", [
    (sample_euler, 1), (sample_heun, 2), (sample_dpmpp_2m, 2)])
def test_ode_solver_order(solver, order, ode_problem):
    """Median over points of the final error (a few points that switch components at coarse
    steps would otherwise dominate a mean); log-SNR grids of 32 to 256 steps."""
    sde, eps, mix, x_T, ref = ode_problem
    steps = [32, 64, 128, 256]
    errors = []
    for n in steps:
        x, info = solver(mix.score_fn(sde), sde, x_T, time_log_snr(sde, n, eps))
        errors.append(float((x - ref).norm(dim=1).median()))
    assert abs(_slope(steps, errors) + order) < 0.25, errors
