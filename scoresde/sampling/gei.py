"""The Gaussian exponential integrator: the data Gaussian's probability flow exact, the rest
discretised.

In ``y = x / m`` and ``sigma = s / m`` the probability-flow ODE of every Gaussian-linear SDE is
``dy / dsigma = (y - D(y; sigma)) / sigma`` with Tweedie's denoiser ``D`` (see
:mod:`scoresde.sampling.fast`). For Gaussian data ``N(mu, S)`` the denoiser is linear,
``D_G(y) = mu + S (S + sigma^2 I)^-1 (y - mu)``, and the flow is solved in the eigenbasis
``S = V diag(lambda) V^T``: ``y(sigma) = mu + V (lambda + sigma^2)^(1/2) u`` with ``u``
constant. For any data, write ``D = D_G + V r`` (``r``, the residual, is what the data's
Gaussian does not explain); then exactly

    ``du / dtau = -r / (lambda + e^(2 tau))^(1/2)``,  ``tau = log sigma``, per eigen-direction.

``sample_gei`` integrates this with ``r`` interpolated by a polynomial in ``tau`` through the
last score calls (Adams-Bashforth, ``order`` points) and, optionally, re-solves each step with
the call at its end (Adams-Moulton, no extra call). The weights, integrals of the polynomial
basis against ``(lambda + e^(2 tau))^(-1/2)`` per eigenvalue, are taken by Gauss-Legendre
quadrature. It is exact on Gaussian data at any number of calls, reduces to DPM-Solver++
(Lu et al. 2022) where ``lambda = 0``, and its start is the few-step defaults' Gaussian head
(:mod:`scoresde.sampling.fewstep`): the prior draw ``x_T = s(T) z`` is ``u = V^T z``, carried
without a call down to the first grid time, where the residual is first looked at. The last
call also ends the path: the Gaussian part exactly to ``sigma = 0``, ``mu + V lambda^(1/2) u``,
plus the residual as Tweedie's step takes it, so no denoising call follows.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, NamedTuple

import numpy as np
import torch

from ..checks import check_int
from ..sde import SDE
from .common import Callback, CountedScore, check_grid, run_callback, time_vector
from .fewstep import MIN_WINDOW, DataStats
from .grids import sigma_of_t, time_of_sigma

__all__ = ["GaussianPart", "gaussian_part", "residual_weights", "gei_grid", "sample_gei",
           "GEI_HEAD", "GEI_HEAD_GROWTH", "GEI_TAIL"]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
GEI_HEAD = 1.0  # at 5 calls the first at sigma = GEI_HEAD * sqrt(largest eigenvalue of S),
GEI_HEAD_GROWTH = 3  # twice higher every GEI_HEAD_GROWTH more calls
GEI_TAIL = 0.08  # the last at sigma = GEI_TAIL * the data's scale (sqrt(trace S / D)),
# half that every GEI_HEAD_GROWTH more calls past 5
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(24)


class GaussianPart(NamedTuple):
    """The data Gaussian in its eigenbasis: ``mean`` ``(D,)``, ``evals`` ``(D,)`` (>= 0) and
    ``evecs`` ``(D, D)`` (columns), or ``None`` for an isotropic Gaussian (the basis is the
    identity); float64 on the data's device."""

    mean: torch.Tensor
    evals: torch.Tensor
    evecs: torch.Tensor | None

    def to_basis(self, v: torch.Tensor) -> torch.Tensor:
        """``V^T v`` for rows ``v`` ``(B, D)``."""
        return v if self.evecs is None else v @ self.evecs

    def from_basis(self, w: torch.Tensor) -> torch.Tensor:
        """``V w`` for rows ``w`` ``(B, D)``."""
        return w if self.evecs is None else w @ self.evecs.T


def gaussian_part(stats: DataStats, device=None) -> GaussianPart:
    """The eigen-decomposition of the data's statistics (:func:`~scoresde.sampling.fewstep.
    data_stats`): ``D`` eigenvalues, or one repeated for ``data_std``. Costs one symmetric
    eigen-decomposition of the ``(D, D)`` covariance (a second for ``D = 4096`` on a CPU)."""
    mean = stats.mean.to(device, torch.float64)
    if stats.cov is None:
        return GaussianPart(mean, torch.full_like(mean, stats.var), None)
    evals, evecs = torch.linalg.eigh(stats.cov.to(device, torch.float64))
    return GaussianPart(mean, evals.clamp(min=0), evecs)


