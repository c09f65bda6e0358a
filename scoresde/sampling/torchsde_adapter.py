"""The one adapter to ``torchsde``: the reverse-time SDE through ``torchsde.sdeint``.

torchsde integrates forward in its time, so time is reversed once, here: ``tau = T_start - t``
runs from 0 to ``T_start - eps`` and the reverse SDE of ``sde.reverse(score_fn)``,
``dx = -drift(x, t) dtau + g dW``, is handed to torchsde as a diagonal-noise SDE on the
flattened state ``(B, D)``. Its noise is additive (``g`` depends on time only), so the Ito and
Stratonovich readings are the same process and every method applies: ``reversible_heun`` gets
the Stratonovich label it needs.

The Brownian motion is a ``torchsde.BrownianInterval`` told the step size (``dt``), with an
unbounded cache and space-time Levy area only for ``srk``: queried at increasing, known times
it then costs little per step (see ``benchmarks/samplers.py``). With a
:class:`~scoresde.sampling.PerSampleGenerator` sample ``i``'s Brownian path depends only on
its seed: on fixed steps the increments are that sample's draws (:class:`SteppedBrownian`, one
buffered draw a step); adaptive steps, which query sub-intervals, get one ``BrownianInterval``
per sample seeded from its generator (:class:`PerSampleBrownian`, ``B`` times the cost).
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
import torchsde

from ..checks import check_choice, check_number
from ..sde import SDE, ReverseSDE
from ..utils import seed_from
from .common import (Callback, CountedScore, PerSampleGenerator, Randomness, check_grid, randn,
                     run_callback)

__all__ = ["sample_torchsde", "TORCHSDE_METHODS", "PerSampleBrownian", "SteppedBrownian"]

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


class PerSampleBrownian(torchsde.BaseBrownian):
    """A Brownian motion of shape ``(B, D)`` whose row ``i`` is the ``(1, D)`` path ``paths[i]``.

    Every query (increments, and the Levy areas ``U``, ``A`` that ``srk`` asks for) goes to
    each path and the answers are stacked, so row ``i`` is what ``paths[i]`` alone would give.
    """

    def __init__(self, paths: list):
        self.paths = list(paths)

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        rows = [p(ta, tb, return_U=return_U, return_A=return_A) for p in self.paths]
        if isinstance(rows[0], tuple):
            return tuple(torch.cat(parts) for parts in zip(*rows))
        return torch.cat(rows)

    def __repr__(self) -> str:
        return f"PerSampleBrownian({len(self.paths)} x {self.paths[0]!r})"

    @property
    def dtype(self):
        return self.paths[0].dtype

    @property
    def device(self):
        return self.paths[0].device

    @property
    def shape(self):
        return torch.Size((len(self.paths), *self.paths[0].shape[1:]))

    @property
    def levy_area_approximation(self):
        return self.paths[0].levy_area_approximation


class SteppedBrownian(torchsde.BaseBrownian):
    """Brownian increments on consecutive steps, drawn as they are asked for from a generator.

    A query ``(ta, tb)`` must start where the last one ended (at 0 first): it gets ``W = sqrt(h)
    z`` with ``h = tb - ta`` and, for space-time Levy area, ``U = h (W / 2 + H)`` with ``H =
    sqrt(h / 12) z'``, independent of ``W`` (torchsde's convention). Independent Gaussian
    increments on disjoint steps are a Brownian motion seen on the step grid, which is all a
    fixed-step solver asks of it. With a :class:`~scoresde.sampling.PerSampleGenerator` each
    step costs one buffered draw, where :class:`PerSampleBrownian` costs ``B`` interval queries.

    Raises:
        RuntimeError: (on a query) an interval that does not continue the last one.
    """

    def __init__(self, generator: Randomness, shape, dtype, device, levy_area_approximation):
        self.generator, self._shape = generator, torch.Size(shape)
        self._dtype, self._device = dtype, torch.device(device)
        self._levy, self._t = levy_area_approximation, 0.0

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        ta, tb = (0.0, float(ta)) if tb is None else (float(ta), float(tb))
        if ta != self._t or tb <= ta or return_A:
            raise RuntimeError(f"SteppedBrownian serves consecutive steps without Levy area A; "
                               f"got ({ta}, {tb}) after a step ending at {self._t}")
        self._t, h = tb, tb - ta
        w = h**0.5 * self._draw()
        if not return_U:
            return w
        return w, h * (0.5 * w + (h / 12) ** 0.5 * self._draw())

    def _draw(self) -> torch.Tensor:
        return randn(self._shape, self.generator, dtype=self._dtype, device=self._device)

    def __repr__(self) -> str:
        return f"SteppedBrownian(shape={tuple(self._shape)}, t={self._t})"

    @property
    def dtype(self):
        return self._dtype

    @property
    def device(self):
        return self._device

    @property
    def shape(self):
        return self._shape

    @property
    def levy_area_approximation(self):
        return self._levy


def _brownian(generator: Randomness, y0: torch.Tensor, span: float, steps: int, method: str,
              adaptive: bool):
    """The Brownian motion on ``[0, span]`` for states like ``y0`` ``(B, D)``: one interval
    seeded by ``generator``; for a :class:`PerSampleGenerator`, per-sample increments on fixed
    steps or one interval per sample for adaptive steps (which query sub-intervals)."""
    levy = "space-time" if method == "srk" else "none"
    if isinstance(generator, PerSampleGenerator) and not adaptive:
        return SteppedBrownian(generator, y0.shape, y0.dtype, y0.device, levy)

    def interval(size, entropy):
        return torchsde.BrownianInterval(
            t0=0.0, t1=span, size=size, dtype=y0.dtype, device=y0.device, entropy=entropy,
            dt=span / steps, cache_size=None, levy_area_approximation=levy)

    if isinstance(generator, PerSampleGenerator):
        one = (1, *y0.shape[1:])
        return PerSampleBrownian([interval(one, seed_from(g)) for g in generator.generators])
    return interval(y0.shape, seed_from(generator))  # on the generator's device (CUDA too)


def sample_torchsde(
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sde: SDE,
    x: torch.Tensor,
    ts: torch.Tensor,
    *,
    generator: Randomness = None,
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
        generator: seeds the Brownian motion (one integer drawn from it); a
            :class:`~scoresde.sampling.PerSampleGenerator` seeds one path per sample (with
            ``adaptive=True`` the steps are still chosen for the whole batch, so a sample's
            result depends on the batch up to the tolerances).
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
    bm = _brownian(generator, y0, span, steps, method, adaptive)
    # A step a hair longer than span / steps: the last step is clipped to the end, not split.
    dt = span / steps * (1 + 1e-6)
    with torch.no_grad(), warnings.catch_warnings():
        # torchsde warns that adaptive Euler may not converge for non-additive noise; the noise
        # here is additive (g depends on time only), declared "diagonal" for the state's shape.
        warnings.filterwarnings("ignore", message=".*non-additive noise", category=UserWarning)
        ys = torchsde.sdeint(rsde, y0, taus, bm=bm, method=method, dt=dt, adaptive=adaptive,
                             rtol=rtol, atol=atol, dt_min=span * 1e-6)
    x = run_callback(callback, ys[-1].reshape(x.shape), i=0, t=t_start, t_next=t_end,
                     denoised=None)
    info = {"nfe": counted.calls, "steps": None if adaptive else steps, "grid": ts,
            "method": method, "adaptive": adaptive}
    if adaptive:
        info.update(rtol=rtol, atol=atol)
    return x, info
