"""Time grids for the fixed-step samplers: tiny functions from an SDE to a decreasing tensor.

Every grid runs from ``T`` down to ``eps`` in ``steps + 1`` times, float64, and is built only
from what every SDE has: ``T``, ``marginal_coeffs`` and ``log_snr`` with its inverse. EDM's
rho-schedule spaces the noise-to-signal ratio ``sigma(t) = s(t) / m(t)`` (Karras et al. 2022,
eq. 5); the log-SNR grid spaces ``lambda(t) = log(m^2 / s^2) = -2 log sigma`` evenly
(DPM-Solver's ``time_uniform_lambda``).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..sde import SDE

__all__ = ["GRIDS", "default_eps", "check_eps", "check_steps", "time_uniform", "time_log_snr",
           "time_edm", "sigma_of_t", "get_grid"]

VE_EPS, VP_EPS = 1e-5, 1e-3


def default_eps(sde: SDE) -> float:
    """The paper's smallest time: ``1e-5`` for variance-exploding SDEs, ``1e-3`` otherwise.

    The type is read from the coefficients, not the class: an SDE whose mean coefficient at the
    end, ``m(T)``, is above 1/2 keeps the data's scale while noise is added (variance-exploding,
    like VE with ``m = 1``); one whose ``m(T)`` falls below 1/2 shrinks the data towards the
    prior (variance-preserving type: VP, sub-VP, cosine, an Ornstein-Uhlenbeck process).
    """
    m_end, _ = sde.marginal_coeffs(torch.tensor([sde.T], dtype=torch.float64))
    return VE_EPS if float(m_end[0]) > 0.5 else VP_EPS


def check_steps(steps: int) -> int:
    """Return ``steps`` as an int, or raise ``ValueError`` unless it is an integer >= 1."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return steps


def check_eps(sde: SDE, eps: float) -> float:
    """Return ``eps`` as a float, or raise ``ValueError`` unless ``0 < eps < T``."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < sde.T:
        raise ValueError(f"eps must be a number in (0, T) = (0, {sde.T:g}), got {eps!r}")
    return float(eps)


def sigma_of_t(sde: SDE, t: torch.Tensor) -> torch.Tensor:
    """``sigma(t) = s(t) / m(t)``, the noise-to-signal ratio; shape of ``t``."""
    m, s = sde.marginal_coeffs(t)
    return s / m


def _ends(sde: SDE, steps: int, eps: float) -> torch.Tensor:
    check_steps(steps)
    return torch.tensor([sde.T, check_eps(sde, eps)], dtype=torch.float64)


def _from_log_snr(sde: SDE, lam: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    ts = sde.t_from_log_snr(lam).to(torch.float64)
    ts[0], ts[-1] = ends[0], ends[1]  # the inverse is exact up to rounding: pin the ends
    return ts


def time_uniform(sde: SDE, steps: int, eps: float) -> torch.Tensor:
    """``steps + 1`` times evenly spaced from ``T`` to ``eps`` (Song et al. 2021).

    Returns a float64 tensor of shape ``(steps + 1,)``.
    """
    ends = _ends(sde, steps, eps)
    return torch.linspace(float(ends[0]), float(ends[1]), steps + 1, dtype=torch.float64)


def time_log_snr(sde: SDE, steps: int, eps: float) -> torch.Tensor:
    """Times whose log-SNR is evenly spaced from ``lambda(T)`` to ``lambda(eps)``.

    Returns a float64 tensor of shape ``(steps + 1,)``.
    """
    ends = _ends(sde, steps, eps)
    lam_max, lam_min = sde.log_snr(ends).tolist()
    lam = torch.linspace(lam_max, lam_min, steps + 1, dtype=torch.float64)
    return _from_log_snr(sde, lam, ends)


def time_edm(sde: SDE, steps: int, eps: float, rho: float = 7.0) -> torch.Tensor:
    """EDM's schedule: ``sigma_i^(1/rho)`` evenly spaced from ``sigma(T)`` to ``sigma(eps)``.

    Karras et al. (2022), eq. 5, on ``sigma = s / m``; ``rho = 7`` is theirs, larger ``rho``
    puts more steps at low noise. Returns the times, shape ``(steps + 1,)``.
    """
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not rho > 0:
        raise ValueError(f"rho must be a number > 0, got {rho!r}")
    ends = _ends(sde, steps, eps)
    sig_max, sig_min = sigma_of_t(sde, ends).tolist()
    ramp = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    root = sig_max ** (1 / rho) + ramp * (sig_min ** (1 / rho) - sig_max ** (1 / rho))
    return _from_log_snr(sde, -2 * rho * torch.log(root), ends)


GRIDS: dict[str, Callable[..., torch.Tensor]] = {
    "uniform": time_uniform,
    "log_snr": time_log_snr,
    "edm": time_edm,
}


def get_grid(sde: SDE, name: str, steps: int, eps: float, rho: float = 7.0) -> torch.Tensor:
    """Build the grid ``name`` (a key of :data:`GRIDS`); ``rho`` is used by ``edm`` only."""
    if name not in GRIDS:
        raise ValueError(f"unknown grid {name!r}; choose one of {', '.join(GRIDS)}")
    if name == "edm":
        return time_edm(sde, steps, eps, rho=rho)
    return GRIDS[name](sde, steps, eps)

