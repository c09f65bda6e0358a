"""The one adapter between torch and ``scipy.integrate.solve_ivp``.

The ODE sampler (:mod:`scoresde.sampling.ode`) and the likelihood (:mod:`scoresde.likelihood`)
both integrate a torch right-hand side with scipy's adaptive solvers; this module, below both of
them, is the only place that calls ``solve_ivp`` and converts between tensors and NumPy arrays.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from scipy.integrate import solve_ivp

from .checks import check_choice, check_number

__all__ = ["ODE_METHODS", "solve_ode"]

ODE_METHODS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")


def solve_ode(
    fun: Callable[[float, torch.Tensor], torch.Tensor],
    y0: torch.Tensor,
    t0: float,
    t1: float,
    *,
    method: str = "RK45",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t_eval: np.ndarray | None = None,
) -> tuple[torch.Tensor, dict]:
    """Integrate ``dy/dt = fun(t, y)`` from ``t0`` to ``t1`` (either direction) with scipy.

    Args:
        fun: right-hand side taking a float time and a tensor of the shape, dtype and device of
            ``y0``, returning a tensor of that shape.
        y0: initial state, any shape.
        t0, t1: start and end times.
        method: a ``solve_ivp`` method, one of :data:`ODE_METHODS`.
        rtol, atol: scipy's tolerances, applied to every component of the flattened state.
        t_eval: optional times at which to also return the state.

    Returns:
        ``(y1, info)``: the state at ``t1`` (shape, dtype and device of ``y0``) and a dict with
        ``nfev`` (right-hand side calls), ``t`` (accepted step times), ``steps`` (accepted steps)
        and, if ``t_eval`` was given, ``ys`` of shape ``(len(t_eval), *y0.shape)``.

    Raises:
        ValueError: unknown method or non-positive tolerance.
        RuntimeError: scipy reports a failed integration.
        FloatingPointError: ``fun`` returned NaN or inf (the message names the time).
    """
    check_choice("ODE method", method, ODE_METHODS)
    rtol = check_number("rtol", rtol, 0, low_open=True)
    atol = check_number("atol", atol, 0, low_open=True)
    shape, dtype, device = y0.shape, y0.dtype, y0.device

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        y_t = torch.from_numpy(y).to(device=device, dtype=dtype).reshape(shape)
        with torch.no_grad():
            dy = fun(float(t), y_t)
        out = dy.detach().reshape(-1).to("cpu", torch.float64).numpy()
        if not np.isfinite(out).all():
            raise FloatingPointError(f"non-finite values in the ODE's right-hand side at "
                                     f"t = {float(t):.4g} (integrating {float(t0):.4g} -> "
                                     f"{float(t1):.4g})")
        return out

    y_init = y0.detach().reshape(-1).to("cpu", torch.float64).numpy()
    sol = solve_ivp(rhs, (float(t0), float(t1)), y_init, method=method, rtol=rtol, atol=atol,
                    dense_output=t_eval is not None)
    if not sol.success:
        raise RuntimeError(f"solve_ivp ({method}) failed: {sol.message}")
    y1 = torch.from_numpy(sol.y[:, -1].copy()).to(device=device, dtype=dtype).reshape(shape)
    info = {"nfev": int(sol.nfev), "t": np.asarray(sol.t), "steps": max(len(sol.t) - 1, 0)}
    if t_eval is not None:
        ys = np.ascontiguousarray(sol.sol(np.asarray(t_eval, dtype=np.float64)).T)
        info["ys"] = torch.from_numpy(ys).to(device=device, dtype=dtype).reshape(-1, *shape)
    return y1, info
