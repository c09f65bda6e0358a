"""Rectified flow, x_t = (1 - t) x_0 + t z, as one more Gaussian-linear SDE: its closed forms,
its probability flow as the flow's velocity, and its ends."""

import math

import pytest
import torch

from scoresde import (SDE, VPSDE, GaussianMixture, RectifiedFlow, ScoreModel, dsm_loss, get_sde,
                      load_run, run_demo, sample_time, time_weight, train)
from scoresde.config import upgrade_config
from scoresde.models.score_model import preconditioning
from scoresde.runs import read_config
from scoresde.sampling import default_eps

from problems import TINY, assert_refused, invoke

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
    torch.testing.assert_close(ds2, 2 * f * s.detach() ** 2 + g**2, rtol=1e-6, atol=1e-8)


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
    torch.testing.assert_close(SDE.t_from_log_snr(sde, lam), t, rtol=1e-6, atol=1e-8)
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
    # So the flow weighting puts a bounded weight w c_out^2 <= 1 + sigma_data^2 on the network's
    # own error, though w = 1 / (1 - t)^2 grows without bound; its peak is at t = sd^2 / (1 + sd^2).
    t = torch.linspace(1e-5, sde.T, 100_001, **T64)
    c_out = preconditioning(sde, t, sigma_data)[2]
    on_net = time_weight(sde, t, "flow") * c_out**2
    assert float(on_net.max()) <= 1 + sigma_data**2
    assert float(on_net.max()) > (1 + sigma_data**2) * (1 - 1e-6)


# ----- flow matching --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["rf", "vp", "ve"])
def test_flow_weighting_is_velocity_matching(name):
    """dsm_loss(weighting="flow") = ||v(x_t, t) - d x_t / dt||^2 with v the probability-flow
    drift of the score and d x_t / dt = m' x_0 + s' z (central differences); for rectified
    flow that target is z - x_0 and the weight 1 / (1 - t)^2."""
    sde, gen = get_sde(name), torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 3, generator=gen, **T64)
    z = torch.randn(64, 3, generator=gen, **T64)
    t = 0.01 + torch.rand(64, generator=gen, **T64) * (sde.T - 0.02)
    m, s = sde.marginal_coeffs(t)
    h = 1e-6  # central differences: truncation ~ h^2, rounding ~ 1e-16 / h
    (m_hi, s_hi), (m_lo, s_lo) = sde.marginal_coeffs(t + h), sde.marginal_coeffs(t - h)
    dm, ds = (m_hi - m_lo) / (2 * h), (s_hi - s_lo) / (2 * h)
    score = lambda x, tt: torch.sin(x) - x * tt[:, None]  # any function
    x_t = m[:, None] * x0 + s[:, None] * z
    velocity = sde.reverse(score, probability_flow=True).drift(x_t, t)
    target = dm[:, None] * x0 + ds[:, None] * z
    if name == "rf":
        torch.testing.assert_close(target, z - x0, rtol=0, atol=1e-8)
        torch.testing.assert_close(time_weight(sde, t, "flow"), 1 / (1 - t) ** 2)
    loss = dsm_loss(score, sde, x0, weighting="flow", t=t, noise=z)
    torch.testing.assert_close(loss, ((velocity - target) ** 2).sum(1), rtol=1e-6, atol=1e-8)


def _logit_normal_cdf(t, loc, scale, eps, T):
    phi = lambda v: torch.special.ndtr((torch.logit(torch.as_tensor(v, **T64)) - loc) / scale)
    return (phi(t) - phi(eps)) / (phi(T) - phi(eps))


@pytest.mark.parametrize("loc, scale, eps", [(0.0, 1.0, 1e-5), (-0.5, 0.8, 0.2)])
def test_logit_normal_times_follow_their_truncated_law(loc, scale, eps):
    """Kolmogorov-Smirnov against the truncated logit-normal CDF: 4000 iid draws stay below the
    level-1e-3 critical value 1.95 / sqrt(n) = 0.031; stratified draws put exactly one time in
    each of the n strata of that CDF."""
    sde, n = get_sde("rf"), 4000
    t = sample_time(sde, n, eps=eps, time_sampling="logit_normal", time_loc=loc,
                    time_scale=scale, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)
    assert t.shape == (n,) and float(t.min()) >= eps and float(t.max()) <= sde.T
    cdf = _logit_normal_cdf(t.sort().values, loc, scale, eps, sde.T)
    grid = torch.arange(1, n + 1, **T64) / n
    ks = float(torch.maximum(grid - cdf, cdf - (grid - 1 / n)).max())
    assert ks < 1.95 / math.sqrt(n), ks
    # The uniform law is far from it (so the test can fail).
    uniform = torch.linspace(eps, sde.T, n, **T64)
    assert float((_logit_normal_cdf(uniform, loc, scale, eps, sde.T) - grid).abs().max()) > 0.06
    strat = sample_time(sde, 50, eps=eps, t_sampling="stratified", time_sampling="logit_normal",
                        time_loc=loc, time_scale=scale, generator=torch.Generator().manual_seed(1),
                        dtype=torch.float64)
    bins = (_logit_normal_cdf(strat, loc, scale, eps, sde.T) * 50).floor().long()
    assert torch.equal(bins, torch.arange(50))


