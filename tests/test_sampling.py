"""Samplers against exact Gaussian-mixture scores: statistics, counts, seeds, options, any SDE."""

import math

import pytest
import torch

import scoresde
from scoresde import GaussianMixture, get_sde
from scoresde.sampling import (CORRECTORS, GRIDS, PREDICTORS, SAMPLERS, default_eps, sample,
                               sample_pc, time_edm, time_log_snr, time_uniform)
from scoresde.sampling.grids import sigma_of_t

from problems import OrnsteinUhlenbeck, assert_matches, reference, stats_for

N = 1000  # points per sample: the statistic's noise floor below is set at this size


@pytest.fixture(scope="module")
def ring():
    """The ring, a fixed reference draw and the threshold for 'indistinguishable from it'."""
    return reference(GaussianMixture.ring(), N)


# Documented step counts at which each solver matches the ring on every SDE (exact score).
CASES = {
    "em": dict(steps=300),
    "pc": dict(steps=200),
    "ode": dict(steps=1),
    "torchsde": dict(steps=200),
    "euler": dict(steps=50),
    "heun": dict(steps=25),
    "dpmpp_2m": dict(steps=30),
    "unipc": dict(steps=30),
    "gei": dict(steps=10),  # with the ring's mean and covariance, which it needs
}


@pytest.mark.slow
@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve", "rf"])
@pytest.mark.parametrize("solver", list(CASES))
def test_every_solver_samples_the_ring(solver, sde_name, ring):
    assert set(CASES) == set(SAMPLERS)
    sde = get_sde(sde_name)
    x, info = sample(ring[0].score_fn(sde), sde, (N, 2), solver=solver,
                     generator=torch.Generator().manual_seed(7), **CASES[solver],
                     **stats_for(solver, ring[0]))
    assert x.shape == (N, 2) and info["solver"] == solver
    assert_matches(x, ring)


@pytest.mark.parametrize("predictor,corrector", [
    ("ancestral", "none"), ("euler_maruyama", "ald"), ("reverse_diffusion", "none"),
    ("ancestral", "langevin")])
def test_predictor_corrector_pairs(predictor, corrector, ring):
    sde = get_sde("subvp")  # score_sde's Langevin corrector crashes on sub-VP
    x, info = sample(ring[0].score_fn(sde), sde, (N, 2), solver="pc", steps=200,
                     predictor=predictor, corrector=corrector,
                     generator=torch.Generator().manual_seed(3))
    assert_matches(x, ring)
    calls_per_step = (predictor != "none") + (corrector != "none")
    assert info["nfe"] == 200 * calls_per_step + 1


@pytest.mark.slow  # four torchsde methods, one on 1000 paths
def test_torchsde_methods(ring):
    sde = get_sde("vp")
    score = ring[0].score_fn(sde)
    kw = dict(solver="torchsde", steps=40, generator=torch.Generator().manual_seed(5))
    x_euler, _ = sample(score, sde, (200, 2), method="euler", **kw)
    kw["generator"].manual_seed(5)
    x_milstein, _ = sample(score, sde, (200, 2), method="milstein", **kw)
    # The noise is additive (g depends on t only), so Milstein's correction vanishes.
    torch.testing.assert_close(x_milstein, x_euler)
    x, info = sample(score, sde, (N, 2), solver="torchsde", steps=60, method="srk",
                     generator=torch.Generator().manual_seed(5))
    assert_matches(x, ring)
    x, info = sample(score, sde, (50, 2), solver="torchsde", steps=20, method="reversible_heun",
                     generator=torch.Generator().manual_seed(5))
    assert torch.isfinite(x).all() and info["nfe"] >= 21


def test_own_sde_samples_correctly(ring):
    sde = OrnsteinUhlenbeck()
    assert default_eps(sde) == 1e-3  # m(T) = exp(-5) < 1/2: VP-type
    for solver, steps in (("em", 300), ("dpmpp_2m", 30)):
        x, _ = sample(ring[0].score_fn(sde), sde, (N, 2), solver=solver, steps=steps,
                      generator=torch.Generator().manual_seed(11))
        assert_matches(x, ring)