def gei_grid(sde: SDE, steps: int, eps: float, gaussian: GaussianPart) -> torch.Tensor:
    """``T``, then ``steps`` times evenly spaced in log-SNR from ``sigma = GEI_HEAD *
    sqrt(lambda_max)`` at 5 calls or fewer (the data's widest direction: above it the data's
    Gaussian explains nearly all of the marginal), twice that every :data:`GEI_HEAD_GROWTH`
    more calls (what the Gaussian leaves out above the first call shrinks as it rises, so more
    calls converge to the exact flow), to ``sigma = GEI_TAIL * scale``, half that as often (a
    few calls do best to leave the finest scales to the last call), both clipped to the SDE's
    range ``[sigma(eps), sigma(T))``. Where less than a factor :data:`~scoresde.sampling.
    fewstep.MIN_WINDOW` is left between them, the calls span ``sigma(T)`` to ``sigma(eps)``.

    Returns:
        Decreasing float64 times ``(steps + 1,)``.
    """
    sig_T, sig_eps = sigma_of_t(sde, torch.tensor([sde.T, eps], dtype=torch.float64)).tolist()
    top, scale = float(gaussian.evals.max()), math.sqrt(float(gaussian.evals.mean()))
    growth = 2 ** (max(steps - 5, 0) / GEI_HEAD_GROWTH)
    head = min(GEI_HEAD * growth * math.sqrt(top), sig_T * (1 - 1e-6))
    tail = max(GEI_TAIL * scale / growth, sig_eps)
    if head < MIN_WINDOW * tail:
        warnings.warn(
            f"gei's calls for this data, sigma from {GEI_HEAD * growth * math.sqrt(top):.3g} "
            f"to {GEI_TAIL * scale / growth:.3g}, keep less than a factor {MIN_WINDOW:g} "
            f"inside the SDE's noise range [sigma(eps), sigma(T)] = [{sig_eps:.3g}, "
            f"{sig_T:.3g}]; spreading them over that whole range", stacklevel=3)
        head, tail = sig_T * (1 - 1e-6), sig_eps
    if steps == 1:
        calls = torch.tensor([tail], dtype=torch.float64)
    else:
        calls = torch.exp(torch.linspace(math.log(head), math.log(tail), steps,
                                         dtype=torch.float64))
    ts = time_of_sigma(sde, calls).reshape(-1)
    ts[-1] = eps if tail == sig_eps else ts[-1]
    return torch.cat([torch.tensor([float(sde.T)], dtype=torch.float64), ts])


def residual_weights(taus, a: float, b: float, evals: torch.Tensor) -> list[torch.Tensor]:
    """``int_a^b l_j(tau) (lambda + e^(2 tau))^(-1/2) dtau`` for each Lagrange basis polynomial
    ``l_j`` through the nodes ``taus``, per eigenvalue ``lambda`` (``evals`` ``(D,)``).

    Gauss-Legendre quadrature with 24 nodes: the integrand is smooth in ``tau``, and the rule
    is exact to round-off for the steps the samplers take (up to about 10 in ``tau``).

    Returns:
        One tensor ``(D,)`` per node, float64.
    """
    half, mid = (b - a) / 2, (a + b) / 2
    tau = half * _NODES + mid
    kernel = 1 / torch.sqrt(evals[None, :] + torch.tensor(np.exp(2 * tau), dtype=evals.dtype,
                                                           device=evals.device)[:, None])
    out = []
    for j, tau_j in enumerate(taus):
        basis = np.ones_like(tau)
        for k, tau_k in enumerate(taus):
            if k != j:
                basis = basis * (tau - tau_k) / (tau_j - tau_k)
        w = torch.tensor(half * _WEIGHTS * basis, dtype=evals.dtype, device=evals.device)
        out.append(w @ kernel)
    return out


