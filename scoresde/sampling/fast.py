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
    ``unipc``: UniPC-2 with the B2 coefficients (Zhao et al. 2023): the predictor is
        DPM-Solver++(2M)'s step, and the corrector UniC re-solves the step just taken with the
        score call made at its end, which the next step reuses, so it costs no call.

The multistep solvers take ``warm=(t, x0)``: a data estimate at a time ``t`` above ``ts[0]`` on
the same path (the few-step defaults' exact Gaussian head gives one), so their first step is
second order too.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..sde import SDE
from .common import (Callback, CountedScore, GridCoeffs, check_grid, run_callback, time_vector)
from .grids import sigma_of_t

__all__ = ["sample_euler", "sample_heun", "sample_dpmpp_2m", "sample_unipc"]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _denoiser(score_fn: ScoreFn, c: GridCoeffs) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """``D(y, i)``: Tweedie's estimate of ``x_0`` from ``y = x / m`` at grid time ``c.t[i]``."""

    def denoise(y: torch.Tensor, i: int) -> torch.Tensor:
        x = c.m[i] * y
        return (x + c.s[i] ** 2 * score_fn(x, time_vector(c.t[i], x))) / c.m[i]

    return denoise


def _run(step, score_fn, sde, x, ts, callback, warm=None):
    """Shared loop: scale to ``y = x / m``, apply ``step`` per interval, scale back.

    ``warm=(t, x0)`` starts the multistep state with a data estimate at time ``t > ts[0]``.
    """
    c = GridCoeffs.build(sde, check_grid(sde, ts))
    counted = CountedScore(score_fn)
    denoise = _denoiser(counted, c)
    y, state = x / c.m[0], {}
    if warm is not None:
        t_w, x0_w = warm
        (sig_w,) = sigma_of_t(sde, torch.tensor([float(t_w)], dtype=torch.float64)).tolist()
        if not sig_w > c.sigma[0]:
            raise ValueError(f"warm needs a time above ts[0] = {c.t[0]:g}, got {float(t_w):g}")
        state["x0_prev"], state["h_prev"] = x0_w.to(y.dtype), math.log(sig_w / c.sigma[0])
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


def _unipc_step(denoise, y, c, i, state):
    x0_hat = denoise(y, i)
    if i > 0:  # correct the step just taken with this call; the predictor below reuses it
        y = y + _unic_delta(state["x0_prev"], state["h_prev"], state.get("older"), x0_hat)
    if "x0_prev" in state:
        state["older"] = (state["x0_prev"], state["h_prev"])
    return _dpmpp_2m_step(lambda _y, _i: x0_hat, y, c, i, state)


def _unic_delta(m0: torch.Tensor, h: float, older, x0_t: torch.Tensor) -> torch.Tensor:
    """UniC-2 with B(h) = e^-h - 1 (Zhao et al. 2023) for a step of length ``h`` in lambda,
    minus DPM-Solver++(2M)'s predictor on it: the correction of the step's end.

    ``m0`` is the data estimate at the step's start, ``older = (m1, h1)`` the one a step of
    ``h1`` before it (``None``: the corrector is first order, the trapezoid), ``x0_t`` the
    estimate at the step's end. The difference is linear in the estimates, so it is added to
    the state as it is, after any callback's replacement.
    """
    b_h = math.expm1(-h)
    if older is None:
        return -b_h * 0.5 * (x0_t - m0)
    m1, h1 = older
    r = -h1 / h
    # b_k = k! phi_{k+1}(-h) h^k / B(h), with phi_2 and phi_3 written by their recursion
    phi = b_h / -h - 1
    b1, b2 = phi / b_h, 2 * (phi / -h - 0.5) / b_h
    d1 = (m1 - m0) / r
    rho = (b1 - b2) / (1 - r)  # rho_1 of R rho = b, R = [[1, 1], [r, 1]]
    return -b_h * ((rho - 0.5) * d1 + (b1 - rho) * (x0_t - m0))


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
                    generator: torch.Generator | None = None, callback: Callback | None = None,
                    warm: tuple[float, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict]:
    """DPM-Solver++(2M) on the probability-flow ODE: second order multistep, one call a step.

    Lu et al. (2022), Algorithm 2, in ``lambda = -log sigma`` on any decreasing time grid.

    Arguments and returns as :func:`sample_euler`, and ``warm=(t, x0)``: a data estimate
    ``x0`` (shape of ``x``) at a time ``t`` above ``ts[0]`` on the same path, so that the
    first step is second order (default: first order).
    """
    return _run(_dpmpp_2m_step, score_fn, sde, x, ts, callback, warm)


def sample_unipc(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, ts: torch.Tensor, *,
                 generator: torch.Generator | None = None, callback: Callback | None = None,
                 warm: tuple[float, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict]:
    """UniPC-2 (B2) on the probability-flow ODE: DPM-Solver++(2M) and a corrector, one call a step.

    Zhao et al. (2023): after each step the score call at its end (the next step's) corrects
    it with UniC, third order when two estimates precede it; the last step is not corrected.

    Arguments and returns as :func:`sample_dpmpp_2m`.
    """
    return _run(_unipc_step, score_fn, sde, x, ts, callback, warm)

