"""Few-step defaults from what is known about the data: an exact Gaussian head and a window.

At high noise the marginal of any data is close to the Gaussian with the data's mean ``mu`` and
covariance ``S`` (in ``y = x / m``: ``N(mu, S + sigma^2 I)``), whose probability flow is exact:
``y(sigma) = mu + (S + sigma^2 I)^(1/2) z`` for the one ``z`` the path starts from. So with the
data's statistics the first step, from ``T`` down to ``sigma_max = 2 * scale``, costs no score
call: the prior draw ``x_T = s(T) z`` is carried there along the Gaussian flow (which also
corrects the prior's mismatch with the true marginal at ``T``, large for VE). The other steps
are spaced in log-SNR from ``sigma_max`` to ``sigma_min = 0.01 * scale``, then one to ``eps``.
``scale = sqrt(trace(S) / D)``, the data's standard deviation per entry (a run's
``sigma_data``). The multistep solvers (``dpmpp_2m``, ``unipc``) also get the Gaussian's data
estimate one grid step above ``sigma_max`` (:func:`gaussian_warm_start`), so their first step
is second order. Where the window does not fit in the SDE's noise range (VE's
``sigma(T) = 50`` below data of scale ``1e4``), a warning says so and the plain log-SNR grid is
used (:func:`fewstep_grid`). The rule and its measurements: docs/benchmarks/few-step.md.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch

from ..checks import check_number
from ..sde import SDE
from .common import Callback, run_callback
from .grids import sigma_of_t, time_log_snr, time_of_sigma

__all__ = ["DataStats", "data_stats", "FEWSTEP_SOLVERS", "GAUSSIAN_SOLVERS", "FEWSTEP_MAX_STEPS",
           "HEAD_SIGMA", "TAIL_SIGMA", "MIN_WINDOW", "uses_data_stats", "fewstep_grid",
           "gaussian_head", "gaussian_warm_start"]

FEWSTEP_SOLVERS = ("euler", "heun", "dpmpp_2m", "unipc")
GAUSSIAN_SOLVERS = ("gei",)  # solvers built on the data's Gaussian: they always take it
FEWSTEP_MAX_STEPS = 20  # above it the head's fixed Gaussian jump would cap the accuracy
HEAD_SIGMA, TAIL_SIGMA = 2.0, 0.01  # the window's ends, in units of the data's scale
MIN_WINDOW = 2.0  # the least ratio of the window's ends inside [sigma(eps), sigma(T)]


def uses_data_stats(solver: str, steps: int, grid: str | None = None,
                    sigma_max: float | None = None, sigma_min: float | None = None) -> bool:
    """Whether :func:`~scoresde.sample` with these options uses the data's statistics: a
    solver built on them (``gei``), or a few-step solver at ``steps <= FEWSTEP_MAX_STEPS``
    with no grid or window of the caller's."""
    return solver in GAUSSIAN_SOLVERS or (
        solver in FEWSTEP_SOLVERS and steps <= FEWSTEP_MAX_STEPS and grid is None
        and sigma_max is None and sigma_min is None)


class DataStats(NamedTuple):
    """The data's mean ``(D,)`` and covariance: ``cov`` ``(D, D)``, or ``None`` with ``var``
    the variance of every entry (isotropic); float64. ``scale`` is ``sqrt(trace / D)``."""

    mean: torch.Tensor
    cov: torch.Tensor | None
    var: float

    @property
    def scale(self) -> float:
        if self.cov is None:
            return math.sqrt(self.var)
        return math.sqrt(float(torch.diagonal(self.cov).mean()))


def data_stats(dims: tuple[int, ...], data_std=None, data_mean=None,
               data_cov=None) -> DataStats | None:
    """Check and gather what the caller knows about the data; ``None`` when nothing is given.

    Args:
        dims: the shape of one sample (``shape[1:]``); ``D`` is its number of entries.
        data_std: the data's standard deviation per entry, a number > 0 (a run's
            ``sigma_data``), for an isotropic Gaussian.
        data_mean: a number or ``D`` entries (any shape); default 0.
        data_cov: the ``(D, D)`` covariance, symmetric positive semi-definite, instead of
            ``data_std``.

    Raises:
        ValueError: both ``data_std`` and ``data_cov``, ``data_mean`` alone, a bad value or
            shape.
    """
    if data_std is None and data_cov is None:
        if data_mean is not None:
            raise ValueError("data_mean needs data_std or data_cov (the data's spread)")
        return None
    if data_std is not None and data_cov is not None:
        raise ValueError("give data_std or data_cov, not both")
    d = math.prod(dims)
    mean = torch.zeros(d, dtype=torch.float64)
    if data_mean is not None:
        mean = torch.as_tensor(data_mean, dtype=torch.float64).detach().cpu().reshape(-1)
        if mean.numel() == 1:
            mean = mean.expand(d).clone()
        if mean.numel() != d or not torch.isfinite(mean).all():
            raise ValueError(f"data_mean must be a finite number or {d} numbers, got "
                             f"{mean.numel()} entries")
    if data_std is not None:
        std = check_number("data_std", data_std, 0, low_open=True)
        return DataStats(mean, None, std**2)
    cov = torch.as_tensor(data_cov, dtype=torch.float64).detach().cpu()
    if cov.shape != (d, d) or not torch.isfinite(cov).all() or not torch.allclose(
            cov, cov.T, rtol=1e-6, atol=1e-10):
        raise ValueError(f"data_cov must be a finite symmetric ({d}, {d}) matrix, got shape "
                         f"{tuple(cov.shape)}")
    if float(torch.diagonal(cov).mean()) <= 0:
        raise ValueError("data_cov must have a positive trace")
    return DataStats(mean, cov, float(torch.diagonal(cov).mean()))