@pytest.mark.parametrize("solver", list(SAMPLERS))
def test_nfe_counts_real_calls_and_seed_fixes_samples(solver):
    sde = get_sde("vp")
    mix = GaussianMixture.ring()
    calls = []

    def score(x, t):
        calls.append(1)
        return mix.score_fn(sde)(x, t)

    kw = dict(solver=solver, steps=12, device="cpu", **stats_for(solver, mix))
    x1, info = sample(score, sde, (64, 2), generator=torch.Generator().manual_seed(1), **kw)
    assert info["nfe"] == len(calls) > 0
    x2, _ = sample(score, sde, (64, 2), generator=torch.Generator().manual_seed(1), **kw)
    x3, _ = sample(score, sde, (64, 2), generator=torch.Generator().manual_seed(2), **kw)
    assert torch.equal(x1, x2) and not torch.equal(x1, x3)


@pytest.mark.parametrize("solver", ["pc", "heun", "dpmpp_2m"])
def test_any_data_rank(solver):
    """Samples of a mixture over (1, 4, 4) 'images' equal those over flat 16-vectors."""
    flat = GaussianMixture.random(16, k=3, seed=1)
    img = GaussianMixture(flat.means, flat.covs, flat.weights, event_shape=(1, 4, 4))
    sde = get_sde("vp")
    kw = dict(solver=solver, steps=10, dtype=torch.float64)
    x_img, _ = sample(img.score_fn(sde), sde, (8, 1, 4, 4),
                      generator=torch.Generator().manual_seed(0), **kw)
    x_flat, _ = sample(flat.score_fn(sde), sde, (8, 16),
                       generator=torch.Generator().manual_seed(0), **kw)
    assert x_img.shape == (8, 1, 4, 4)
    torch.testing.assert_close(x_img.reshape(8, 16), x_flat)


def test_denoise_is_tweedie_at_eps():
    sde, mix = get_sde("ve"), GaussianMixture.narrow()
    kw = dict(solver="dpmpp_2m", steps=8, dtype=torch.float64)
    x, info_raw = sample(mix.score_fn(sde), sde, (32, 2), denoise=False,
                         generator=torch.Generator().manual_seed(0), **kw)
    x0, info = sample(mix.score_fn(sde), sde, (32, 2), generator=torch.Generator().manual_seed(0),
                      **kw)
    assert info["nfe"] == info_raw["nfe"] + 1 == 9
    torch.testing.assert_close(x0, mix.posterior_mean(x, 1e-5, sde))


def test_callback_sees_every_step_and_can_replace_x():
    sde, mix = get_sde("vp"), GaussianMixture.ring()
    seen = []

    def pin_first_coordinate(d):  # the imputation hook: known entries are put back each step
        seen.append((d["i"], d["t"], d["t_next"]))
        x = d["x"].clone()
        x[:, 0] = 1.5
        return x

    x, info = sample(mix.score_fn(sde), sde, (16, 2), solver="pc", steps=5, denoise=False,
                     callback=pin_first_coordinate, generator=torch.Generator().manual_seed(0))
    assert [s[0] for s in seen] == list(range(5))
    assert [s[1] for s in seen] == info["grid"][:-1].tolist()
    assert torch.all(x[:, 0] == 1.5)


