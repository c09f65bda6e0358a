"""The one adapter to ``torchsde``: the reverse-time SDE through ``torchsde.sdeint``.

torchsde integrates forward in its time, so time is reversed once, here: ``tau = T_start - t``
runs from 0 to ``T_start - eps`` and the reverse SDE of ``sde.reverse(score_fn)``,
``dx = -drift(x, t) dtau + g dW``, is handed to torchsde as a diagonal-noise SDE on the
flattened state ``(B, D)``. Its noise is additive (``g`` depends on time only), so the Ito and
Stratonovich readings are the same process and every method applies: ``reversible_heun`` gets
the Stratonovich label it needs.

The Brownian motion is a ``torchsde.BrownianInterval`` told the step size (``dt``), with an
unbounded cache and space-time Levy area only for ``srk``: queried at increasing, known times
it then costs little per step (see ``benchmarks/samplers.py``).
"""

from __future__ import annotations

from typing import Callable

import torch
import torchsde

from ..checks import check_choice, check_number
from ..sde import SDE, ReverseSDE
from ..utils import seed_from
from .common import Callback, CountedScore, check_grid, run_callback

__all__ = ["sample_torchsde", "TORCHSDE_METHODS"]

TORCHSDE_METHODS = ("euler", "milstein", "srk", "reversible_heun")


class _ReverseTimeSDE(torch.nn.Module):
    """``sde.reverse(score_fn)`` in torchsde's forward time ``tau``, on states of shape ``(B, D)``.

    ``dx = -drift(x, t) dtau + g(t) dW`` with ``t = t_start - tau``: the reverse SDE's drift and
    diffusion, read from :class:`~scoresde.sde.ReverseSDE`.
    """

    noise_type = "diagonal"

    def __init__(self, reverse: ReverseSDE, shape, t_start: float, sde_type: str):
        super().__init__()
        self.reverse, self.shape = reverse, tuple(shape)
        self.t_start, self.sde_type = t_start, sde_type

    def _time(self, tau: torch.Tensor) -> float:
        return max(self.t_start - float(tau), 0.0)

    def f(self, tau: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -self.reverse.drift(y.reshape(self.shape), self._time(tau)).reshape(y.shape)

    def g(self, tau: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # 0 * y keeps y in the graph, so Milstein's and SRK's derivative of g (zero) is defined.
        return 0 * y + self.reverse.diffusion(self._time(tau))


def sample_torchsde(
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sde: SDE,
    x: torch.Tensor,
    ts: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    method: str = "euler",
    adaptive: bool = False,
    rtol: float = 1e-3,
    atol: float = 1e-3,
) -> tuple[torch.Tensor, dict]:
    """Sample the reverse-time SDE with ``torchsde.sdeint`` from ``ts[0]`` down to ``ts[-1]``.

    Args:
        score_fn: score function ``score_fn(x, t)``.
        sde: the forward SDE.
        x: the prior draw at ``ts[0]``, shape ``(B, *dims)``.
        ts: evenly spaced decreasing times (torchsde steps with a fixed ``dt``); with
            ``adaptive=True`` the spacing is the first step size.
        generator: seeds the Brownian motion (one integer drawn from it).
        callback: called once, at the end, with ``i = 0``.
        method: one of :data:`TORCHSDE_METHODS`.
        adaptive: torchsde's step-doubling adaptive stepping with ``rtol`` and ``atol``.
        rtol, atol: torchsde's tolerances (its own defaults, 1e-3), used only when
            ``adaptive=True``; fixed steps ignore them.

    Returns:
        ``(x, info)``: the state at ``ts[-1]`` and ``info`` with ``nfe`` (counted score calls),
        ``steps`` (fixed steps; adaptive torchsde does not report its count), ``method``,
        ``adaptive`` and, when adaptive, ``rtol`` and ``atol``.
    """
    check_choice("torchsde method", method, TORCHSDE_METHODS)
    rtol = check_number("rtol", rtol, 0, low_open=True)
    atol = check_number("atol", atol, 0, low_open=True)
    ts = check_grid(sde, ts)
    steps = len(ts) - 1
    dt_grid = ts[:-1] - ts[1:]
    if not adaptive and not torch.allclose(dt_grid, dt_grid[0].expand(steps), rtol=1e-6):
        raise ValueError("the torchsde solver steps evenly in t: use grid='uniform'")
    t_start, t_end = float(ts[0]), float(ts[-1])
    counted = CountedScore(score_fn)
    sde_type = "stratonovich" if method == "reversible_heun" else "ito"
    rsde = _ReverseTimeSDE(sde.reverse(counted), x.shape, t_start, sde_type)
    y0 = x.reshape(x.shape[0], -1)
    span = t_start - t_end
    taus = torch.tensor([0.0, span], dtype=torch.float64, device=y0.device)
    entropy = seed_from(generator)  # on the generator's device (CUDA too)
    bm = torchsde.BrownianInterval(
        t0=0.0, t1=span, size=y0.shape, dtype=y0.dtype, device=y0.device, entropy=entropy,
        dt=span / steps, cache_size=None,
        levy_area_approximation="space-time" if method == "srk" else "none")
    # A step a hair longer than span / steps: the last step is clipped to the end, not split.
    dt = span / steps * (1 + 1e-6)
    with torch.no_grad():
        ys = torchsde.sdeint(rsde, y0, taus, bm=bm, method=method, dt=dt, adaptive=adaptive,
                             rtol=rtol, atol=atol, dt_min=span * 1e-6)
    x = run_callback(callback, ys[-1].reshape(x.shape), i=0, t=t_start, t_next=t_end,
                     denoised=None)
    info = {"nfe": counted.calls, "steps": None if adaptive else steps, "grid": ts,
            "method": method, "adaptive": adaptive}
    if adaptive:
        info.update(rtol=rtol, atol=atol)
    return x, info
