"""Inverse problems: draw ``x`` given ``y = A x + noise_std * n`` with a prior's score.

One entry point, :func:`solve_inverse`, and the table :data:`INVERSE_METHODS`:

``replacement`` (Song et al. 2021, section 5 and appendix I): after each solver step the
    row-space part of ``x`` (for a mask: the known entries) is replaced by ``A``'s least-norm
    solution of ``A x = y`` diffused to the step's end, ``m x_row + s z``. Colorization is this
    with :func:`~scoresde.observe.grey_matrix`: the row space of the grey projection is the
    first axis of an orthogonal change of colour basis (the paper's appendix I). It treats
    ``y`` as noiseless, and it is biased where the observed part decides the mode of the rest.
``repaint`` (Lugmayr et al. 2022): replacement, with the grid cut into segments of ``jump``
    steps; each segment is run, diffused back to its start by the exact forward transition and
    run again, ``resample`` times in all.
``dps`` (Chung et al. 2023): after each solver step, ``x <- x - step_size grad_x |y - A(x0_hat)|^2
    / |y - A(x0_hat)|`` with Tweedie's ``x0_hat(x)`` at the step's end (one extra score call and
    a backward pass a step). ``A`` may also be any differentiable function ``A(x) -> (B, M)``.
``smc``: the twisted diffusion sampler (Wu et al. 2023, :mod:`.smc`), asymptotically exact in
    the number of ``particles``; ``info["ess"]`` holds the effective sample sizes.

The first three run any solver with a per-step hook (:data:`IMPUTATION_SOLVERS`) through its
callback; ``smc`` runs its own Gaussian kernel, the ancestral step of the reverse process. All of
them ask the SDE only for ``marginal_coeffs`` and ``reverse``, and take data of any shape.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable, Sequence

import torch

from ..checks import check_choice, check_int, check_number
from ..observe import LinearObservation
from ..sde import SDE
from ..utils import CountedScore
from .api import (DEFAULT_GRIDS, IMPUTATION_SOLVERS, SAMPLERS, _solver_option_names,
                  _stop_if_not_finite)
from .api import prior_draw
from .common import Callback, GridCoeffs, chain_callbacks, offset_callback, randn, tweedie
from .grids import check_eps, check_steps, default_eps, get_grid
from .smc import sample_smc

__all__ = ["solve_inverse", "INVERSE_METHODS", "DEFAULT_SOLVER"]

# The solver of replacement, repaint and dps when none is given.
DEFAULT_SOLVER = "em"


def replacement_callback(sde: SDE, obs, generator) -> Callback:
    """The replacement step: after a solver step to ``t_next``, the observed (row-space) part of
    ``x`` becomes ``m(t_next) x_row + s(t_next) z`` with fresh ``z``.

    ``obs`` is a :class:`~scoresde.observe.LinearObservation` or, for masks, a
    :class:`~scoresde.observe.KnownEntries` (both give ``x_row`` and ``replace_row``).
    """

    def replace(d: dict) -> torch.Tensor:
        x = d["x"]
        m, s = (float(v) for v in sde.marginal_coeffs(torch.tensor([d["t_next"]],
                                                                   dtype=torch.float64)))
        flat = x.reshape(len(x), -1)
        z = randn(flat.shape, generator, dtype=x.dtype, device=x.device)
        return obs.replace_row(flat, m * obs.x_row.to(flat) + s * z).reshape(x.shape)

    return replace


def _repaint(counted, sde, obs, x, ts, *, solver, generator, callback, solver_options,
             jump: int = 10, resample: int = 10):
    jump, resample = check_int("jump", jump, low=1), check_int("resample", resample, low=1)
    c = GridCoeffs.build(sde, ts)
    steps = len(ts) - 1
    replace = replacement_callback(sde, obs, generator)
    for start in range(0, steps, jump):
        stop = min(start + jump, steps)
        hook = offset_callback(chain_callbacks(replace, callback), start)
        for r in range(resample):
            if r:  # back to the segment's start by the exact forward transition
                a = c.m[start] / c.m[stop]
                b = math.sqrt(max(c.s[start] ** 2 - a**2 * c.s[stop] ** 2, 0.0))
                x = a * x + b * randn(x.shape, generator, dtype=x.dtype, device=x.device)
            x, _ = SAMPLERS[solver](counted, sde, x, ts[start:stop + 1], generator=generator,
                                    callback=hook, **solver_options)
    return x, dict(jump=jump, resample=resample)


def _replacement(counted, sde, obs, x, ts, *, solver, generator, callback, solver_options):
    return _repaint(counted, sde, obs, x, ts, solver=solver, generator=generator,
                    callback=callback, solver_options=solver_options, jump=len(ts),
                    resample=1)[0], {}


def _dps_callback(counted, sde, measure, y, step_size: float) -> Callback:
    def step(d: dict) -> torch.Tensor:
        x = d["x"]
        m, s = (float(v) for v in sde.marginal_coeffs(torch.tensor([d["t_next"]],
                                                                   dtype=torch.float64)))
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            resid = (y.to(x) - measure(tweedie(counted, x_in, d["t_next"], m, s))).norm(dim=-1)
            (grad,) = torch.autograd.grad(resid.sum(), x_in)
        return x - 2 * step_size * grad  # grad of |r|^2 / |r| is 2 grad |r|

    return step


def _dps(counted, sde, obs, x, ts, *, solver, generator, callback, solver_options, measure, y,
         step_size: float = 1.0):
    step_size = check_number("step_size", step_size, low=0)
    hook = chain_callbacks(_dps_callback(counted, sde, measure, y, step_size), callback)
    x, _ = SAMPLERS[solver](counted, sde, x, ts, generator=generator, callback=hook,
                            **solver_options)
    return x, dict(step_size=step_size)


def _smc(counted, sde, obs, x, ts, *, solver, generator, callback, solver_options,
         particles: int = 64, ess_threshold: float = 0.5):
    return sample_smc(counted, sde, obs, x, ts, particles=particles, ess_threshold=ess_threshold,
                      generator=generator, callback=callback)


# name -> method(counted, sde, obs, x, ts, *, solver, generator, callback, solver_options,
#                **the method's own options)
INVERSE_METHODS: dict[str, Callable[..., tuple[torch.Tensor, dict]]] = {
    "replacement": _replacement,
    "repaint": _repaint,
    "dps": _dps,
    "smc": _smc,
}
_COMMON = ("counted", "sde", "obs", "x", "ts", "solver", "generator", "callback", "solver_options",
           "measure", "y")


def _method_option_names(method: str) -> tuple[str, ...]:
    return tuple(n for n in inspect.signature(INVERSE_METHODS[method]).parameters
                 if n not in _COMMON)


def _measurement(A, y, noise_std, event_shape, method):
    """``(obs, measure, y)``: the linear observation (``None`` for a function ``A``), the
    measurement as a function of flattened ``x`` and ``y`` as ``(B, M)``."""
    if callable(A) and not isinstance(A, torch.Tensor):
        if method != "dps":
            raise ValueError(f"a function A (a nonlinear measurement) needs method='dps'; "
                             f"{method!r} needs a matrix (M, D)")
        if event_shape is None:
            raise ValueError("a function A needs event_shape, the shape of one sample")
        y = torch.as_tensor(y)
        y = y[None] if y.ndim == 1 else y
        shape = tuple(int(n) for n in event_shape)
        return None, lambda flat_x: A(flat_x.reshape(len(flat_x), *shape)), y, shape
    obs = LinearObservation(A, y, noise_std, event_shape)
    y = obs.y.reshape(-1, obs.A.shape[0])
    return obs, lambda x: x.reshape(len(x), -1) @ obs.A.T.to(x), y, obs.event_shape


def solve_inverse(
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sde: SDE,
    A,
    y,
    noise_std: float = 0.0,
    method: str = "smc",
    solver: str | None = None,
    steps: int = 100,
    n: int | None = None,
    event_shape: Sequence[int] | None = None,
    eps: float | None = None,
    grid: str | None = None,
    generator: torch.Generator | None = None,
    device=None,
    dtype: torch.dtype | None = None,
    callback: Callback | None = None,
    denoise: bool = True,
    **options,
) -> tuple[torch.Tensor, dict]:
    """Draw ``x`` given a measurement ``y = A x + noise_std * n``, with the prior's score.

    Args:
        score_fn: score function of the prior ``score_fn(x, t)`` (differentiable in ``x`` for
            ``dps`` and ``smc``).
        sde: the forward SDE.
        A: ``(M, D)`` matrix acting on flattened samples, ``D = prod(event_shape)`` (masks:
            :func:`~scoresde.observe.mask_matrix`; colorization:
            :func:`~scoresde.observe.grey_matrix`); for ``dps`` also a differentiable function
            ``A(x) -> (B, M)`` of ``x`` ``(B, *event_shape)``.
        y: ``(M,)`` one measurement, or ``(B, M)`` one per sample.
        noise_std: the measurement noise's standard deviation (``>= 0``; ``replacement`` and
            ``repaint`` treat ``y`` as noiseless whatever it is).
        method: a key of :data:`INVERSE_METHODS`: ``replacement``, ``repaint``, ``dps``,
            ``smc``.
        solver: for ``replacement``, ``repaint``, ``dps`` one of :data:`IMPUTATION_SOLVERS`
            (default ``em``); ``smc`` takes none (its kernel is the ancestral step).
        steps: steps of the time grid.
        n: samples to draw (default: the rows of ``y``; one ``y`` is repeated ``n`` times).
        event_shape: the shape of one sample (default ``(D,)``).
        eps, grid, generator, device, dtype, callback: as :func:`~scoresde.sample`
            (``generator`` a ``torch.Generator``; ``smc``'s callback sees all particles).
        denoise: finish ``replacement``, ``repaint`` and ``dps`` with Tweedie's estimate at
            ``eps`` (one score call; for ``replacement`` and ``repaint`` the row-space part is
            then set to the measurement's); ``smc`` always ends with its exact Gaussian step.
        **options: the method's (``repaint``: ``jump``, ``resample``; ``dps``: ``step_size``;
            ``smc``: ``particles``, ``ess_threshold``) and the solver's (e.g. ``predictor``).

    Returns:
        ``(x, info)``: ``x`` of shape ``(n, *event_shape)``; ``info`` with ``nfe`` (every score
        call, counted), ``method``, ``solver``, ``grid``, ``eps`` and the method's entries
        (``smc``: ``ess``, ``ess_final``, ``particles``, ``log_weights``).

    Raises:
        ValueError: unknown method, solver or knob; shapes that disagree; ``noise_std = 0``
            with ``y`` outside the range of ``A``; a function ``A`` for another method than
            ``dps``. FloatingPointError: a step produced NaN or inf.
    """
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scoresde.SDE, got {type(sde).__name__}")
    check_choice("method", method, INVERSE_METHODS)
    if method == "smc" and solver is not None:
        raise ValueError(f"method 'smc' runs its own kernel (the reverse process's ancestral "
                         f"step); leave solver unset, got {solver!r}")
    solver = DEFAULT_SOLVER if solver is None else solver
    if solver not in IMPUTATION_SOLVERS:
        raise ValueError(f"method {method!r} runs the solvers {', '.join(IMPUTATION_SOLVERS)} "
                         f"(with a per-step hook), got {solver!r}")
    own = _method_option_names(method)
    theirs = () if method == "smc" else _solver_option_names(solver)
    unknown = sorted(set(options) - set(own) - set(theirs))
    if unknown:
        raise ValueError(f"method {method!r} with solver {solver!r} got unknown options "
                         f"{', '.join(unknown)}; it accepts {', '.join(own + theirs) or 'none'}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    obs, measure, y, shape = _measurement(A, y, noise_std, event_shape, method)
    n = y.shape[0] if n is None else check_int("n", n, low=1)
    if y.shape[0] not in (1, n):
        raise ValueError(f"y holds {y.shape[0]} measurements for n = {n} samples")
    y = y.expand(n, -1)
    check_steps(steps)
    eps = default_eps(sde) if eps is None else check_eps(sde, eps)
    grid = DEFAULT_GRIDS[solver] if grid is None else grid
    ts = get_grid(sde, grid, steps, eps)
    if device is None and generator is not None:
        device = generator.device
    particles = 1
    if method == "smc":
        default = inspect.signature(_smc).parameters["particles"].default
        particles = check_int("particles", options.get("particles", default), low=1)
    if obs is not None:
        obs = obs.batch(n, repeat=particles)
    counted = CountedScore(score_fn)
    x = prior_draw(sde, (n * particles, *shape), generator, device=device, dtype=dtype)
    hook = _stop_if_not_finite(solver, callback)
    extra = dict(measure=measure, y=y) if method == "dps" else {}
    own_options = {k: v for k, v in options.items() if k in own}
    try:
        x, info = INVERSE_METHODS[method](
            counted, sde, obs, x, ts, solver=solver, generator=generator, callback=hook,
            solver_options={k: v for k, v in options.items() if k not in own}, **extra,
            **own_options)
    except FloatingPointError as err:
        raise FloatingPointError(f"{method}: {err}") from None
    if method != "smc" and denoise:
        m, s = (float(v) for v in sde.marginal_coeffs(ts[-1:]))
        with torch.no_grad():
            x = tweedie(counted, x, float(ts[-1]), m, s)
        if obs is not None and method != "dps":
            flat = x.reshape(n, -1)
            x = obs.replace_row(flat, obs.x_row.to(flat)).reshape(x.shape)
    if not torch.isfinite(x).all():
        raise FloatingPointError(f"{method}: non-finite values in the result; try more steps, "
                                 "a smaller step_size or float64")
    info.update(nfe=counted.calls, method=method, solver=None if method == "smc" else solver,
                grid=ts, grid_name=grid, eps=eps, steps=steps)
    return x, info