def test_ancestral_step_is_ddpm_for_vp_and_smld_for_ve():
    mix = GaussianMixture.ring()
    x = torch.randn(6, 2, dtype=torch.float64) * 3
    z = torch.randn(6, 2, dtype=torch.float64)
    ts = torch.tensor([0.6, 0.55], dtype=torch.float64)
    for sde in (get_sde("vp"), get_sde("ve")):
        out, _ = sample_pc(mix.score_fn(sde), sde, x, ts, predictor="ancestral", corrector="none",
                           noise_sampler=lambda t0, t1: z)
        score = mix.score_fn(sde)(x, ts[:1].expand(6))
        m, s = sde.marginal_coeffs(ts)
        if sde.name == "vp":  # DDPM: beta = 1 - alpha_bar_t / alpha_bar_{t-1}
            abar = m**2
            beta = 1 - abar[0] / abar[1]
            mean = (x + beta * score) / torch.sqrt(1 - beta)
            std = torch.sqrt(beta * (1 - abar[1]) / (1 - abar[0]))
        else:  # SMLD (score_sde's AncestralSamplingPredictor for VE), sigma^2 = s^2 here
            mean = x + (s[0] ** 2 - s[1] ** 2) * score
            std = torch.sqrt(s[1] ** 2 * (s[0] ** 2 - s[1] ** 2) / s[0] ** 2)
        torch.testing.assert_close(out, mean + std * z)


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve", "cosine", "rf"])
def test_grids(sde_name):
    sde = get_sde(sde_name)
    eps = default_eps(sde)
    assert eps == (1e-5 if sde_name == "ve" else 1e-3)
    for grid in (time_uniform(sde, 12, eps), time_log_snr(sde, 12, eps), time_edm(sde, 12, eps)):
        assert grid.shape == (13,) and grid[0] == sde.T and grid[-1] == eps
        assert (grid[1:] < grid[:-1]).all()
    lam = sde.log_snr(time_log_snr(sde, 12, eps))
    torch.testing.assert_close(lam.diff(), lam.diff()[:1].expand(12), rtol=1e-6, atol=1e-8)
    root = sigma_of_t(sde, time_edm(sde, 12, eps, rho=7.0)) ** (1 / 7)
    torch.testing.assert_close(root.diff(), root.diff()[:1].expand(12), rtol=1e-6, atol=1e-9)
    assert set(GRIDS) == {"uniform", "log_snr", "edm"}


@pytest.mark.parametrize("kwargs,words", [
    (dict(solver="rk4"), ["solver", "'rk4'", "pc", "dpmpp_2m"]),
    (dict(solver="pc", predictor="leapfrog"), ["predictor", "'leapfrog'", *PREDICTORS]),
    (dict(solver="pc", corrector="hmc"), ["corrector", "'hmc'", *CORRECTORS]),
    (dict(solver="pc", snr=0.0), ["snr", "> 0"]),
    (dict(solver="pc", snr=-1), ["snr", "> 0"]),
    (dict(solver="em", steps=0), ["steps", ">= 1"]),
    (dict(solver="heun", steps=2.5), ["steps", ">= 1"]),
    (dict(solver="em", eps=0.0), ["eps", "(0, T)"]),
    (dict(solver="em", eps=1.0), ["eps", "(0, T)"]),
    (dict(solver="heun", grid="cosine"), ["grid", "'cosine'", "uniform", "log_snr", "edm"]),
    (dict(solver="heun", snr=0.2), ["snr", "heun"]),
    (dict(solver="ode", method="Euler"), ["method", "'Euler'", "RK45"]),
    (dict(solver="torchsde", method="rk4"), ["torchsde", "method", "'rk4'", "srk"]),
    (dict(solver="torchsde", grid="edm"), ["torchsde", "grid", "'uniform'"]),
])
def test_bad_options_raise_value_error(kwargs, words):
    sde, mix = get_sde("vp"), GaussianMixture.ring()
    with pytest.raises(ValueError) as err:
        sample(mix.score_fn(sde), sde, (4, 2), **{"steps": 4, **kwargs})
    assert all(w in str(err.value) for w in words), str(err.value)
    assert "\n" not in str(err.value)


def test_exports():
    assert scoresde.sample is sample and scoresde.SAMPLERS is SAMPLERS


def test_one_table_serves_samplers_grids_and_imputation():
    from scoresde.sampling import DEFAULT_GRIDS, IMPUTATION_SOLVERS, SOLVERS
    assert list(SAMPLERS) == list(SOLVERS) == list(DEFAULT_GRIDS)
    assert all(SAMPLERS[name] is row.sampler for name, row in SOLVERS.items())
    assert all(DEFAULT_GRIDS[name] == row.grid in GRIDS for name, row in SOLVERS.items())
    assert IMPUTATION_SOLVERS == ("em", "pc", "euler", "heun", "dpmpp_2m", "unipc")
    assert scoresde.IMPUTATION_SOLVERS is IMPUTATION_SOLVERS


