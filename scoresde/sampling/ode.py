"""The probability-flow ODE solved by scipy's adaptive Runge-Kutta methods (Song et al. 2021).

The drift is ``sde.reverse(score_fn, probability_flow=True)``'s, handed to the one scipy adapter
(:mod:`scoresde.scipy_ode`).
"""

from __future__ import annotations

from typing import Callable

import torch

from ..sde import SDE
from ..scipy_ode import solve_ode
from .common import Callback, CountedScore, check_grid, run_callback

__all__ = ["sample_ode"]


def sample_ode(
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sde: SDE,
    x: torch.Tensor,
    ts: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    method: str = "RK45",
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> tuple[torch.Tensor, dict]:
    """Integrate ``dx/dt = f(t) x - g(t)^2 score(x, t) / 2`` from ``ts[0]`` down to ``ts[-1]``.

    The solver picks its own steps: only the ends of ``ts`` are used.

    Args:
        score_fn: score function ``score_fn(x, t)``.
        sde: the forward SDE.
        x: the prior draw at ``ts[0]``, shape ``(B, *dims)``.
        ts: decreasing times; its first and last entries are the ends.
        generator: unused (the ODE is deterministic); accepted for the common signature.
        callback: called once, at the end, with ``i = 0`` (scipy steps inside one call).
        method: a ``scipy.integrate.solve_ivp`` method (``RK45``, ``RK23``, ``DOP853``, ...).
        rtol, atol: scipy's tolerances, > 0.

    Returns:
        ``(x, info)``: the state at ``ts[-1]`` (shape of ``x``) and ``info`` with ``nfe``
        (counted score calls), ``steps`` (accepted steps), ``grid`` (the accepted times) and
        ``method``. scipy does not report rejected steps; ``nfe`` counts their calls too.
    """
    ts = check_grid(sde, ts)
    t_start, t_end = float(ts[0]), float(ts[-1])
    counted = CountedScore(score_fn)
    flow = sde.reverse(counted, probability_flow=True)

    def drift(t: float, x_t: torch.Tensor) -> torch.Tensor:
        return flow.drift(x_t, t)

    x, info = solve_ode(drift, x, t_start, t_end, method=method, rtol=rtol, atol=atol)
    x = run_callback(callback, x, i=0, t=t_start, t_next=t_end, denoised=None)
    return x, {"nfe": counted.calls, "steps": info["steps"],
               "grid": torch.as_tensor(info["t"], dtype=torch.float64), "method": method}
