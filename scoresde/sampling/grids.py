"""Time grids for the fixed-step samplers: tiny functions from an SDE to a decreasing tensor.

Every grid runs from ``T`` down to ``eps`` in ``steps + 1`` times, float64, and is built only
from what every SDE has: ``T``, ``marginal_coeffs`` and ``log_snr`` with its inverse. EDM's
rho-schedule spaces the noise-to-signal ratio ``sigma(t) = s(t) / m(t)`` (Karras et al. 2022,
eq. 5); the log-SNR grid spaces ``lambda(t) = log(m^2 / s^2) = -2 log sigma`` evenly
(DPM-Solver's ``time_uniform_lambda``).
"""

from __future__ import annotations

from typing import Callable

import torch

from ..checks import check_choice, check_int, check_number
from ..sde import SDE

__all__ = ["GRIDS", "default_eps", "check_eps", "check_steps", "time_uniform", "time_log_snr",
           "time_edm", "sigma_of_t", "time_of_sigma", "get_grid"]

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
    return check_int("steps", steps, 1)


def check_eps(sde: SDE, eps: float) -> float:
    """Return ``eps`` as a float, or raise ``ValueError`` unless ``0 < eps < T``."""
    return sde.check_eps(eps)


def sigma_of_t(sde: SDE, t: torch.Tensor) -> torch.Tensor:
    """``sigma(t) = s(t) / m(t)``, the noise-to-signal ratio; shape of ``t``."""
    m, s = sde.marginal_coeffs(t)
    return s / m


def _ends(sde: SDE, steps: int, eps: float) -> torch.Tensor:
    check_steps(steps)
    return torch.tensor([sde.T, check_eps(sde, eps)], dtype=torch.float64)


