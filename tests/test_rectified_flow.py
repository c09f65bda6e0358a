"""Rectified flow, x_t = (1 - t) x_0 + t z, as one more Gaussian-linear SDE: its closed forms,
its probability flow as the flow's velocity, and its ends."""

import math

import pytest
import torch

from scoresde import SDE, GaussianMixture, RectifiedFlow, ScoreModel, get_sde
from scoresde.sampling import default_eps

T64 = dict(dtype=torch.float64)


def test_formulas_and_defaults():
    sde = get_sde("rf")
    assert isinstance(sde, RectifiedFlow) and sde.T == 1 - 1e-3 and default_eps(sde) == 1e-3
    t = torch.linspace(0.0, sde.T, 101, **T64)
    m, s = sde.marginal_coeffs(t)
    torch.testing.assert_close(m, 1 - t, rtol=0, atol=0)
    torch.testing.assert_close(s, t, rtol=0, atol=0)
    torch.testing.assert_close(sde.drift_coeff(t), -1 / (1 - t), rtol=1e-15, atol=0)
    torch.testing.assert_close(sde.diffusion_coeff(t) ** 2, 2 * t / (1 - t), rtol=1e-14, atol=0)
    assert RectifiedFlow(T=0.99).config() == {"name": "rf", "T": 0.99}
    assert get_sde(**RectifiedFlow(T=0.99).config()).T == 0.99


@pytest.mark.parametrize("T", [0.0, 1.0, 1.5, float("nan")])
def test_the_path_stops_before_its_singular_end(T):
    with pytest.raises(ValueError, match=r"^T\b"):
        RectifiedFlow(T=T)


def test_dm_dt_and_ds2_dt_against_f_and_g():
    """For x_t = m x_0 + s z to solve dx = f x dt + g dw: m' = f m and (s^2)' = 2 f s^2 + g^2;
    derivatives by autograd of the marginals, f and g from their own formulas."""
    sde = get_sde("rf")
    t = torch.linspace(1e-3, sde.T, 200, **T64).requires_grad_(True)
    m, s = sde.marginal_coeffs(t)
    dm, = torch.autograd.grad(m.sum(), t)
    ds2, = torch.autograd.grad((s**2).sum(), t)
    t = t.detach()
    f, g = sde.drift_coeff(t), sde.diffusion_coeff(t)
    torch.testing.assert_close(dm, f * m.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ds2, 2 * f * s.detach() ** 2 + g**2, rtol=1e-9, atol=1e-9)


def test_prior_log_density_and_draws():
    sde = get_sde("rf")
    z = sde.prior_sampling((20_000, 3), generator=torch.Generator().manual_seed(0), **T64)
    assert sde.prior_std() == pytest.approx(sde.T, rel=1e-15)
    # The std of 60,000 normal draws has standard error 1 / sqrt(2 * 60,000) = 0.003.
    assert abs(float(z.std()) - sde.T) < 0.012
    scale = torch.tensor(sde.T, **T64)
    expected = torch.distributions.Normal(0.0, scale).log_prob(z[:5]).sum(1)
    torch.testing.assert_close(sde.prior_logp(z[:5]), expected, rtol=1e-12, atol=1e-12)


def test_log_snr_and_its_closed_form_inverse():
    sde = get_sde("rf")
    t = torch.linspace(1e-4, sde.T, 50, **T64)
    lam = sde.log_snr(t)
    torch.testing.assert_close(lam, 2 * torch.log((1 - t) / t), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sde.t_from_log_snr(lam), t, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(SDE.t_from_log_snr(sde, lam), t, rtol=1e-9, atol=1e-9)
    # The default ends give a log-SNR range symmetric about 0: +-2 log(999).
    ends = sde.log_snr(torch.tensor([default_eps(sde), sde.T], **T64))
    torch.testing.assert_close(ends, torch.tensor([1, -1], **T64) * 2 * math.log(999))


def test_probability_flow_is_the_flows_velocity_up_to_the_end():
    """For Gaussian data N(mu, c^2 I), E[z - x_0 | x_t] has a closed form; the probability-flow
    drift f x - g^2 score / 2 of the exact score is it, finite as t -> 1 though f and g^2 blow
    up like 1 / (1 - t)."""
    mu, c = torch.tensor([1.5, -0.5], **T64), 0.7
    mix = GaussianMixture(mu[None], c**2 * torch.eye(2, **T64)[None], [1.0])
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(1), **T64)
    for T in (1 - 1e-3, 1 - 1e-6):
        sde = RectifiedFlow(T=T)
        flow = sde.reverse(mix.score_fn(sde), probability_flow=True)
        for t in (0.3, T):
            a, s = 1 - t, t
            var = a**2 * c**2 + s**2
            # x_0 | x_t and z | x_t: Gaussian regression of each on x_t = a x_0 + s z.
            x0_mean = mu + a * c**2 / var * (x - a * mu)
            z_mean = s / var * (x - a * mu)
            torch.testing.assert_close(flow.drift(x, t), z_mean - x0_mean, rtol=1e-6, atol=1e-6)
            assert float(flow.drift(x, t).abs().max()) < 10


class Constant(torch.nn.Module):
    """A network whose output is ``k`` everywhere."""

    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x, c_noise):
        return torch.full_like(x, self.k)


def test_preconditioning_keeps_the_velocity_of_a_bounded_network_bounded():
    """At t -> 1 the score's error is multiplied by g^2 / 2 ~ 1 / (1 - t) in the flow; the
    preconditioning's c_out = m sigma_data c_in falls like 1 - t, so a change of 1 in the
    network's output moves the velocity by sigma_data c_in = sigma_data / sqrt(m^2 sigma_data^2
    + s^2), at most sigma_data / s, at every t."""
    sde, sigma_data = RectifiedFlow(T=1 - 1e-6), 0.5
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), **T64)
    flows = [sde.reverse(ScoreModel(Constant(k), sde, sigma_data=sigma_data),
                         probability_flow=True) for k in (0.0, 1.0)]
    for t in (1e-3, 0.5, sde.T):
        moved = flows[1].drift(x, t) - flows[0].drift(x, t)
        a, s = (1 - t) * sigma_data, t
        torch.testing.assert_close(moved, torch.full_like(x, sigma_data / math.hypot(a, s)))
        assert float(moved.max()) <= sigma_data / s * (1 + 1e-9)