def test_predictors_and_correctors_are_step_functions_by_name():
    assert list(PREDICTORS) == ["euler_maruyama", "reverse_diffusion", "ancestral", "none"]
    assert list(CORRECTORS) == ["langevin", "ald", "langevin_batch", "none"]
    assert all(callable(step) for step in [*PREDICTORS.values(), *CORRECTORS.values()])
    assert "ancestral" in PREDICTORS and "hmc" not in CORRECTORS


def test_euler_maruyama_is_the_reverse_sdes_drift_and_diffusion():
    """One em step equals x + drift dt + g sqrt(-dt) z with sde.reverse's drift and diffusion."""
    sde, mix = get_sde("subvp"), GaussianMixture.ring()
    x = torch.randn(6, 2, dtype=torch.float64)
    z = torch.randn(6, 2, dtype=torch.float64)
    ts = torch.tensor([0.6, 0.55], dtype=torch.float64)
    out, info = sample_pc(mix.score_fn(sde), sde, x, ts, predictor="euler_maruyama",
                          corrector="none", noise_sampler=lambda t0, t1: z)
    drift, diffusion = sde.reverse(mix.score_fn(sde)).sde(x, ts[:1].expand(6))
    dt = float(ts[1] - ts[0])
    torch.testing.assert_close(out, x + drift * dt + diffusion[:, None] * math.sqrt(-dt) * z)
    assert info["nfe"] == 1


def test_torchsde_adaptive_reports_its_tolerances():
    sde, mix = get_sde("vp"), GaussianMixture.ring()
    x, info = sample(mix.score_fn(sde), sde, (32, 2), solver="torchsde", steps=10, adaptive=True,
                     rtol=1e-2, atol=1e-2, generator=torch.Generator().manual_seed(0))
    assert info["adaptive"] and info["rtol"] == info["atol"] == 1e-2 and info["steps"] is None
    _, info = sample(mix.score_fn(sde), sde, (32, 2), solver="torchsde", steps=10)
    assert not info["adaptive"] and "rtol" not in info


def test_seed_from_is_the_generators_draw_and_torchsde_uses_it():
    # torchsde's Brownian motion was seeded by torch.randint(..., generator=g) with no device,
    # which raises for a CUDA generator; the seed is now drawn on the generator's device.
    from scoresde.utils import seed_from

    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert seed_from(a) == int(torch.randint(0, 2**31 - 1, (1,), generator=b))
    sde, mix = get_sde("vp"), GaussianMixture.ring()
    x1, _ = sample(mix.score_fn(sde), sde, (4, 2), solver="torchsde", steps=4,
                   generator=torch.Generator().manual_seed(0))
    x2, _ = sample(mix.score_fn(sde), sde, (4, 2), solver="torchsde", steps=4,
                   generator=torch.Generator().manual_seed(0))
    assert torch.equal(x1, x2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torchsde_sampler_runs_with_a_cuda_generator():
    sde, mix = get_sde("vp"), GaussianMixture.ring()
    gen = torch.Generator(device="cuda").manual_seed(0)
    x, _ = sample(mix.score_fn(sde), sde, (4, 2), solver="torchsde", steps=4, generator=gen)
    assert x.device.type == "cuda" and torch.isfinite(x).all()


def test_an_sde_name_instead_of_an_sde_is_a_one_line_type_error():
    # Before: an SDE name instead of an SDE was an AttributeError deep in the grid code.
    mix = GaussianMixture.ring()
    with pytest.raises(TypeError, match=r"^sde\b.*scoresde\.SDE.*\bstr\b"):
        sample(mix.score_fn(get_sde("vp")), "vp", (4, 2), steps=2)