def time_of_sigma(sde: SDE, sigma) -> torch.Tensor:
    """The time whose ``sigma(t) = s / m`` is ``sigma`` (a number or a tensor); float64."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    return sde.t_from_log_snr(-2 * torch.log(sigma)).to(torch.float64)


def _windowed(build, sde: SDE, steps: int, eps: float, sigma_max: float | None,
              sigma_min: float | None) -> torch.Tensor:
    """Run ``build(sde, t_hi, t_lo, n) -> (n + 1,) times`` inside the sigma window.

    Where ``sigma_max < sigma(T)`` the grid's first step jumps from ``T`` to ``sigma_max``; where
    ``sigma_min > sigma(eps)`` its last step jumps from ``sigma_min`` to ``eps``; the other
    ``steps`` (one or two fewer) are spaced by ``build`` between the window's ends.
    """
    ends = _ends(sde, steps, eps)
    sig_T, sig_eps = sigma_of_t(sde, ends).tolist()
    for name, v in (("sigma_max", sigma_max), ("sigma_min", sigma_min)):
        if v is not None:
            check_number(name, v, 0, low_open=True)
    head = sigma_max is not None and sigma_max < sig_T
    tail = sigma_min is not None and sigma_min > sig_eps
    if head and tail and sigma_min >= sigma_max:
        raise ValueError(f"sigma_min must be below sigma_max, got {sigma_min!r} >= {sigma_max!r}")
    for name, v, outside in (("sigma_max", sigma_max, head and sigma_max <= sig_eps),
                             ("sigma_min", sigma_min, tail and sigma_min >= sig_T)):
        if outside:
            raise ValueError(f"{name}={v!r} is outside this SDE's noise range [sigma(eps), "
                             f"sigma(T)] = [{sig_eps:.4g}, {sig_T:.4g}]; give a window inside it")
    inner = steps - head - tail
    if inner < 1:
        raise ValueError(f"steps must be >= {head + tail + 1} with this sigma window, got {steps}")
    window = time_of_sigma(sde, torch.tensor([sigma_max or 1.0, sigma_min or 1.0],
                                           dtype=torch.float64)).tolist()
    t_hi = window[0] if head else float(ends[0])
    t_lo = window[1] if tail else float(ends[1])
    ts = build(sde, t_hi, t_lo, inner)
    ts[0], ts[-1] = t_hi, t_lo  # the inverses are exact up to rounding: pin the ends
    ts = torch.cat([ends[:1]] * head + [ts] + [ends[1:]] * tail)
    if (head or tail) and not (ts[1:] < ts[:-1]).all():  # too narrow for float64's times
        raise ValueError(f"the sigma window [{sigma_min!r}, {sigma_max!r}] is too narrow in "
                         f"this SDE's noise range [{sig_eps:.4g}, {sig_T:.4g}] for {steps} "
                         "decreasing times; widen it or give fewer steps")
    return ts


def _uniform(sde: SDE, t_hi: float, t_lo: float, n: int) -> torch.Tensor:
    return torch.linspace(t_hi, t_lo, n + 1, dtype=torch.float64)


def _log_snr(sde: SDE, t_hi: float, t_lo: float, n: int) -> torch.Tensor:
    lam_hi, lam_lo = sde.log_snr(torch.tensor([t_hi, t_lo], dtype=torch.float64)).tolist()
    lam = torch.linspace(lam_hi, lam_lo, n + 1, dtype=torch.float64)
    return sde.t_from_log_snr(lam).to(torch.float64)


def _edm(rho: float):
    def build(sde: SDE, t_hi: float, t_lo: float, n: int) -> torch.Tensor:
        sig_hi, sig_lo = sigma_of_t(sde, torch.tensor([t_hi, t_lo], dtype=torch.float64)).tolist()
        ramp = torch.linspace(0, 1, n + 1, dtype=torch.float64)
        root = sig_hi ** (1 / rho) + ramp * (sig_lo ** (1 / rho) - sig_hi ** (1 / rho))
        return sde.t_from_log_snr(-2 * rho * torch.log(root)).to(torch.float64)

    return build


def time_uniform(sde: SDE, steps: int, eps: float, *, sigma_max: float | None = None,
                 sigma_min: float | None = None) -> torch.Tensor:
    """``steps + 1`` times evenly spaced from ``T`` to ``eps`` (Song et al. 2021).

    Args:
        sde, steps, eps: the SDE, the number of steps (>= 1), the last time in ``(0, T)``.
        sigma_max, sigma_min: an optional window on ``sigma = s / m``: where it is
            narrower than ``[sigma(eps), sigma(T)]``, one step jumps from ``T`` to ``sigma_max``
            and one from ``sigma_min`` to ``eps``; the other steps are spaced inside it.

    Returns:
        Decreasing float64 times, shape ``(steps + 1,)``.
    """
    return _windowed(_uniform, sde, steps, eps, sigma_max, sigma_min)


def time_log_snr(sde: SDE, steps: int, eps: float, *, sigma_max: float | None = None,
                 sigma_min: float | None = None) -> torch.Tensor:
    """Times whose log-SNR is evenly spaced from ``lambda(T)`` to ``lambda(eps)``.

    Arguments and returns as :func:`time_uniform`.
    """
    return _windowed(_log_snr, sde, steps, eps, sigma_max, sigma_min)


def time_edm(sde: SDE, steps: int, eps: float, rho: float = 7.0, *,
             sigma_max: float | None = None, sigma_min: float | None = None) -> torch.Tensor:
    """EDM's schedule: ``sigma_i^(1/rho)`` evenly spaced from ``sigma(T)`` to ``sigma(eps)``.

    Karras et al. (2022), eq. 5, on ``sigma = s / m``; ``rho = 7`` is theirs, larger ``rho``
    puts more steps at low noise.

    Args:
        sde, steps, eps, sigma_max, sigma_min: as :func:`time_uniform`.
        rho: the exponent, > 0.

    Returns:
        Decreasing float64 times, shape ``(steps + 1,)``.
    """
    check_number("rho", rho, 0, low_open=True)
    return _windowed(_edm(float(rho)), sde, steps, eps, sigma_max, sigma_min)


GRIDS: dict[str, Callable[..., torch.Tensor]] = {
    "uniform": time_uniform,
    "log_snr": time_log_snr,
    "edm": time_edm,
}


def get_grid(sde: SDE, name: str, steps: int, eps: float, rho: float = 7.0,
             sigma_max: float | None = None, sigma_min: float | None = None) -> torch.Tensor:
    """Build the grid ``name`` (a key of :data:`GRIDS`); ``rho`` is used by ``edm`` only."""
    check_choice("grid", name, GRIDS)
    window = dict(sigma_max=sigma_max, sigma_min=sigma_min)
    if name == "edm":
        return time_edm(sde, steps, eps, rho=rho, **window)
    return GRIDS[name](sde, steps, eps, **window)
