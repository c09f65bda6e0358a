"""Few-step sampling: the sigma window on the time grids, and 10 score calls that reach the target.

The targets are exact mixtures (the ring, and ``narrow`` with a std-0.01 component); samples are
judged by the energy distance to a fixed reference draw, against the noise level of true draws.
"""

import pytest
import torch

from scoresde import GaussianMixture, get_sde
from scoresde.sampling import default_eps, sample, time_edm, time_log_snr, time_uniform
from scoresde.sampling.grids import sigma_of_t
from scoresde.sampling.metrics import energy_distance

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
    (dict(sigma_max=0.1, sigma_min=0.2), ["sigma_min", "below sigma_max"]),
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
