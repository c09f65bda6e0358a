"""solve_inverse against exact posteriors (GaussianMixture.condition_linear).

Three targets where the measurement decides the mode: two columns observed through x_1 (the
replacement method's known bias), a ring observed through x_1, and a 3x3 grid observed through
the noisy average of its coordinates. Thresholds come from true-vs-true draws of the same size
(`reference` in problems.py: mean + 4 sd of 20 energy distances) and from binomial noise for
the posterior mode weights.
"""

import math

import pytest
import torch

from problems import reference
from scoresde import GaussianMixture, VPSDE, get_sde
from scoresde.observe import grey_matrix, mask_matrix
from scoresde.sampling.inverse import INVERSE_METHODS, solve_inverse
from scoresde.sampling.distances import energy_distance

TARGETS = {
    "two columns": (GaussianMixture.two_columns, [[1.0, 0.0]], [0.3], 0.0),
    "ring": (GaussianMixture.ring, [[1.0, 0.0]], [2.0], 0.0),
    "noisy average": (GaussianMixture.grid, [[0.5, 0.5]], [0.9], 0.3),
}


def _target(name):
    make, a, y, sd = TARGETS[name]
    mix, a, y = make(), torch.tensor(a), torch.tensor(y)
    return mix, a, y, sd, mix.condition_linear(a, y, sd)


def _mode_shares(post, x):
    """Share of draws whose most probable posterior component is k, shape (K,)."""
    k = post.mixture.num_components
    return torch.bincount(post.modes(x), minlength=k).double() / len(x)


@pytest.mark.slow
@pytest.mark.parametrize("name,sde_name,steps", [
    ("two columns", "vp", 100), ("two columns", "ve", 100), ("ring", "vp", 50),
    ("noisy average", "vp", 50), ("noisy average", "subvp", 50),
    ("ring", "rf", 50)])
