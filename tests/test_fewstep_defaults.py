"""Few-step defaults: with the data's statistics, 10 score calls reach the target, no options.

``sample(..., data_std= / data_mean= / data_cov=)`` gives ``euler``, ``heun`` and ``dpmpp_2m``
at few steps an exact Gaussian first step and a log-SNR grid scaled by the data; samples are
judged by the energy distance to a reference draw against true-vs-true noise (problems.py).
"""

import pytest
import torch

from scoresde import GaussianMixture, get_sde
from scoresde.sampling import impute, sample
from scoresde.sampling.fewstep import data_stats, gaussian_head
from scoresde.sampling.grids import get_grid, default_eps
from scoresde.sampling.distances import energy_distance

from problems import assert_matches, reference

N = 1000


def moments(mix):
    """The mixture's exact mean (D,) and covariance (D, D)."""
    return mix.moments()


def ten_calls(mix, sde, seed=7, solver="dpmpp_2m", **stats):
    x, info = sample(mix.score_fn(sde), sde, (N, 2), solver=solver, steps=10,
                     generator=torch.Generator().manual_seed(seed), **stats)
    assert info["nfe"] == 10 and info["gaussian_head"]
    return x


@pytest.mark.parametrize("solver", ["dpmpp_2m", "unipc"])
@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve", "rf"])
@pytest.mark.parametrize("preset", ["ring", "narrow"])
def test_ten_score_calls_reach_the_presets_with_the_data_covariance(preset, sde_name, solver):
    target = reference(getattr(GaussianMixture, preset)(), N)
    mean, cov = moments(target[0])
    assert_matches(ten_calls(target[0], get_sde(sde_name), solver=solver, data_mean=mean,
                             data_cov=cov), target)


@pytest.mark.slow
@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
def test_unipc_in_ten_score_calls_reaches_unseen_mixtures_with_the_data_covariance(sde_name):
    """Ten drawn mixtures (scale 0.5-5, narrow axes down to 0.001) on each SDE, three draws."""
    sde = get_sde(sde_name)
    for seed in range(5):
        for narrow in (False, True):
            mix, ref, threshold = reference(GaussianMixture.unseen(seed, narrow=narrow), N)
            mean, cov = moments(mix)
            stats = [energy_distance(ten_calls(mix, sde, seed=r, solver="unipc", data_mean=mean,
                                               data_cov=cov), ref) for r in range(3)]
            assert sum(stats) / 3 < threshold, (seed, narrow, stats, threshold)


@pytest.mark.slow
@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("narrow", [False, True])
def test_ten_score_calls_reach_unseen_mixtures_from_sample_statistics(narrow, sde_name):
    """Mixtures of drawn scale and widths; the user knows only the mean and std of samples."""
    sde = get_sde(sde_name)
    for seed in (0, 3, 4):
        mix = GaussianMixture.unseen(seed, narrow=narrow)
        data = mix.sample(20_000, generator=torch.Generator().manual_seed(seed))
        mix, ref, threshold = reference(mix, N)
        stats = [energy_distance(ten_calls(mix, sde, seed=r, data_mean=data.mean(0),
                                           data_std=float(data.std(0).pow(2).mean().sqrt())),
                                 ref) for r in range(3)]
        assert sum(stats) / 3 < threshold, (seed, stats, threshold)


def test_the_same_budget_without_statistics_misses_the_target():
    """Today's default grid at 10 calls misses (so the tests above can fail)."""
    mix, ref, threshold = reference(GaussianMixture.narrow(), N)
    sde = get_sde("subvp")
    x, info = sample(mix.score_fn(sde), sde, (N, 2), solver="dpmpp_2m", steps=9,
                     generator=torch.Generator().manual_seed(7))
    assert info["nfe"] == 10 and not info["gaussian_head"]
    assert energy_distance(x, ref) > threshold


@pytest.mark.parametrize("explicit", [dict(grid="edm"), dict(grid="log_snr"),
                                      dict(sigma_max=5.0), dict(sigma_min=0.01)])
def test_explicit_grid_or_window_wins_over_the_statistics(explicit):
    sde, mix = get_sde("vp"), GaussianMixture.ring()

    def run(**kw):
        return sample(mix.score_fn(sde), sde, (64, 2), solver="dpmpp_2m", steps=9,
                      generator=torch.Generator().manual_seed(0), **explicit, **kw)

    (a, ia), (b, ib) = run(), run(data_std=2.8)
    assert torch.equal(a, b) and torch.equal(ia["grid"], ib["grid"]) and not ib["gaussian_head"]


@pytest.mark.parametrize("solver,steps", [("dpmpp_2m", 21), ("unipc", 21), ("em", 10),
                                          ("pc", 10)])
