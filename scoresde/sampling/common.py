"""Pieces every sampler shares: the grid's coefficients, noise, callbacks, Tweedie's estimate.

:class:`CountedScore` and :func:`time_vector` live in :mod:`scoresde.utils` (the likelihood
uses them too) and are re-exported here.

The callback contract (all fixed-grid samplers): after step ``i`` the sampler calls
``callback({"i": i, "t": t_cur, "t_next": t_next, "x": x, "denoised": x0_hat})`` where ``x`` is
the state at ``t_next`` and ``x0_hat`` the sampler's latest data estimate (``None`` when it made
none). If the callback returns a tensor, that tensor replaces ``x`` for the following steps. This
is the hook for imputation and inpainting: replace the known entries of ``x`` by a copy of the
data diffused to ``t_next`` with ``sde.marginal_prob``. Classifier-free guidance needs no hook:
it is a score function that mixes a conditional and an unconditional score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..sde import SDE
from ..utils import CountedScore, time_vector

__all__ = ["CountedScore", "GridCoeffs", "Callback", "NoiseSampler", "run_callback",
           "default_noise", "tweedie", "check_grid", "time_vector"]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[dict], Optional[torch.Tensor]]
NoiseSampler = Callable[[float, float], torch.Tensor]


@dataclass
class GridCoeffs:
    """The marginals' coefficients on a time grid, as Python floats (cheap inside the loop).

    ``t``, ``m``, ``s`` are lists of length ``steps + 1``; ``sigma = s / m``. (The drift and
    diffusion come from the reverse-time SDE, ``sde.reverse(score_fn, times=ts)``.)
    """

    t: list
    m: list
    s: list
    sigma: list

    @classmethod
    def build(cls, sde: SDE, ts: torch.Tensor) -> "GridCoeffs":
        ts = ts.detach().to("cpu", torch.float64)
        m, s = sde.marginal_coeffs(ts)
        return cls(ts.tolist(), m.tolist(), s.tolist(), (s / m).tolist())

    def transition(self, i: int) -> tuple[float, float]:
        """``(a, b^2)`` of the forward step from ``t[i+1]`` to ``t[i]``: ``x_i = a x_{i+1} + b z``.

        From the marginals: ``a = m_i / m_{i+1}`` and ``b^2 = s_i^2 - a^2 s_{i+1}^2``
        (DDPM's ``sqrt(1 - beta_i)`` and ``beta_i`` for VP; ``1`` and ``sigma_i^2 -
        sigma_{i+1}^2`` for VE).
        """
        a = self.m[i] / self.m[i + 1]
        return a, max(self.s[i] ** 2 - a**2 * self.s[i + 1] ** 2, 0.0)


def default_noise(x: torch.Tensor, generator: torch.Generator | None) -> NoiseSampler:
    """A noise sampler drawing fresh ``N(0, I)`` of ``x``'s shape, dtype and device each call."""

    def noise(t_cur: float, t_next: float) -> torch.Tensor:
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    return noise


def run_callback(callback: Callback | None, x: torch.Tensor, **fields) -> torch.Tensor:
    """Call ``callback`` with ``x`` and ``fields``; return its tensor if it gave one, else ``x``."""
    if callback is None:
        return x
    out = callback({"x": x, **fields})
    if out is None:
        return x
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        raise TypeError(f"a callback may return None or a tensor of shape {tuple(x.shape)}, "
                        f"got {type(out).__name__}")
    return out


def tweedie(score_fn: ScoreFn, x: torch.Tensor, t: float, m: float, s: float) -> torch.Tensor:
    """Tweedie's posterior mean ``E[x_0 | x_t = x] = (x + s^2 score(x, t)) / m``; shape of ``x``."""
    return (x + s**2 * score_fn(x, time_vector(t, x))) / m


def check_grid(sde: SDE, ts: torch.Tensor) -> torch.Tensor:
    """Return ``ts`` as float64 on the CPU after checking it decreases inside ``(0, T]``."""
    ts = torch.as_tensor(ts).detach().to("cpu", torch.float64)
    ok = ts.ndim == 1 and ts.numel() >= 2 and bool((ts[1:] < ts[:-1]).all())
    if not ok or float(ts[-1]) <= 0 or float(ts[0]) > sde.T * (1 + 1e-12):
        raise ValueError(f"ts must be a 1D grid of >= 2 strictly decreasing times in (0, T] = "
                         f"(0, {sde.T:g}], got {ts.tolist()[:6]}")
    return ts