def test_smc_matches_the_exact_posterior(name, sde_name, steps):
    # 16 particles reach the noise floor. The steps: x_1 = 0.3 lies in the gap between the
    # two columns, where the discretised chain itself is least accurate; at 50 steps its
    # upper row's mean is 1.89 instead of 2 (measured with 64 particles too).
    mix, a, y, sd, post = _target(name)
    n, sde = 600, get_sde(sde_name)
    target = reference(post, n)
    x, info = solve_inverse(mix.score_fn(sde), sde, a, y, sd, method="smc", n=n, steps=steps,
                            particles=16, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(x).all() and x.shape == (n, 2)
    stat = energy_distance(x, target[1])
    assert stat < target[2], f"energy distance {stat:.4f} above the noise {target[2]:.4f}"
    # Mode weights: the shares of draws per component, against those of exact draws.
    got, exact = _mode_shares(post, x), _mode_shares(post, target[1])
    assert ((got - exact).abs() < 4 * (2 * exact * (1 - exact) / n).sqrt() + 2 / n).all()
    if sd == 0:
        torch.testing.assert_close(x @ a.T, y.expand(n, 1), atol=1e-5, rtol=0)
    assert info["ess"].shape == (steps, n) and (info["ess"] >= 1 - 1e-9).all()
    assert info["nfe"] == steps + 1 and info["particles"].shape == (n, 16, 2)


def test_replacement_is_biased_where_the_known_part_decides_the_mode():
    # The exact weight of the upper row is 0.858; replacement puts about 0.55 there.
    mix, a, y, sd, post = _target("two columns")
    n, sde = 1000, VPSDE()
    assert abs(float(post.weights[1]) - 1 / (1 + math.exp(-1.8))) < 1e-6  # y in float32
    _, ref, threshold = reference(post, n)
    for method, options in (("replacement", {}), ("repaint", dict(jump=5, resample=3))):
        x, info = solve_inverse(mix.score_fn(sde), sde, a, y, method=method, n=n, steps=30,
                                generator=torch.Generator().manual_seed(1), **options)
        assert torch.equal(x[:, 0], torch.full((n,), 0.3))  # the known entry, exactly
        assert energy_distance(x, ref) > 10 * threshold
        assert float((x[:, 1] > 0).float().mean()) < 0.75
    assert info["nfe"] == 30 * 3 + 1


@pytest.mark.parametrize("method", list(INVERSE_METHODS))
def test_every_method_runs_on_every_target_with_finite_values(method):
    sde = VPSDE()
    for name in TARGETS:
        mix, a, y, sd, post = _target(name)
        x, info = solve_inverse(mix.score_fn(sde), sde, a, y, sd, method=method, n=64, steps=10,
                                generator=torch.Generator().manual_seed(0),
                                **({"particles": 4} if method == "smc" else {}))
        assert x.shape == (64, 2) and torch.isfinite(x).all()
        assert info["method"] == method and info["nfe"] > 10


@pytest.mark.slow
def test_smc_error_falls_with_particles_as_one_over_k():
    # The bias of the SMC estimate of the upper row's weight, E[sum_k w_k 1{upper}] - p,
    # falls as 1 / K (the bias of self-normalised importance weights); at 25 steps the
    # discretised chain's own error is far below the K = 16 error.
    mix, a, y, _, post = _target("two columns")
    sde, p = VPSDE(), float(post.weights[1])
    ks, errors = (2, 4, 8), []
    for k in ks:
        _, info = solve_inverse(mix.score_fn(sde), sde, a, y, method="smc", n=16384 // k,
                                steps=25, particles=k, generator=torch.Generator().manual_seed(3))
        w = info["log_weights"].exp()
        upper = (info["particles"][..., 1] > 0).to(w)
        errors.append(abs(float((w * upper).sum(1).mean()) - p))
    slope = torch.linalg.lstsq(torch.stack([torch.log(torch.tensor(ks, dtype=torch.float64)),
                                            torch.ones(3, dtype=torch.float64)], 1),
                               torch.log(torch.tensor(errors, dtype=torch.float64))[:, None]
                               ).solution[0, 0]
    assert -1.6 < float(slope) < -0.6, (errors, float(slope))


@pytest.mark.slow
def test_colorization_of_a_three_channel_mixture():
    # Data (3, 2, 2): 12 numbers; the grey image (the mean over channels) of 4 pixels is seen.
    base = GaussianMixture.random(12, k=3, seed=4, scale=1.0)
    mix = GaussianMixture(base.means, base.covs, base.weights, event_shape=(3, 2, 2))
    a = grey_matrix((3, 2, 2))
    truth_x = mix.sample(1, torch.Generator().manual_seed(5), dtype=torch.float64)
    y = (truth_x.reshape(1, -1) @ a.T)[0]
    post = mix.condition_linear(a, y)
    n, sde = 400, VPSDE()
    _, ref, threshold = reference(post, n)
    ref = ref.reshape(n, -1)
    # 200 steps: the components' narrowest axes have variance 0.05, and the 50-step chain
    # itself (unconditioned) has 65-85% of the variance along them; conditioning on the grey
    # image leaves mostly such directions.
    x, info = solve_inverse(mix.score_fn(sde), sde, a, y, method="smc", n=n, steps=200,
                            particles=8, event_shape=(3, 2, 2),
                            generator=torch.Generator().manual_seed(1))
    assert x.shape == (n, 3, 2, 2)
    torch.testing.assert_close(x.reshape(n, -1).double() @ a.T, y.expand(n, -1), atol=1e-5,
                               rtol=0)
    assert energy_distance(x.reshape(n, -1), ref) < threshold
    # The paper's colorization (replacement in the grey axis of an orthogonal colour basis)
    # keeps the grey image exactly and draws finite colours.
    x, _ = solve_inverse(mix.score_fn(sde), sde, a, y, method="replacement", n=n, steps=50,
                         event_shape=(3, 2, 2), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(x.reshape(n, -1).double() @ a.T, y.expand(n, -1), atol=1e-5,
                               rtol=0)
    assert torch.isfinite(x).all()


def test_dps_moves_samples_towards_a_nonlinear_measurement():
    mix, sde, n = GaussianMixture.ring(), VPSDE(), 256
    measure = lambda x: (x**2).sum(1, keepdim=True).sqrt()  # noqa: E731  the radius
    y = torch.tensor([4.0])
    kw = dict(n=n, steps=30, event_shape=(2,), generator=torch.Generator().manual_seed(0))
    off, _ = solve_inverse(mix.score_fn(sde), sde, measure, y, method="dps", step_size=0.0, **kw)
    on, info = solve_inverse(mix.score_fn(sde), sde, lambda x: x[:, :1], torch.tensor([2.5]),
                             method="dps", step_size=0.5, **kw)
    assert torch.isfinite(on).all() and info["nfe"] == 2 * 30 + 1
    # With the step, x_1 is pulled from the ring's spread towards 2.5.
    assert (on[:, 0] - 2.5).abs().mean() < 0.5 * (off[:, 0] - 2.5).abs().mean()


@pytest.mark.parametrize("method", list(INVERSE_METHODS))
def test_each_sample_answers_its_own_measurement(method):
    # Three different noiseless measurements, two draws of each: every draw satisfies its own.
    base, sde = GaussianMixture.random(4, k=2, seed=0), VPSDE()
    mix = GaussianMixture(base.means, base.covs, base.weights, event_shape=(2, 2))
    a = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.5, 0.5, 0.0]])
    y = torch.tensor([[0.5, -1.0], [1.5, 0.0], [-2.0, 2.0]]).repeat_interleave(2, 0)
    x, _ = solve_inverse(mix.score_fn(sde), sde, a, y, method=method, steps=10,
                         event_shape=(2, 2), generator=torch.Generator().manual_seed(0),
                         **({"particles": 3} if method == "smc" else {}))
    assert x.shape == (6, 2, 2) and torch.isfinite(x).all()
    if method != "dps":  # dps only pulls towards y
        torch.testing.assert_close(x.reshape(6, -1).double() @ a.T.double(), y.double(),
                                   atol=1e-5, rtol=0)


