"""Few-step sampling: the sigma window on the time grids, 10 score calls that reach the target,
and the multistep solvers' orders on Gaussian data, whose probability flow is exact.

The targets are exact mixtures (the ring, and ``narrow`` with a std-0.01 component); samples are
judged by the energy distance to a fixed reference draw, against the noise level of true draws.
"""

import math

import pytest
import torch

from scoresde import GaussianMixture, get_sde
from scoresde.sampling import (SAMPLERS, default_eps, sample, time_edm, time_log_snr,
                               time_uniform)
from scoresde.sampling.fewstep import data_stats, gaussian_head, gaussian_warm_start
from scoresde.sampling.grids import sigma_of_t
from scoresde.sampling.distances import energy_distance

from problems import assert_matches, reference

N = 1000
WINDOW = dict(sigma_max=5.0, sigma_min=0.01)


@pytest.fixture(scope="module", params=["ring", "narrow"])
def target(request):
    """A mixture, a reference draw and the 'indistinguishable' threshold (problems.reference)."""
    return reference(getattr(GaussianMixture, request.param)(), N)


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve", "cosine"])
@pytest.mark.parametrize("grid", [time_uniform, time_log_snr, time_edm])
def test_sigma_window_jumps_at_both_ends(grid, sde_name):
    sde = get_sde(sde_name)
    eps = default_eps(sde)
    ts = grid(sde, 9, eps, sigma_max=5.0, sigma_min=0.03)  # inside every SDE's range
    assert ts.shape == (10,) and ts[0] == sde.T and ts[-1] == eps
    assert (ts[1:] < ts[:-1]).all()
    sig = sigma_of_t(sde, ts)
    torch.testing.assert_close(sig[[1, -2]], torch.tensor([5.0, 0.03], dtype=torch.float64),
                               rtol=1e-6, atol=0)
    # Inside the window the grid is the unwindowed rule between the window's ends.
    inner = ts[1:-1]
    if grid is time_log_snr:
        lam = sde.log_snr(inner)
        torch.testing.assert_close(lam.diff(), lam.diff()[:1].expand(7), rtol=1e-6, atol=1e-8)
    # A window wider than the SDE's range changes nothing.
    torch.testing.assert_close(grid(sde, 9, eps, sigma_max=1e9, sigma_min=1e-9),
                               grid(sde, 9, eps))


@pytest.mark.parametrize("kwargs,words", [
    (dict(sigma_max=0.0), ["sigma_max", "> 0"]),
    (dict(sigma_min=-1.0), ["sigma_min", "> 0"]),
    (dict(sigma_max=0.1, sigma_min=0.2), ["sigma_min", "sigma_max", "0.2", "0.1"]),
    (dict(sigma_max=5.0, sigma_min=0.03, steps=2), ["steps", ">= 3"]),
])
def test_bad_window_raises_value_error(kwargs, words):
    sde, mix = get_sde("vp"), GaussianMixture.ring()
    with pytest.raises(ValueError) as err:
        sample(mix.score_fn(sde), sde, (4, 2), solver="dpmpp_2m", **{"steps": 9, **kwargs})
    assert all(w in str(err.value) for w in words), str(err.value)


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
def test_dpmpp_2m_reaches_the_target_in_ten_score_calls(sde_name, target):
    """9 steps of DPM-Solver++(2M) on the windowed log-SNR grid, plus the denoising call."""
    mix = target[0]
    sde = get_sde(sde_name)
    x, info = sample(mix.score_fn(sde), sde, (N, 2), solver="dpmpp_2m", steps=9,
                     grid="log_snr", generator=torch.Generator().manual_seed(7), **WINDOW)
    assert info["nfe"] == 10 and torch.isfinite(x).all()
    assert_matches(x, target)


def test_without_the_window_ten_calls_are_not_enough(target):
    """The same budget on the full sigma range misses the target (so the test above can fail)."""
    mix, ref, threshold = target
    sde = get_sde("subvp")
    x, _ = sample(mix.score_fn(sde), sde, (N, 2), solver="dpmpp_2m", steps=9, grid="log_snr",
                  generator=torch.Generator().manual_seed(7))
    assert energy_distance(x, ref) > threshold


def _gaussian_flow_errors(solver, sde, steps_list, warm):
    """Largest error at sigma = 0.05 of ``solver`` run from sigma = 2 on Gaussian data, whose
    probability flow is exact (fewstep.gaussian_head), for each number of log-SNR steps."""
    mean = torch.tensor([1.0, -2.0], dtype=torch.float64)
    cov = torch.tensor([[2.0, 0.6], [0.6, 0.3]], dtype=torch.float64)
    mix = GaussianMixture(mean[None], cov[None])
    stats = data_stats((2,), data_mean=mean, data_cov=cov)
    x = sde.prior_sampling((200, 2), generator=torch.Generator().manual_seed(0)).double()
    errors = []
    for steps in steps_list:
        lam = torch.linspace(-2 * math.log(2.0), -2 * math.log(0.05), steps + 1,
                             dtype=torch.float64)
        ts = torch.cat([torch.tensor([sde.T], dtype=torch.float64), sde.t_from_log_snr(lam)])
        start = gaussian_head(sde, x, ts, stats)
        options = {"warm": gaussian_warm_start(sde, x, ts, stats)} if warm else {}
        out, info = SAMPLERS[solver](mix.score_fn(sde), sde, start, ts[1:], **options)
        assert info["nfe"] == steps  # the corrector reuses the next step's call
        errors.append(float((out - gaussian_head(sde, x, ts[[0, -1]], stats)).abs().max()))
    return errors


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("warm", [False, True])
def test_unipc_converges_at_third_order_and_dpmpp_2m_at_second(sde_name, warm):
    sde = get_sde(sde_name)
    uni = _gaussian_flow_errors("unipc", sde, (8, 16, 32), warm)
    dpm = _gaussian_flow_errors("dpmpp_2m", sde, (8, 16, 32), warm)
    # Halving the step divides the error by about 2^3 = 8 (UniC-2) and 2^2 = 4 (2M).
    assert all(a / b > 6 for a, b in zip(uni, uni[1:])), uni
    if warm:  # started second order, 2M's rate is clean; cold, its first step blurs it
        assert all(3 < a / b < 5.5 for a, b in zip(dpm, dpm[1:])), dpm
    assert all(u < d for u, d in zip(uni, dpm)), (uni, dpm)


def test_warm_start_must_lie_above_the_grid():
    sde, mix = get_sde("vp"), GaussianMixture.ring()
    ts = torch.linspace(0.5, 1e-3, 5, dtype=torch.float64)
    x = torch.randn(4, 2)
    for solver in ("dpmpp_2m", "unipc"):
        with pytest.raises(ValueError, match=r"^warm\b.*\bts\b"):
            SAMPLERS[solver](mix.score_fn(sde), sde, x, ts, warm=(0.4, x))
