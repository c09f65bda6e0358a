"""The one adapter to ``torchsde``: the reverse-time SDE through ``torchsde.sdeint``.

torchsde integrates forward in its time, so time is reversed once, here: ``tau = T_start - t``
runs from 0 to ``T_start - eps`` and the reverse SDE of ``sde.reverse(score_fn)``,
``dx = -drift(x, t) dtau + g dW``, is handed to torchsde as a diagonal-noise SDE on the
flattened state ``(B, D)``. Its noise is additive (``g`` depends on time only), so the Ito and
Stratonovich readings are the same process and every method applies: ``reversible_heun`` gets
the Stratonovich label it needs.

On fixed steps the Brownian increments are drawn from the generator as torchsde asks for
them (:class:`SteppedBrownian`: one ``N(0, I)`` draw a step, two for ``srk``'s space-time Levy
area), as ``em`` draws its noise; with a :class:`~scoresde.sampling.PerSampleGenerator` these
are sample ``i``'s own draws, so its path depends only on its seed. A ``BrownianInterval`` costs
about 0.3 ms a query on 2000 x 2 states, near 10% of a cheap score's time on its own (see
``docs/benchmarks/sampling-speed.md``). Adaptive steps, which query sub-intervals and retry rejected
steps, get a ``torchsde.BrownianInterval`` told the first step size, with an unbounded cache, seeded
by one integer from the generator, or one interval per sample for a ``PerSampleGenerator``
(:class:`PerSampleBrownian`, ``B`` times the cost). On fixed steps f and g are asked only at times
known in advance, whose coefficients are computed once (``sde.reverse(..., times=...)``); Milstein
runs derivative-free (its correction is zero for additive noise either way).
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
import torchsde

from ..checks import check_choice, check_number
from ..sde import SDE
from ..utils import seed_from
from .common import (Callback, CountedScore, PerSampleGenerator, Randomness, check_grid, randn,
                     run_callback)

__all__ = ["sample_torchsde", "TORCHSDE_METHODS", "PerSampleBrownian", "SteppedBrownian"]

TORCHSDE_METHODS = ("euler", "milstein", "srk", "reversible_heun")


class _ReverseTimeSDE(torch.nn.Module):
    """``sde.reverse(score_fn)`` in torchsde's forward time ``tau``, on states of shape ``(B, D)``.

    ``dx = -drift(x, t) dtau + g(t) dW`` with ``t = t_start - tau``: the reverse SDE's drift and
    diffusion, read from ``sde.reverse(score_fn, times=...)`` at the times of ``taus`` (those
    torchsde will ask for, if known), whose coefficients then cost a lookup.
    """

    noise_type = "diagonal"

    def __init__(self, sde: SDE, score_fn, shape, t_start: float, sde_type: str,
                 taus: list[float] | None = None):
        super().__init__()
        self.shape, self.t_start, self.sde_type = tuple(shape), t_start, sde_type
        times = None if taus is None else [self._time(tau) for tau in taus]
        self.reverse = sde.reverse(score_fn, times=times)

    def _time(self, tau: torch.Tensor | float) -> float:
        return max(self.t_start - float(tau), 0.0)

    def f(self, tau: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.reverse.drift(y.reshape(self.shape), self._time(tau)).reshape(y.shape).neg_()

    def g(self, tau: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        g = self.reverse.diffusion(self._time(tau))
        if torch.is_grad_enabled():
            # For a torchsde path that differentiates g in y (derivative-using Milstein; ours
            # runs derivative-free): 0 * y keeps y in the graph (the derivative is 0).
            return 0 * y + g
        return y.new_full((), g).expand(y.shape)  # one number seen as (B, D): no per-step copy


class _Brownian(torchsde.BaseBrownian):
    """What torchsde asks of every Brownian motion besides its queries: shape, dtype, device and
    the kind of Levy area it gives."""

    def __init__(self, shape, dtype, device, levy_area_approximation):
        self._shape, self._dtype = torch.Size(shape), dtype
        self._device, self._levy = torch.device(device), levy_area_approximation

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


class PerSampleBrownian(_Brownian):
    """A Brownian motion of shape ``(B, D)`` whose row ``i`` is the ``(1, D)`` path ``paths[i]``.

    Every query (increments, and the Levy areas ``U``, ``A`` that ``srk`` asks for) goes to
    each path and the answers are stacked, so row ``i`` is what ``paths[i]`` alone would give.
    """

    def __init__(self, paths: list):
        self.paths = list(paths)
        first = self.paths[0]
        super().__init__((len(self.paths), *first.shape[1:]), first.dtype, first.device,
                         first.levy_area_approximation)

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        rows = [p(ta, tb, return_U=return_U, return_A=return_A) for p in self.paths]
        if isinstance(rows[0], tuple):
            return tuple(torch.cat(parts) for parts in zip(*rows))
        return torch.cat(rows)

    def __repr__(self) -> str:
        return f"PerSampleBrownian({len(self.paths)} x {self.paths[0]!r})"


class SteppedBrownian(_Brownian):
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
        super().__init__(shape, dtype, device, levy_area_approximation)
        self.generator, self._t = generator, 0.0

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


def _brownian(generator: Randomness, y0: torch.Tensor, span: float, steps: int, method: str,
              adaptive: bool):
    """The Brownian motion on ``[0, span]`` for states like ``y0`` ``(B, D)``: on fixed steps
    the increments drawn from ``generator`` (:class:`SteppedBrownian`); adaptive steps, which
    query sub-intervals, get one ``BrownianInterval`` seeded by ``generator`` or, for a
    :class:`PerSampleGenerator`, one per sample."""
    levy = "space-time" if method == "srk" else "none"
    if not adaptive:
        return SteppedBrownian(generator, y0.shape, y0.dtype, y0.device, levy)

    def interval(size, entropy):
        return torchsde.BrownianInterval(
            t0=0.0, t1=span, size=size, dtype=y0.dtype, device=y0.device, entropy=entropy,
            dt=span / steps, cache_size=None, levy_area_approximation=levy)

    if isinstance(generator, PerSampleGenerator):
        one = (1, *y0.shape[1:])
        return PerSampleBrownian([interval(one, seed_from(g)) for g in generator.generators])
    return interval(y0.shape, seed_from(generator))  # on the generator's device (CUDA too)


# Where in a step ``(tau0, tau1)``, besides ``tau0``, torchsde's SRK (its SRID2 tableau's ``C0``
# and ``C1``) asks for f and g: ``tau0 + c (tau1 - tau0)``, which for c = 1 need not be tau1. A
# time missing from the table is computed when asked: this list saves time, not correctness.
_SRK_STAGES = (0.25, 0.5, 1.0)


def _step_times(span: float, dt: float, method: str) -> list[float]:
    """The times ``tau`` torchsde's fixed-step loop asks f and g for: ``tau += dt`` clipped to
    ``span``, in its float64 arithmetic, and for ``srk`` the stages inside each step."""
    taus = [0.0]
    while taus[-1] < span:
        taus.append(min(taus[-1] + dt, span))
    if method == "srk":
        taus += [t0 + c * (t1 - t0) for t0, t1 in zip(taus, taus[1:]) for c in _SRK_STAGES]
    return taus


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
        generator: the Brownian motion's randomness: on fixed steps its increments are drawn
            from it step by step; with ``adaptive=True`` one integer drawn from it seeds a
            ``BrownianInterval``. A :class:`~scoresde.sampling.PerSampleGenerator` gives one
            path per sample (with ``adaptive=True`` the steps are still chosen for the whole
            batch, so a sample's result depends on the batch up to the tolerances).
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
    span = t_start - t_end
    # A step a hair longer than span / steps: the last step is clipped to the end, not split.
    dt = span / steps * (1 + 1e-6)
    rsde = _ReverseTimeSDE(sde, counted, x.shape, t_start, sde_type,
                           None if adaptive else _step_times(span, dt, method))
    y0 = x.reshape(x.shape[0], -1)
    taus = torch.tensor([0.0, span], dtype=torch.float64, device=y0.device)
    bm = _brownian(generator, y0, span, steps, method, adaptive)
    with torch.no_grad(), warnings.catch_warnings():
        # torchsde warns that adaptive Euler may not converge for non-additive noise; the noise
        # here is additive (g depends on time only), declared "diagonal" for the state's shape.
        warnings.filterwarnings("ignore", message=".*non-additive noise", category=UserWarning)
        ys = torchsde.sdeint(rsde, y0, taus, bm=bm, method=method, dt=dt, adaptive=adaptive,
                             rtol=rtol, atol=atol, dt_min=span * 1e-6,
                             options={"grad_free": method == "milstein"})  # dg/dy = 0
    x = run_callback(callback, ys[-1].reshape(x.shape), i=0, t=t_start, t_next=t_end,
                     denoised=None)
    info = {"nfe": counted.calls, "steps": None if adaptive else steps, "grid": ts,
            "method": method, "adaptive": adaptive}
    if adaptive:
        info.update(rtol=rtol, atol=atol)
    return x, info