def sample_gei(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, ts: torch.Tensor, *,
               generator: torch.Generator | None = None, callback: Callback | None = None,
               gaussian: GaussianPart | None = None, order: int = 2,
               moulton: bool = False, warm_start: bool = True) -> tuple[torch.Tensor, dict]:
    """The Gaussian exponential integrator on the probability-flow ODE: one score call a step.

    Arguments and returns as :func:`~scoresde.sampling.sample_euler`, except that the score is
    called at ``ts[1:]`` (``ts[0] = T``: the prior draw goes to ``ts[1]`` along the Gaussian's
    flow) and the result is the data itself (``sigma = 0``), not the state at ``ts[-1]``, so
    ``len(ts) - 1`` calls in all. The callback sees every step from ``ts[0]`` to ``ts[-1]``.

    Args:
        gaussian: the data's Gaussian (:func:`gaussian_part`); required.
        order: points of the residual's polynomial, 1 to 3 (fewer while the path has fewer
            calls): an exponential Adams-Bashforth step, DEIS-like; order 1 is DDIM where
            ``lambda = 0``.
        moulton: re-solve each step with the call at its end (Adams-Moulton: one order more,
            no call).
        warm_start: start the polynomial with ``r = 0`` one step above ``ts[1]`` (the
            Gaussian's own estimate there), so the first step is of the full order.

    Raises:
        ValueError: no ``gaussian``, or ``order`` outside 1-3.
        TypeError: ``moulton`` or ``warm_start`` not a bool.
    """
    if gaussian is None:
        raise ValueError("gei needs the data's statistics (data_std, or data_mean and "
                         "data_cov): its Gaussian part is solved exactly")
    order = check_int("order", order, 1, 3)
    for name, value in (("moulton", moulton), ("warm_start", warm_start)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")
    gaussian = GaussianPart(*(None if v is None else v.to(x.device, torch.float64)
                              for v in gaussian))
    ts = check_grid(sde, ts)
    m, s = (v.tolist() for v in sde.marginal_coeffs(ts))
    sigma = [s_i / m_i for s_i, m_i in zip(s, m)]
    tau = [math.log(v) for v in sigma]
    counted = CountedScore(score_fn)
    shape, dtype = x.shape, x.dtype
    lam, mean = gaussian.evals, gaussian.mean

    def to_u(y: torch.Tensor, i: int) -> torch.Tensor:
        return gaussian.to_basis(y - mean) / torch.sqrt(lam + sigma[i] ** 2)

    def to_y(u: torch.Tensor, i: int) -> torch.Tensor:
        return mean + gaussian.from_basis(torch.sqrt(lam + sigma[i] ** 2) * u)

    def residual(u: torch.Tensor, x_i: torch.Tensor, i: int):
        """``r`` at grid time ``i`` of the state ``u`` (``x_i`` in the data's dtype), and the
        data estimate ``x0`` (float64, rows)."""
        x0 = (x_i + s[i] ** 2 * counted(x_i, time_vector(ts[i], x_i))) / m[i]
        x0 = x0.reshape(len(x0), -1).to(torch.float64)
        w = torch.sqrt(lam + sigma[i] ** 2) * u
        return gaussian.to_basis(x0 - mean) - lam / (lam + sigma[i] ** 2) * w, x0

    def step(u, points, a, b):
        weights = residual_weights([p[0] for p in points], a, b, lam)
        return u - sum(w * r for w, (_, r) in zip(weights, points))

    def state(u, i, x_i=None, **fields):
        """``x`` at grid time ``i`` (``x_i``, if known) after the callback, and ``u`` again
        where the callback changed it."""
        if x_i is None:
            x_i = (m[i] * to_y(u, i)).to(dtype).reshape(shape)
        x_out = run_callback(callback, x_i, i=i - 1, t=float(ts[i - 1]), t_next=float(ts[i]),
                             **fields)
        if x_out is not x_i:
            u = to_u(x_out.reshape(len(x_out), -1).to(torch.float64) / m[i], i)
        return u, x_out

    with torch.no_grad():
        # The prior draw x_T = s(T) z is u = V^T z, its Gaussian flow exact down to ts[1].
        u = gaussian.to_basis(x.reshape(len(x), -1).to(torch.float64) / s[0])
        u, x = state(u, 1, denoised=None)
        h = tau[1] - tau[2] if len(ts) > 2 else 1.0
        points = [(tau[1] + h, torch.zeros_like(u))] if warm_start else []
        r, x0 = residual(u, x, 1)
        points.append((tau[1], r))
        for i in range(1, len(ts) - 1):
            u_next = step(u, points[-order:], tau[i], tau[i + 1])
            x_next = (m[i + 1] * to_y(u_next, i + 1)).to(dtype).reshape(shape)
            r, x0_next = residual(u_next, x_next, i + 1)
            if moulton:
                u_next = step(u, points[-order:] + [(tau[i + 1], r)], tau[i], tau[i + 1])
                x_next = None
            points.append((tau[i + 1], r))
            u, x = state(u_next, i + 1, x_next, denoised=x0.to(dtype).reshape(shape))
            x0 = x0_next
        # The end: the Gaussian's flow to sigma = 0 exactly, the residual as Tweedie's step.
        x = mean + gaussian.from_basis(torch.sqrt(lam) * u + points[-1][1])
    info = {"nfe": counted.calls, "grid": ts, "steps": len(ts) - 1}
    return x.to(dtype).reshape(shape), info