def test_bad_arguments_are_refused_in_one_line():
    mix, sde = GaussianMixture.ring(), VPSDE()
    score, a, y = mix.score_fn(sde), mask_matrix([True, False]), torch.tensor([1.0])
    cases = [
        (dict(method="bogus"), "method"),
        (dict(method="smc", solver="em"), r"'smc'.*\bsolver\b.*'em'"),
        (dict(method="replacement", solver="ode"), r"'replacement'.*'ode'"),
        (dict(method="smc", jump=3), r"'smc'.*\bjump\b"),
        (dict(method="dps", step_size=-1.0), "step_size"),
        (dict(method="smc", particles=0), "particles"),
        (dict(method="repaint", resample=0), "resample"),
        (dict(method="smc", n=3, y=torch.ones(2, 1)), r"\b2\b.*\bn = 3\b"),
    ]
    for kw, match in cases:
        kw = {"y": y, **kw}
        with pytest.raises(ValueError, match=match):
            solve_inverse(score, sde, a, kw.pop("y"), steps=2, **kw)
    with pytest.raises(ValueError, match=r"method='dps'.*'smc'"):
        solve_inverse(score, sde, lambda x: x, y, method="smc", event_shape=(2,))


@pytest.mark.parametrize("method", list(INVERSE_METHODS))
def test_a_non_finite_score_stops_with_the_method_named(method):
    sde, a, y = VPSDE(), mask_matrix([True, False]), torch.tensor([1.0])
    with pytest.raises(FloatingPointError, match=f"^{method}: "):
        solve_inverse(lambda x, t: x * math.nan, sde, a, y, method=method, n=4, steps=3)


@pytest.mark.parametrize("solver", ["em", "pc", "euler", "dpmpp_2m"])
def test_impute_is_solve_inverse_replacement_with_a_mask(solver):
    """One replacement step: impute with a mask and solve_inverse's replacement with that mask's
    matrix draw the same unknown entries from the same generator; with the final denoising both
    results agree everywhere (impute puts the observed values back, as the projection does)."""
    from scoresde.sampling import impute

    sde = VPSDE()

    def score(x, t):
        return -x * (1 + 0.3 * torch.sin(x))

    values = torch.randn(1, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    values = values.expand(3, 6)
    mask = torch.tensor([1, 0, 1, 0, 0, 1], dtype=torch.bool)
    for denoise in (False, True):
        a, _ = impute(score, sde, values, mask, solver=solver, steps=20, denoise=denoise,
                      generator=torch.Generator().manual_seed(7))
        b, _ = solve_inverse(score, sde, mask_matrix(mask), values[0][mask], method="replacement",
                             solver=solver, n=3, steps=20, denoise=denoise, dtype=torch.float64,
                             generator=torch.Generator().manual_seed(7))
        torch.testing.assert_close(a[:, ~mask], b[:, ~mask], rtol=0, atol=1e-12)
        if denoise:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
