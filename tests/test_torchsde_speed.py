"""torchsde's fixed steps: where their Brownian increments and coefficients come from.

Fixed steps draw the increments from the generator as ``em`` draws its noise, so torchsde's
Euler is Euler-Maruyama with the same draws; f and g read coefficients tabulated once; the noise
is additive, so Milstein's correction is exactly zero.
"""

import pytest
import torch

from scoresde import GaussianMixture, VPSDE, get_sde, sample
from scoresde.sampling import TORCHSDE_METHODS, sample_torchsde, time_uniform

MIX = GaussianMixture.ring()


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
def test_torchsde_euler_is_em_with_the_same_draws(sde_name):
    # Same prior draw, then one N(0, I) draw a step from the same generator, the same update;
    # the two differ only by torchsde's step of span / steps * (1 + 1e-6).
    sde = get_sde(sde_name)
    kw = dict(steps=50, denoise=False)
    x_em, _ = sample(MIX.score_fn(sde), sde, (64, 2), solver="em",
                     generator=torch.Generator().manual_seed(2), **kw)
    x_sde, _ = sample(MIX.score_fn(sde), sde, (64, 2), solver="torchsde", method="euler",
                      generator=torch.Generator().manual_seed(2), **kw)
    torch.testing.assert_close(x_sde, x_em, rtol=1e-3, atol=1e-3)


def test_fixed_steps_are_reproducible_and_use_the_generator():
    sde = VPSDE()

    def draw(seed):
        return sample(MIX.score_fn(sde), sde, (16, 2), solver="torchsde", steps=20,
                      method="srk", generator=torch.Generator().manual_seed(seed))[0]

    assert torch.equal(draw(0), draw(0)) and not torch.equal(draw(0), draw(1))


class _CountingVP(VPSDE):
    """The VP SDE counting how often its coefficient formulas are evaluated."""

    def __init__(self):
        super().__init__()
        self.evaluations = 0

    def drift_coeff(self, t):
        self.evaluations += 1
        return super().drift_coeff(t)

    def diffusion_coeff(self, t):
        self.evaluations += 1
        return super().diffusion_coeff(t)


@pytest.mark.parametrize("method", TORCHSDE_METHODS)
def test_fixed_steps_evaluate_the_coefficients_once(method):
    # The times torchsde asks for on fixed steps (and srk's stages) are tabulated in one call
    # of each formula: none is evaluated again per step.
    sde = _CountingVP()
    x = sde.prior_sampling((8, 2), generator=torch.Generator().manual_seed(0))
    ts = time_uniform(sde, 30, eps=1e-3)
    sde.evaluations = 0
    out, info = sample_torchsde(MIX.score_fn(sde), sde, x, ts, method=method,
                                generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(out).all() and info["nfe"] > 30
    assert sde.evaluations == 2


@pytest.mark.parametrize("adaptive", [False, True])
def test_milstein_is_euler_exactly_for_additive_noise(adaptive):
    sde = VPSDE()
    kw = dict(solver="torchsde", steps=20, adaptive=adaptive, rtol=1e-2, atol=1e-2)
    x_euler, _ = sample(MIX.score_fn(sde), sde, (32, 2), method="euler",
                        generator=torch.Generator().manual_seed(3), **kw)
    x_milstein, _ = sample(MIX.score_fn(sde), sde, (32, 2), method="milstein",
                           generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(x_milstein, x_euler)
