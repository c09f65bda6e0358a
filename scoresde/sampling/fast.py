"""Few-step solvers of the probability-flow ODE, written with ``(m(t), s(t))`` only.

In the scaled variable ``y = x / m`` the probability-flow ODE of every Gaussian-linear SDE is
EDM's ``dy / dsigma = (y - D(y; sigma)) / sigma`` with ``sigma = s / m`` and the denoiser
``D = E[x_0 | x_t] = (x + s^2 score(x, t)) / m`` (Tweedie; Karras et al. 2022, section 4).
The solvers step in ``sigma`` on any decreasing time grid and call the score at the grid's
times, so VP, sub-VP, VE and a user's own SDE are served alike.

    ``euler``: first order (DDIM's update).
    ``heun``: EDM's Algorithm 1, second order, two score calls a step.
    ``dpmpp_2m``: DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), second order multistep on
        ``lambda = -log sigma``, one score call a step.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..sde import SDE
from .common import (Callback, CountedScore, GridCoeffs, check_grid, run_callback, time_vector)

__all__ = ["sample_euler", "sample_heun", "sample_dpmpp_2m"]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _denoiser(score_fn: ScoreFn, c: GridCoeffs) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """``D(y, i)``: Tweedie's estimate of ``x_0`` from ``y = x / m`` at grid time ``c.t[i]``."""

    def denoise(y: torch.Tensor, i: int) -> torch.Tensor:
        x = c.m[i] * y
        return (x + c.s[i] ** 2 * score_fn(x, time_vector(c.t[i], x))) / c.m[i]

    return denoise


def _run(step, score_fn, sde, x, ts, callback):
    """Shared loop: scale to ``y = x / m``, apply ``step`` per interval, scale back."""
    c = GridCoeffs.build(sde, check_grid(sde, ts))
    counted = CountedScore(score_fn)
    denoise = _denoiser(counted, c)
    y, state = x / c.m[0], {}
    with torch.no_grad():
        for i in range(len(c.t) - 1):
            y, x0_hat = step(denoise, y, c, i, state)
            x_next = run_callback(callback, c.m[i + 1] * y, i=i, t=c.t[i], t_next=c.t[i + 1],
                                  denoised=x0_hat)
            y = x_next / c.m[i + 1]
    grid = torch.tensor(c.t, dtype=torch.float64)
    return c.m[-1] * y, {"nfe": counted.calls, "grid": grid, "steps": len(c.t) - 1}


def _euler_step(denoise, y, c, i, state):
    sig_cur, sig_next = c.sigma[i], c.sigma[i + 1]
    x0_hat = denoise(y, i)
    return y + (sig_next - sig_cur) * (y - x0_hat) / sig_cur, x0_hat


def _heun_step(denoise, y, c, i, state):
    sig_cur, sig_next = c.sigma[i], c.sigma[i + 1]
    # Euler step in sigma, then the trapezoidal correction with the slope at its end.
    x0_hat = denoise(y, i)
    d_cur = (y - x0_hat) / sig_cur
    y_euler = y + (sig_next - sig_cur) * d_cur
    d_next = (y_euler - denoise(y_euler, i + 1)) / sig_next
    return y + (sig_next - sig_cur) * (d_cur + d_next) / 2, x0_hat


def _dpmpp_2m_step(denoise, y, c, i, state):
    sig_cur, sig_next = c.sigma[i], c.sigma[i + 1]
    h = math.log(sig_cur / sig_next)  # step in lambda = -log sigma
    x0_hat = denoise(y, i)
    x0_eff = x0_hat
    if "x0_prev" in state:
        # Second order: extrapolate the data estimate linearly in lambda to the step's middle.
        r = state["h_prev"] / h
        x0_eff = (1 + 1 / (2 * r)) * x0_hat - 1 / (2 * r) * state["x0_prev"]
    state["x0_prev"], state["h_prev"] = x0_hat, h
    # Exact integration of the linear part: y_next = (sigma_next / sigma_cur) y + (1 - e^-h) x0.
    return (sig_next / sig_cur) * y - math.expm1(-h) * x0_eff, x0_hat


def sample_euler(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, ts: torch.Tensor, *,
                 generator: torch.Generator | None = None,
                 callback: Callback | None = None) -> tuple[torch.Tensor, dict]:
    """Euler (DDIM) in sigma on the probability-flow ODE: first order, one score call a step.

    Args:
        score_fn: score function ``score_fn(x, t)``.
        sde: the forward SDE (any Gaussian-linear one).
        x: the prior draw at ``ts[0]``, shape ``(B, *dims)``.
        ts: decreasing times from ``T`` towards 0, shape ``(steps + 1,)``.
        generator: unused (the solver is deterministic); accepted for the common signature.
        callback: called after each step (see :mod:`scoresde.sampling.common`).

    Returns:
        ``(x, info)``: the state at ``ts[-1]`` (shape of ``x``) and ``info`` with ``nfe``,
        ``grid`` and ``steps``.
    """
    return _run(_euler_step, score_fn, sde, x, ts, callback)


def sample_heun(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, ts: torch.Tensor, *,
                generator: torch.Generator | None = None,
                callback: Callback | None = None) -> tuple[torch.Tensor, dict]:
    """EDM's Heun method on the probability-flow ODE: second order, two score calls a step.

    Karras et al. (2022), Algorithm 1, in ``sigma`` on any decreasing time grid.

    Arguments and returns as :func:`sample_euler`.
    """
    return _run(_heun_step, score_fn, sde, x, ts, callback)


def sample_dpmpp_2m(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, ts: torch.Tensor, *,
                    generator: torch.Generator | None = None,
                    callback: Callback | None = None) -> tuple[torch.Tensor, dict]:
    """DPM-Solver++(2M) on the probability-flow ODE: second order multistep, one call a step.

    Lu et al. (2022), Algorithm 2, in ``lambda = -log sigma`` on any decreasing time grid.

    Arguments and returns as :func:`sample_euler`.
    """
    return _run(_dpmpp_2m_step, score_fn, sde, x, ts, callback)