def fewstep_grid(sde: SDE, steps: int, eps: float, stats: DataStats) -> tuple[torch.Tensor, bool]:
    """The few-step grid: log-SNR inside ``[TAIL_SIGMA, HEAD_SIGMA] * stats.scale``.

    The window is clipped to the SDE's noise range ``[sigma(eps), sigma(T)]``; where less than
    a factor :data:`MIN_WINDOW` of it is left (data far larger or smaller than the SDE's
    noise, e.g. VE's ``sigma_max = 50`` for data of scale ``1e4``), a warning says so and the
    grid is the log-SNR grid from ``T`` to ``eps``, without the window or the head.

    Returns:
        ``(ts, head)``: decreasing float64 times ``(steps + 1,)``, and whether ``ts[0] -> ts[1]``
        is the jump to ``sigma_max`` that :func:`gaussian_head` takes (``False`` where
        ``sigma_max`` is above ``sigma(T)``, or with one step).
    """
    sig_T, sig_eps = sigma_of_t(sde, torch.tensor([sde.T, eps], dtype=torch.float64)).tolist()
    sigma_max, sigma_min = HEAD_SIGMA * stats.scale, TAIL_SIGMA * stats.scale
    if steps >= 2 and min(sigma_max, sig_T) < MIN_WINDOW * max(sigma_min, sig_eps):
        warnings.warn(
            f"the data's few-step window, sigma in [{sigma_min:.3g}, {sigma_max:.3g}] "
            f"({TAIL_SIGMA:g} to {HEAD_SIGMA:g} times its scale), keeps less than a factor "
            f"{MIN_WINDOW:g} inside the SDE's noise range [sigma(eps), sigma(T)] = "
            f"[{sig_eps:.3g}, {sig_T:.3g}]; using the log-SNR grid from T to eps without it (an "
            "SDE whose sigma(T) is well above the data's scale fits the data)", stacklevel=3)
        return time_log_snr(sde, steps, eps), False
    head = steps >= 2 and sigma_max < sig_T
    window = dict(sigma_max=sigma_max if head else None,
                  sigma_min=sigma_min if steps >= 3 else None)
    return time_log_snr(sde, steps, eps, **window), head


def gaussian_head(sde: SDE, x: torch.Tensor, ts: torch.Tensor, stats: DataStats,
                  callback: Callback | None = None) -> torch.Tensor:
    """Carry the prior draw ``x = s(T) z`` at ``ts[0]`` to ``ts[1]`` along the Gaussian flow.

    ``x_1 = m_1 (mu + (S + sigma_1^2 I)^(1/2) z)`` with ``sigma_1 = s_1 / m_1``: exact for
    Gaussian data, no score call. The callback is called once, as after step 0.

    Args:
        sde: the forward SDE; x: ``(B, *dims)`` prior draw; ts: the grid, ``(steps + 1,)``.
        stats: the data's statistics (:func:`data_stats`).
        callback: the sampler's callback (``i = 0``, ``denoised`` None).

    Returns:
        The state at ``ts[1]``, shape and dtype of ``x``.
    """
    m, s = (v.tolist() for v in sde.marginal_coeffs(ts[:2].to(torch.float64)))
    sig1 = s[1] / m[1]
    z = x.reshape(x.shape[0], -1).to(torch.float64) / s[0]
    y = _gaussian_map(stats, z, lambda var: torch.sqrt(var + sig1**2))
    x1 = (m[1] * y).to(x.dtype).reshape(x.shape)
    return run_callback(callback, x1, i=0, t=float(ts[0]), t_next=float(ts[1]), denoised=None)


def gaussian_warm_start(sde: SDE, x: torch.Tensor, ts: torch.Tensor,
                        stats: DataStats) -> tuple[float, torch.Tensor]:
    """The Gaussian's data estimate on the path of the prior draw ``x = s(T) z``, one step
    above ``ts[1]``: ``E[x_0 | y] = mu + S (S + sigma_w^2 I)^(-1/2) z`` on its flow.

    ``sigma_w = sigma_1^2 / sigma_2`` (the log-SNR step of ``ts[1] -> ts[2]``), at most
    ``sigma(T)``; the multistep solvers take it as ``warm=`` (no score call).

    Args:
        sde, stats: as :func:`gaussian_head`; x: ``(B, *dims)`` prior draw at ``ts[0]``.
        ts: the grid, ``(steps + 1,)`` with ``steps >= 2``.

    Returns:
        ``(t_w, x0)``: the time and the estimate, shape and dtype of ``x``.
    """
    ts = ts.to(torch.float64)
    sig = sigma_of_t(sde, ts[:3]).tolist()
    sig_w = min(sig[1] ** 2 / sig[2], sig[0])
    t_w = float(ts[0]) if sig_w == sig[0] else min(float(time_of_sigma(sde, sig_w)), sde.T)
    (s_T,) = sde.marginal_coeffs(ts[:1])[1].tolist()
    z = x.reshape(x.shape[0], -1).to(torch.float64) / s_T
    x0 = _gaussian_map(stats, z, lambda var: var / torch.sqrt(var + sig_w**2))
    return t_w, x0.to(x.dtype).reshape(x.shape)


def _gaussian_map(stats: DataStats, z: torch.Tensor, f) -> torch.Tensor:
    """``mu + f(S) z`` for ``z`` ``(B, D)`` float64, ``f`` applied to the eigenvalues of ``S``."""
    mean = stats.mean.to(z.device)
    if stats.cov is None:
        return mean + f(torch.tensor(stats.var, dtype=torch.float64)).item() * z
    evals, evecs = torch.linalg.eigh(stats.cov.to(z.device))
    return mean + z @ ((evecs * f(evals.clamp(min=0))) @ evecs.T)  # symmetric
