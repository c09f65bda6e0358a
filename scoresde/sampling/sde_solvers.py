"""Reverse-time SDE samplers: Euler-Maruyama and predictor-corrector (Song et al. 2021, Alg. 1-5).

Every coefficient comes from the SDE's ``f``, ``g`` and ``(m, s)`` on the grid, so VP, sub-VP,
VE, cosine and a user's own Gaussian-linear SDE all get every predictor and corrector. The grid
runs from ``T`` down to ``eps``; step ``i`` goes from ``t_cur = ts[i]`` to ``t_next = ts[i+1]``.
With ``a = m(t_cur) / m(t_next)`` and ``b^2 = s(t_cur)^2 - a^2 s(t_next)^2`` the forward
transition ``x_cur = a x_next + b z`` is exact for the SDE.

Predictors (one score call each, none for ``none``):
    ``euler_maruyama``: ``x += (f x - g^2 score) dt + g sqrt(-dt) z`` with ``dt < 0``.
    ``reverse_diffusion``: the forward transition reversed, ``x = (2 - a) x + b^2 score + b z``
        (score_sde's ReverseDiffusionPredictor, with the exact ``a, b``).
    ``ancestral``: a draw from the Gaussian posterior ``q(x_next | x_cur, x0_hat)`` of the
        forward process with Tweedie's ``x0_hat``: mean ``(x + b^2 score) / a``, std
        ``s_next b / s_cur``. For VP it is DDPM's ancestral step, for VE SMLD's.
Correctors (``corrector_steps`` score calls each, at ``t_cur`` before the predictor):
    ``langevin``: step ``2 alpha (snr |z| / |score|)^2`` with norms averaged over the batch, as in
        the paper's Algorithm 4.
    ``ald``: annealed Langevin dynamics (NCSN), step ``2 alpha (snr s(t_cur))^2``.
    ``alpha = a^2`` for both: score_sde's ``sde.alphas[i] = 1 - beta_i`` for VP, which only VP
    has, equals ``a^2`` there and is 1 for VE; ``a^2`` exists for every SDE (sub-VP included).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..sde import SDE
from .common import (Callback, CountedScore, GridCoeffs, NoiseSampler, check_grid, default_noise,
                     run_callback, time_vector)

__all__ = ["sample_em", "sample_pc", "PREDICTORS", "CORRECTORS"]

PREDICTORS = ("euler_maruyama", "reverse_diffusion", "ancestral", "none")
CORRECTORS = ("langevin", "ald", "none")


def _predict(name, score_fn, x, c: GridCoeffs, i, noise):
    """One predictor step from ``c.t[i]`` to ``c.t[i+1]``; returns ``(x, x_mean, x0_hat)``."""
    if name == "none":
        return x, x, None
    t_cur, t_next = c.t[i], c.t[i + 1]
    score = score_fn(x, time_vector(t_cur, x))
    z = noise(t_cur, t_next)
    if name == "euler_maruyama":
        dt = t_next - t_cur  # x_mean = x + (f x - g^2 score) dt, in two fused kernels
        x_mean = torch.add(x * (1 + c.f[i] * dt), score, alpha=-c.g[i] ** 2 * dt)
        return torch.add(x_mean, z, alpha=c.g[i] * math.sqrt(-dt)), x_mean, None
    a, b2 = c.transition(i)
    if name == "reverse_diffusion":
        x_mean = torch.add(x * (2 - a), score, alpha=b2)
        return torch.add(x_mean, z, alpha=math.sqrt(b2)), x_mean, None
    # ancestral: the forward process's posterior given Tweedie's estimate of x0.
    x_mean = (x + b2 * score) / a
    x0_hat = (x + c.s[i] ** 2 * score) / c.m[i]
    return x_mean + c.s[i + 1] * math.sqrt(b2) / c.s[i] * z, x_mean, x0_hat


def _correct(name, score_fn, x, c: GridCoeffs, i, snr, n_steps, generator):
    """``n_steps`` Langevin steps at ``c.t[i]`` targeting ``p_{t_cur}``; returns ``x``."""
    if name == "none":
        return x
    alpha = c.transition(i)[0] ** 2
    t = time_vector(c.t[i], x)
    for _ in range(n_steps):
        grad = score_fn(x, t)
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if name == "langevin":
            grad_norm = grad.reshape(len(x), -1).norm(dim=-1).mean()
            noise_norm = z.reshape(len(x), -1).norm(dim=-1).mean()
            step = 2 * alpha * (snr * noise_norm / grad_norm) ** 2
        else:
            step = 2 * alpha * (snr * c.s[i]) ** 2
        x = x + step * grad + (2 * step) ** 0.5 * z
    return x


def sample_pc(
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sde: SDE,
    x: torch.Tensor,
    ts: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
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
        generator: randomness for the predictor's and the corrector's noise.
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
    if predictor not in PREDICTORS:
        raise ValueError(f"unknown predictor {predictor!r}; choose one of {', '.join(PREDICTORS)}")
    if corrector not in CORRECTORS:
        raise ValueError(f"unknown corrector {corrector!r}; choose one of {', '.join(CORRECTORS)}")
    if predictor == "none" and corrector == "none":
        raise ValueError("predictor and corrector cannot both be 'none'")
    if isinstance(snr, bool) or not isinstance(snr, (int, float)) or not snr > 0:
        raise ValueError(f"snr must be a number > 0, got {snr!r}")
    if isinstance(corrector_steps, bool) or not isinstance(corrector_steps, int) \
            or corrector_steps < 1:
        raise ValueError(f"corrector_steps must be an integer >= 1, got {corrector_steps!r}")
    c = GridCoeffs.build(sde, check_grid(sde, ts))
    counted = CountedScore(score_fn)
    noise = noise_sampler or default_noise(x, generator)
    with torch.no_grad():
        for i in range(len(c.t) - 1):
            x = _correct(corrector, counted, x, c, i, snr, corrector_steps, generator)
            x, _, x0_hat = _predict(predictor, counted, x, c, i, noise)
            x = run_callback(callback, x, i=i, t=c.t[i], t_next=c.t[i + 1], denoised=x0_hat)
    return x, {"nfe": counted.calls, "grid": torch.tensor(c.t, dtype=torch.float64),
               "steps": len(c.t) - 1, "predictor": predictor, "corrector": corrector}


def sample_em(
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sde: SDE,
    x: torch.Tensor,
    ts: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    noise_sampler: NoiseSampler | None = None,
) -> tuple[torch.Tensor, dict]:
    """Euler-Maruyama on the reverse-time SDE: ``sample_pc`` with that predictor and no corrector.

    Arguments as :func:`sample_pc`; one score call per step; weak order 1.
    """
    return sample_pc(score_fn, sde, x, ts, generator=generator, callback=callback,
                     predictor="euler_maruyama", corrector="none", noise_sampler=noise_sampler)