@pytest.mark.parametrize("kwargs, words", [
    (dict(time_sampling="lognormal"), "time_sampling"),
    (dict(time_sampling="logit_normal", time_scale=0.0), "time_scale"),
    (dict(time_sampling="logit_normal", time_loc=float("inf")), "time_loc"),
    (dict(time_sampling="logit_normal", weighting="likelihood_is"), "likelihood_is"),
    (dict(time_sampling="logit_normal", log_snr_share=0.3), "log_snr_share"),
    (dict(time_loc=1.0), "time_loc.*logit_normal"),
    (dict(time_scale=2.0), "time_scale.*logit_normal"),
])
def test_bad_time_sampling_is_refused_in_one_line(kwargs, words):
    with pytest.raises(ValueError, match=words):
        sample_time(get_sde("rf"), 8, **kwargs)


@pytest.mark.parametrize("loc, scale", [(20.0, 1.0), (-20.0, 1.0), (-12.5, 0.1)])
def test_logit_normal_times_far_in_a_tail_stay_on_their_side(loc, scale):
    """A window [eps, T] more than 8 scales from loc still draws from its own end: the
    normal's CDF there is taken from its logarithm, not rounded to 0 or 1."""
    sde = get_sde("rf")
    t = sample_time(sde, 2000, eps=1e-5, time_sampling="logit_normal", time_loc=loc,
                    time_scale=scale, generator=torch.Generator().manual_seed(0))
    near = sde.T if loc > 0 else 1e-5
    assert float((t.double() - near).abs().median()) < 1e-3 * (1 if loc > 0 else 0.01)


def test_logit_normal_needs_a_time_range_inside_the_unit_interval():
    with pytest.raises(ValueError, match=r"T <= 1.*\b2\b"):
        sample_time(VPSDE(T=2.0), 8, time_sampling="logit_normal")


# ----- training -------------------------------------------------------------------------------
def test_a_flow_run_records_its_options_and_draws_logit_normal_times(tmp_path, monkeypatch):
    import scoresde.loop as loop  # the loop draws each batch's times

    drawn, real = [], loop.sample_time
    monkeypatch.setattr(loop, "sample_time", lambda sde, n, **kw: drawn.append(
        real(sde, n, **kw)) or drawn[-1])
    train(tmp_path / "run", steps=3, sde="rf", weighting="flow", time_sampling="logit_normal",
          time_loc=0.5, time_scale=0.5, **{**TINY, "batch_size": 512})
    model, sde, config = load_run(tmp_path / "run")
    assert isinstance(sde, RectifiedFlow) and model.sde is sde
    assert (config["weighting"], config["time_sampling"], config["time_loc"],
            config["time_scale"]) == ("flow", "logit_normal", 0.5, 0.5)
    # 1536 draws of sigmoid(0.5 + 0.5 n): the median is sigmoid(0.5) = 0.622 (its standard error
    # is about 0.003), far from uniform t's 0.5.
    assert abs(float(torch.cat(drawn).median()) - 0.6225) < 0.015
    with pytest.raises(ValueError, match="likelihood_is"):
        train(tmp_path / "bad", steps=1, sde="rf", weighting="likelihood_is",
              time_sampling="logit_normal", **TINY)


def test_the_command_trains_and_refuses_rectified_flow_options(tmp_path):
    result = invoke("train", "--sde", "rf", "--weighting", "flow", "--time-sampling",
                    "logit_normal", "--time-scale", "0.8", "--steps", "2", "--batch-size", "16",
                    "--width", "8", "--run", tmp_path / "run", "--quiet")
    assert result.exit_code == 0, result.output
    config = read_config(tmp_path / "run")
    assert config["sde"]["name"] == "rf" and config["time_scale"] == 0.8
    assert_refused(invoke("train", "--sde", "rf", "--time-scale", "0", "--run",
                          tmp_path / "bad"), 2, "--time-scale")
    assert_refused(invoke("train", "--time-sampling", "logit", "--run", tmp_path / "bad"), 2,
                   "--time-sampling", "logit")


def test_old_runs_read_their_times_as_drawn_then():
    new = upgrade_config({"schema": 8, "data": "moons"})
    assert (new["time_sampling"], new["time_loc"], new["time_scale"]) == ("uniform", 0.0, 1.0)


@pytest.mark.slow  # seconds: trains, samples four ways, integrates the likelihood
def test_the_demo_trains_samples_and_measures_rectified_flow(tmp_path):
    figure, summary = run_demo(tmp_path / "run", sde="rf", steps=5, n=20, quick=True,
                               progress=False)
    assert figure.axes[0].figure is figure and summary[4].startswith("log-likelihood")
    assert math.isfinite(float(summary[4].split()[1]))
    assert read_config(tmp_path / "run")["sde"] == RectifiedFlow().config()
