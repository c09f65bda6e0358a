"""Reverse-time SDE samplers: Euler-Maruyama and predictor-corrector (Song et al. 2021, Alg. 1-5).

Every coefficient comes from the SDE's ``f``, ``g`` and ``(m, s)`` on the grid, so VP, sub-VP,
VE, cosine and a user's own Gaussian-linear SDE all get every predictor and corrector. The grid
runs from ``T`` down to ``eps``; step ``i`` goes from ``t_cur = ts[i]`` to ``t_next = ts[i+1]``.
With ``a = m(t_cur) / m(t_next)`` and ``b^2 = s(t_cur)^2 - a^2 s(t_next)^2`` the forward
transition ``x_cur = a x_next + b z`` is exact for the SDE.

:data:`PREDICTORS` and :data:`CORRECTORS` map names to one step each.

Predictors (one score call each, none for ``none``):
    ``euler_maruyama``: ``x += drift dt + g sqrt(-dt) z`` with ``dt < 0``, the drift
        ``f x - g^2 score`` and diffusion ``g`` of ``sde.reverse(score_fn)``.
    ``reverse_diffusion``: the forward transition reversed, ``x = (2 - a) x + b^2 score + b z``
        (score_sde's ReverseDiffusionPredictor, with the exact ``a, b``).
    ``ancestral``: a draw from the Gaussian posterior ``q(x_next | x_cur, x0_hat)`` of the
        forward process with Tweedie's ``x0_hat``: mean ``(x + b^2 score) / a``, std
        ``s_next b / s_cur``. For VP it is DDPM's ancestral step, for VE SMLD's.
Correctors (``corrector_steps`` score calls each, at ``t_cur`` before the predictor):
    ``langevin`` (the default): step ``2 alpha (snr s(t_cur))^2``, the same for every sample.
        Every marginal's curvature is at most ``1 / s^2`` (``-grad^2 log p_t = (I - m^2
        Cov[x0 | x_t] / s^2) / s^2``), so this step is below ``2 alpha snr^2`` times the local
        variance of every component, narrow or wide: Langevin at this step inflates no
        component's variance by more than a factor ``1 / (1 - alpha snr^2)`` (2.6% at snr
        0.16). For image-like data the paper's rule below gives about this step, so ``snr``
        keeps its meaning there (docs/benchmarks/samplers.md).
    ``langevin_batch``: the paper's Algorithm 4, step ``2 alpha (snr |z| / |score|)^2`` with
        norms averaged over the batch. Points of a narrow component have scores far above the
        batch's mean and take steps far too large for their scale: it blurs such mixtures.
        A per-sample version of this rule is worse in low dimension: near a mode ``|score|``
        is small and the step explodes, and a step that varies with ``x`` biases Langevin
        towards ``p / step``.
    ``ald``: annealed Langevin dynamics (NCSN; score_sde's AnnealedLangevinDynamics), the same
        step as ``langevin``, kept under its name.
    ``alpha = a^2`` for all: score_sde's ``sde.alphas[i] = 1 - beta_i`` for VP, which only VP
    has, equals ``a^2`` there and is 1 for VE; ``a^2`` exists for every SDE (sub-VP included).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

from ..checks import check_choice, check_int, check_number
from ..sde import SDE, ReverseSDE
from .common import (Callback, CountedScore, GridCoeffs, NoiseSampler, Randomness, check_grid,
                     default_noise, randn, run_callback, time_vector)

__all__ = ["sample_em", "sample_pc", "PREDICTORS", "CORRECTORS"]


class _Step(NamedTuple):
    """What every predictor and corrector step reads: the score, the reverse SDE, the grid."""

    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    reverse: ReverseSDE
    c: GridCoeffs
    noise: NoiseSampler
    generator: Randomness


# ----- predictors: one step from c.t[i] to c.t[i+1], returning (x, x_mean, x0_hat) ------------
def _no_predictor(p: _Step, x, i):
    return x, x, None


def _euler_maruyama(p: _Step, x, i):
    t_cur, t_next = p.c.t[i], p.c.t[i + 1]
    dt = t_next - t_cur  # < 0: the reverse SDE runs down in t
    x_mean = torch.add(x, p.reverse.drift(x, t_cur), alpha=dt)
    z = p.noise(t_cur, t_next)
    return torch.add(x_mean, z, alpha=p.reverse.diffusion(t_cur) * math.sqrt(-dt)), x_mean, None


def _reverse_diffusion(p: _Step, x, i):
    score = p.score_fn(x, time_vector(p.c.t[i], x))
    z = p.noise(p.c.t[i], p.c.t[i + 1])
    a, b2 = p.c.transition(i)
    x_mean = torch.add(x * (2 - a), score, alpha=b2)
    return torch.add(x_mean, z, alpha=math.sqrt(b2)), x_mean, None


def _ancestral(p: _Step, x, i):
    c = p.c
    score = p.score_fn(x, time_vector(c.t[i], x))
    z = p.noise(c.t[i], c.t[i + 1])
    a, b2 = c.transition(i)
    # The forward process's posterior given Tweedie's estimate of x0.
    x_mean = (x + b2 * score) / a
    x0_hat = (x + c.s[i] ** 2 * score) / c.m[i]
    return x_mean + c.s[i + 1] * math.sqrt(b2) / c.s[i] * z, x_mean, x0_hat


PREDICTORS: dict[str, Callable[..., tuple]] = {
    "euler_maruyama": _euler_maruyama,
    "reverse_diffusion": _reverse_diffusion,
    "ancestral": _ancestral,
    "none": _no_predictor,
}


# ----- correctors: one Langevin step at c.t[i] targeting p_{t_cur}, returning x --------------
def _no_corrector(p: _Step, x, i, snr):
    return x


def _langevin_move(p: _Step, x, i, step_size):
    """``x + eps grad + sqrt(2 eps) z`` with ``eps = step_size(grad, z)`` at ``c.t[i]``."""
    grad = p.score_fn(x, time_vector(p.c.t[i], x))
    z = randn(x.shape, p.generator, dtype=x.dtype, device=x.device)
    step = step_size(grad, z)
    return x + step * grad + (2 * step) ** 0.5 * z


def _alpha(p: _Step, i: int) -> float:
    """score_sde's ``alpha_i = a^2`` of the forward step ``x_i = a x_{i+1} + b z`` (DDPM's
    ``1 - beta_i``; 1 for VE)."""
    a, _ = p.c.transition(i)
    return a**2


def _langevin_batch(p: _Step, x, i, snr):
    alpha = _alpha(p, i)

    def step_size(grad, z):
        grad_norm = grad.reshape(len(x), -1).norm(dim=-1).mean()
        noise_norm = z.reshape(len(x), -1).norm(dim=-1).mean()
        return 2 * alpha * (snr * noise_norm / grad_norm) ** 2

    return _langevin_move(p, x, i, step_size)


def _langevin(p: _Step, x, i, snr):
    step = 2 * _alpha(p, i) * (snr * p.c.s[i]) ** 2  # below every local variance
    return _langevin_move(p, x, i, lambda grad, z: step)


CORRECTORS: dict[str, Callable[..., torch.Tensor]] = {
    "langevin": _langevin,
    "ald": _langevin,
    "langevin_batch": _langevin_batch,
    "none": _no_corrector,
}


def sample_pc(
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sde: SDE,
    x: torch.Tensor,
    ts: torch.Tensor,
    *,
    generator: Randomness = None,
    callback: Callback | None = None,
    predictor: str = "reverse_diffusion",
    corrector: str = "langevin",
    snr: float = 0.16,
    corrector_steps: int = 1,
    noise_sampler: NoiseSampler | None = None,
) -> tuple[torch.Tensor, dict]:
    """Predictor-corrector sampling of the reverse-time SDE (Song et al. 2021, Algorithms 1-5).

    Args:
        score_fn: score function ``score_fn(x, t)``.
        sde: the forward SDE.
        x: the prior draw at ``ts[0]``, shape ``(B, *dims)``.
        ts: decreasing times from ``T`` towards 0, shape ``(steps + 1,)``.
        generator: randomness for the predictor's and the corrector's noise: a
            ``torch.Generator`` or a :class:`~scoresde.sampling.PerSampleGenerator` (sample
            ``i``'s noise from its own seed).
        callback: called after each step (see :mod:`scoresde.sampling.common`).
        predictor: one of :data:`PREDICTORS`.
        corrector: one of :data:`CORRECTORS`.
        snr: the corrector's signal-to-noise ratio, > 0 (the paper's 0.16).
        corrector_steps: Langevin steps per time, >= 1.
        noise_sampler: ``noise(t_cur, t_next) -> N(0, I)`` draw of ``x``'s shape for the
            predictor (e.g. increments of one Brownian path shared across step sizes);
            fresh ``torch.randn`` from ``generator`` by default.

    Returns:
        ``(x, info)``: the state at ``ts[-1]`` (shape of ``x``; the noise of the last step is
        kept, denoising is the caller's) and ``info`` with ``nfe`` and ``grid``.
    """
    predict = PREDICTORS[check_choice("predictor", predictor, PREDICTORS)]
    correct = CORRECTORS[check_choice("corrector", corrector, CORRECTORS)]
    if predictor == "none" and corrector == "none":
        raise ValueError("predictor and corrector cannot both be 'none'")
    snr = check_number("snr", snr, 0, low_open=True)
    corrector_steps = check_int("corrector_steps", corrector_steps, 1)
    ts = check_grid(sde, ts)
    c = GridCoeffs.build(sde, ts)
    counted = CountedScore(score_fn)
    p = _Step(counted, sde.reverse(counted, times=ts), c,
              noise_sampler or default_noise(x, generator), generator)
    with torch.no_grad():
        for i in range(len(c.t) - 1):
            for _ in range(corrector_steps):
                x = correct(p, x, i, snr)  # Langevin steps at t_cur, then the predictor
            x, _, x0_hat = predict(p, x, i)
            x = run_callback(callback, x, i=i, t=c.t[i], t_next=c.t[i + 1], denoised=x0_hat)
    return x, {"nfe": counted.calls, "grid": torch.tensor(c.t, dtype=torch.float64),
               "steps": len(c.t) - 1, "predictor": predictor, "corrector": corrector}


def sample_em(
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sde: SDE,
    x: torch.Tensor,
    ts: torch.Tensor,
    *,
    generator: Randomness = None,
    callback: Callback | None = None,
    noise_sampler: NoiseSampler | None = None,
) -> tuple[torch.Tensor, dict]:
    """Euler-Maruyama on the reverse-time SDE: ``sample_pc`` with that predictor and no corrector.

    Arguments as :func:`sample_pc`; one score call per step; weak order 1.
    """
    return sample_pc(score_fn, sde, x, ts, generator=generator, callback=callback,
                     predictor="euler_maruyama", corrector="none", noise_sampler=noise_sampler)
