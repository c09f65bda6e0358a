"""No NaN or inf out of any sampler: every solver x every SDE x float32/float64 on an exact
target with a narrow component, and a briefly trained network in float32 and bfloat16; where a
step does produce one, the sampler stops with an error that names the step and its times."""

import math

import pytest
import torch

import scoresde
from scoresde import SAMPLERS, GaussianMixture, get_sde

from conftest import SDE_NAMES
from problems import stats_for

# Few steps are where a step is most likely to overshoot; 1 and 2 are the extreme grids.
STEPS = (1, 2, 6)


@pytest.mark.parametrize("sde_name", SDE_NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_every_solver_on_an_exact_narrow_target_stays_finite(sde_name, dtype):
    sde = get_sde(sde_name)
    mix = GaussianMixture.unseen(5, narrow=True)
    score = mix.score_fn(sde)
    for solver in SAMPLERS:
        for steps in STEPS:
            x, _ = scoresde.sample(score, sde, (32, 2), solver=solver, steps=steps, dtype=dtype,
                                   generator=torch.Generator().manual_seed(steps),
                                   **stats_for(solver, mix))
            assert x.dtype == dtype and x.shape == (32, 2)
            assert torch.isfinite(x).all(), (solver, steps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_every_solver_on_a_briefly_trained_network_stays_finite(workdir, dtype):
    model, sde, _ = scoresde.load_run(next((workdir / "runs").iterdir()))
    model = model.to(dtype)
    for solver in SAMPLERS:
        x, _ = scoresde.sample(model, sde, (32, 2), solver=solver, steps=4, dtype=dtype,
                               generator=torch.Generator().manual_seed(0), **stats_for(solver))
        assert x.dtype == dtype and torch.isfinite(x).all(), solver


def _poisoned(score, when):
    """The score, but NaN for every call at a time inside ``when`` (a (low, high) interval)."""

    def poisoned(x, t):
        out = score(x, t)
        inside = (t >= when[0]) & (t <= when[1])
        return torch.where(inside[:, None], torch.full_like(out, math.nan), out)

    return poisoned


@pytest.mark.parametrize("solver", list(SAMPLERS))
def test_a_step_that_produces_nan_stops_naming_the_step_and_times(solver):
    sde = get_sde("vp")
    score = _poisoned(GaussianMixture.ring().score_fn(sde), (0.4, 0.6))
    with pytest.raises(FloatingPointError, match=r"non-finite") as err:
        scoresde.sample(score, sde, (16, 2), solver=solver, steps=10,
                        generator=torch.Generator().manual_seed(0),
                        **stats_for(solver, GaussianMixture.ring()))
    message = str(err.value)
    assert solver in message and "t = " in message, message
    if solver not in ("ode", "torchsde"):  # a per-step solver names the step it happened in
        assert "step" in message, message