def test_many_steps_and_other_solvers_ignore_the_statistics(solver, steps):
    sde, mix = get_sde("ve"), GaussianMixture.ring()

    def run(**kw):
        return sample(mix.score_fn(sde), sde, (64, 2), solver=solver, steps=steps,
                      generator=torch.Generator().manual_seed(0), **kw)[0]

    assert torch.equal(run(), run(data_std=2.8))


def test_without_statistics_the_default_grid_is_unchanged():
    sde, mix = get_sde("subvp"), GaussianMixture.ring()
    _, info = sample(mix.score_fn(sde), sde, (8, 2), solver="dpmpp_2m", steps=9)
    torch.testing.assert_close(info["grid"], get_grid(sde, "edm", 9, default_eps(sde)))


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_gaussian_head_carries_the_prior_to_the_exact_gaussian_marginal(sde_name):
    sde = get_sde(sde_name)
    mean = torch.tensor([1.0, -3.0], dtype=torch.float64)
    cov = torch.tensor([[4.0, 1.0], [1.0, 0.5]], dtype=torch.float64)
    ts = torch.tensor([sde.T, 0.5], dtype=torch.float64)
    x = sde.prior_sampling((200_000, 2), generator=torch.Generator().manual_seed(0))
    x1 = gaussian_head(sde, x.double(), ts, data_stats((2,), data_mean=mean, data_cov=cov))
    m, s = (float(v) for v in sde.marginal_coeffs(ts[1:]))
    var = m**2 * cov + s**2 * torch.eye(2, dtype=torch.float64)
    tol = 5 * float(var.diagonal().max()) / len(x) ** 0.5  # five standard errors
    torch.testing.assert_close(x1.mean(0), m * mean,
                               atol=5 * (float(var.diagonal().max()) / len(x)) ** 0.5, rtol=0)
    torch.testing.assert_close(torch.cov(x1.T), var, atol=tol, rtol=0)


def test_callback_sees_every_step_once_in_order():
    sde, mix = get_sde("vp"), GaussianMixture.ring()
    seen = []
    _, info = sample(mix.score_fn(sde), sde, (8, 2), solver="dpmpp_2m", steps=10, data_std=2.8,
                     callback=lambda d: seen.append((d["i"], d["t"])))
    assert [i for i, _ in seen] == list(range(10))
    assert [t for _, t in seen] == info["grid"][:-1].tolist()


@pytest.mark.parametrize("kwargs,words", [
    (dict(data_mean=0.0), ["data_mean", "data_std"]),
    (dict(data_std=1.0, data_cov=torch.eye(2)), ["data_std", "data_cov"]),
    (dict(data_std=0.0), ["data_std", "> 0"]),
    (dict(data_cov=torch.eye(3)), ["data_cov", "(2, 2)"]),
    (dict(data_std=1.0, data_mean=[1.0, 2.0, 3.0]), ["data_mean", "2", "3"]),
])
def test_bad_statistics_raise_value_error(kwargs, words):
    sde, mix = get_sde("vp"), GaussianMixture.ring()
    with pytest.raises(ValueError) as err:
        sample(mix.score_fn(sde), sde, (4, 2), solver="dpmpp_2m", steps=9, **kwargs)
    assert all(w in str(err.value) for w in words), str(err.value)


@pytest.mark.parametrize("sde_name", ["vp", "ve", "rf"])
def test_imputation_in_ten_score_calls_with_the_data_statistics(sde_name):
    """x_2 given x_1 on the 3x3 grid (where replacement is unbiased, test_conditional): ten calls
    with the data's statistics match the exact conditional; without them they do not."""
    from test_conditional import ks_statistic

    mix, sde, n = GaussianMixture.grid(), get_sde(sde_name), 2000
    known, v = torch.tensor([True, False]), torch.tensor([1.45, 0.0])
    truth = mix.condition(known, v).sample(n, torch.Generator().manual_seed(2))[:, 0]
    crit = 1.95 * (2 / n) ** 0.5  # two-sample KS at level 1e-3, as in test_conditional
    mean, cov = moments(mix)

    def ks(**kw):
        x, info = impute(mix.score_fn(sde), sde, v.expand(n, 2).clone(), known,
                         generator=torch.Generator().manual_seed(1), **kw)
        assert info["nfe"] == 10 and torch.equal(x[:, 0], v[0].expand(n))
        return ks_statistic(x[:, 1], truth)

    assert ks(solver="unipc", steps=10, data_mean=mean, data_cov=cov) < crit
    assert ks(solver="dpmpp_2m", steps=9) > crit
