"""The solvers' one table, and ``sample``: draw the prior, build the grid, run a solver, denoise.

:data:`SOLVERS` holds one row per solver: its function, its default grid and whether it calls
the callback after every step (a per-step hook, which imputation needs). :data:`SAMPLERS`,
:data:`DEFAULT_GRIDS` and :data:`IMPUTATION_SOLVERS` are read from it.
"""

from __future__ import annotations

import inspect
from typing import Callable, NamedTuple, Sequence

import torch

from ..checks import check_choice
from ..sde import SDE
from .common import (Callback, CountedScore, PerSampleGenerator, Randomness, offset_callback,
                     resolve_generator, tweedie)
from .fast import sample_dpmpp_2m, sample_euler, sample_heun, sample_unipc
from .fewstep import (data_stats, fewstep_grid, gaussian_head, gaussian_warm_start,
                      uses_data_stats)
from .gei import gaussian_part, gei_grid, sample_gei
from .grids import GRIDS, check_eps, check_steps, default_eps, get_grid
from .ode import sample_ode
from .sde_solvers import sample_em, sample_pc
from .torchsde_adapter import sample_torchsde

__all__ = ["Solver", "SOLVERS", "SAMPLERS", "DEFAULT_GRIDS", "IMPUTATION_SOLVERS", "sample",
           "prior_draw"]


class Solver(NamedTuple):
    """One solver: ``sampler(score_fn, sde, x, ts, *, generator, callback, **options) -> (x,
    info)``, the name of its default grid (a key of :data:`GRIDS`), whether it calls ``callback``
    after every step of the grid (``False``: once, at the end), and whether its result depends
    on the number of steps (``False``: only on the grid's ends, the solver picks its own), and
    whether it returns the data itself, its last call ending the path (no denoising call)."""

    sampler: Callable[..., tuple[torch.Tensor, dict]]
    grid: str
    per_step_hook: bool
    uses_steps: bool = True
    ends_at_data: bool = False


# The paper's uniform t for the SDE solvers, EDM's rho-schedule for the few-step ODE solvers
# (``ode`` only uses the grid's ends). ``ode`` and ``torchsde`` integrate in one library call.
SOLVERS: dict[str, Solver] = {
    "em": Solver(sample_em, "uniform", True),
    "pc": Solver(sample_pc, "uniform", True),
    "ode": Solver(sample_ode, "uniform", False, uses_steps=False),
    "torchsde": Solver(sample_torchsde, "uniform", False),
    "euler": Solver(sample_euler, "edm", True),
    "heun": Solver(sample_heun, "edm", True),
    "dpmpp_2m": Solver(sample_dpmpp_2m, "edm", True),
    "unipc": Solver(sample_unipc, "edm", True),
    "gei": Solver(sample_gei, "log_snr", True, ends_at_data=True),
}

SAMPLERS: dict[str, Callable[..., tuple[torch.Tensor, dict]]] = {
    name: row.sampler for name, row in SOLVERS.items()}
DEFAULT_GRIDS: dict[str, str] = {name: row.grid for name, row in SOLVERS.items()}
# gei returns the data, not the state at the grid's end that the inverse methods step from
IMPUTATION_SOLVERS: tuple[str, ...] = tuple(
    name for name, row in SOLVERS.items() if row.per_step_hook and not row.ends_at_data)

# warm: from the head; gaussian: the data's statistics
_COMMON = ("score_fn", "sde", "x", "ts", "generator", "callback", "warm", "gaussian")


def _solver_params(solver: str):
    return inspect.signature(SAMPLERS[solver]).parameters


def _solver_option_names(solver: str) -> tuple[str, ...]:
    params = _solver_params(solver)
    return tuple(name for name, p in params.items()
                 if name not in _COMMON and p.kind is not p.VAR_KEYWORD)


def _stop_if_not_finite(solver: str, callback: Callback | None) -> Callback:
    """``callback``, then a check of the step's result: a NaN or inf stops the sampler with a
    ``FloatingPointError`` naming the step and its times, before it spreads to later steps."""

    def check(d: dict):
        out = callback(d) if callback is not None else None
        x = out if out is not None else d["x"]
        if not torch.isfinite(x).all():
            where = f"step {d['i'] + 1}" if SOLVERS[solver].per_step_hook else "the solve"
            raise FloatingPointError(
                f"{solver}: non-finite values after {where} (t = {float(d['t']):.4g} -> "
                f"{float(d['t_next']):.4g}); try more steps, another grid or float64")
        return out

    return check


def _run_solver(solver, counted, sde, x, ts, head, stats, gaussian, generator, callback,
                options):
    """The solver from the prior draw ``x`` over ``ts``; with the Gaussian head, its first step
    exactly (and the multistep solvers' warm start), the solver over the rest; a solver that
    takes the data's Gaussian (``gei``) gets it and starts from the prior draw itself."""
    if gaussian is not None:
        options = {**options, "gaussian": gaussian}
    if not head:
        return SAMPLERS[solver](counted, sde, x, ts, generator=generator, callback=callback,
                                **options)
    if "warm" in _solver_params(solver) and len(ts) > 2:
        options = {**options, "warm": gaussian_warm_start(sde, x, ts, stats)}
    x = gaussian_head(sde, x, ts, stats, callback)
    return SAMPLERS[solver](counted, sde, x, ts[1:], generator=generator,
                            callback=offset_callback(callback, 1), **options)


def prior_draw(sde: SDE, shape, generator: Randomness, device=None, dtype=None) -> torch.Tensor:
    """``sde.prior_sampling(shape)``; with a :class:`PerSampleGenerator`, one call per sample
    (row ``i`` from generator ``i``), so a user's own prior is drawn per sample too.

    Returns:
        ``x_T`` of shape ``shape``.
    """
    if not isinstance(generator, PerSampleGenerator):
        return sde.prior_sampling(shape, generator=generator, device=device, dtype=dtype)
    one = (1, *tuple(shape)[1:])
    return torch.cat([sde.prior_sampling(one, generator=g, device=generator.device, dtype=dtype)
                      for g in generator.generators])


def sample(
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sde: SDE,
    shape: tuple[int, ...] | torch.Size,
    solver: str = "pc",
    steps: int = 1000,
    eps: float | None = None,
    generator: Randomness = None,
    seeds: Sequence[int] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    callback: Callback | None = None,
    denoise: bool = True,
    grid: str | None = None,
    rho: float = 7.0,
    sigma_max: float | None = None,
    sigma_min: float | None = None,
    data_std: float | None = None,
    data_mean=None,
    data_cov=None,
    **options,
) -> tuple[torch.Tensor, dict]:
    """Draw samples of shape ``shape`` by solving the reverse-time SDE or the probability-flow ODE.

    Args:
        score_fn: score function ``score_fn(x, t)``, ``x`` of shape ``(B, *dims)``, ``t`` ``(B,)``.
        sde: the forward SDE (any Gaussian-linear ``scoresde.SDE``).
        shape: ``(B, *dims)`` of the samples.
        solver: a key of :data:`SAMPLERS`: ``em``, ``pc``, ``ode``, ``torchsde``, ``euler``,
            ``heun``, ``dpmpp_2m``, ``unipc``, ``gei`` (needs the data's statistics; its
            last call ends the path: ``steps`` calls, no denoising call after them).
        steps: steps of the time grid, >= 1 (``ode`` chooses its own steps).
        eps: the last time, in ``(0, T)``; default :func:`default_eps` (1e-3 VP-type,
            1e-5 VE-type).
        generator: randomness for the prior draw and the solver: a ``torch.Generator`` (one
            stream for the batch) or a :class:`PerSampleGenerator`.
        seeds: one integer per sample (``len(seeds) == shape[0]``), instead of ``generator``:
            sample ``i`` (its prior draw and every noise increment) then depends only on
            ``seeds[i]``, whatever the batch size or the other seeds, given a score function
            that treats each sample alone. Short for ``generator=PerSampleGenerator(seeds,
            device)``. Bit for bit for every fixed-step solver; ``ode`` and adaptive
            ``torchsde`` choose their steps for the whole batch (each sample's noise is still
            its own: results agree within the tolerance), and pc's ``langevin_batch``
            corrector scales its step by norms averaged over the batch.
        device, dtype: of the samples (default: the generator's device, torch's default dtype).
        callback: called after each step with a dict (see :mod:`scoresde.sampling.common`).
        denoise: finish with Tweedie's ``x0 = (x + s^2 score(x, eps)) / m`` at ``eps`` (one more
            score call, counted).
        grid: a key of :data:`GRIDS` (``uniform``, ``log_snr``, ``edm``); default per solver,
            :data:`DEFAULT_GRIDS`.
        rho: the ``edm`` grid's exponent.
        sigma_max, sigma_min: an optional window on the noise-to-signal ratio ``sigma = s / m``
            for the grid: one step jumps from ``T`` to ``sigma_max`` (the marginal there is
            close to a Gaussian when ``sigma_max`` is a few times the data's scale) and one
            from ``sigma_min`` (about the finest scale in the data) to ``eps``; the other
            steps are spaced inside. ``None``: no window. The few-step recipe that reaches
            our targets in 10 score calls is ``solver="dpmpp_2m", steps=9, grid="log_snr",
            sigma_max=5, sigma_min=0.01`` for data of scale about 1-3 (docs/benchmarks/few-step.md).
        data_std, data_mean, data_cov: what is known about the data (a run's ``sigma_data``
            is its ``data_std``; ``data_mean`` a number or ``D`` entries, default 0;
            ``data_cov`` the ``(D, D)`` covariance instead of ``data_std``). With them,
            ``euler``, ``heun``, ``dpmpp_2m`` and ``unipc`` at ``steps <= 20`` and no
            ``grid``, ``sigma_max`` or ``sigma_min`` given take the few-step defaults
            (:mod:`scoresde.sampling.fewstep`): the first step, to ``sigma = 2 * scale``,
            follows the data's Gaussian's exact flow (no score call; the multistep solvers
            also start from its data estimate), the others are spaced in log-SNR down to
            ``sigma = 0.01 * scale``; ``steps=10`` is 10 score calls with ``dpmpp_2m`` or
            ``unipc`` (the one measured best at 10). Otherwise they are unused.
        **options: the solver's own options, e.g. ``predictor``, ``corrector``, ``snr``,
            ``corrector_steps`` (pc), ``method``, ``rtol``, ``atol`` (ode, torchsde).

    Returns:
        ``(x, info)``: samples of shape ``shape`` and a dict with ``nfe`` (counted score calls,
        the denoising one included), ``solver``, ``grid`` (times, float64), ``steps``, ``eps``,
        ``denoise`` and the solver's own entries.

    Raises:
        ValueError: unknown solver, grid or knob, ``steps < 1``, ``eps`` outside ``(0, T)``,
            both ``seeds`` and ``generator``, ``len(seeds) != shape[0]``.
        FloatingPointError: a step produced NaN or inf (the message names the step and its
            times; checked after every step, or at the end for ``ode`` and ``torchsde``).
        TypeError: ``seeds`` is not a sequence of integers.
    """
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scoresde.SDE (e.g. scoresde.VPSDE()), got "
                        f"{type(sde).__name__}")
    check_choice("solver", solver, SAMPLERS)
    accepted = _solver_option_names(solver)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"solver {solver!r} got unknown options {', '.join(unknown)}; "
                         f"it accepts {', '.join(accepted) or 'none'}")
    check_steps(steps)
    eps = default_eps(sde) if eps is None else check_eps(sde, eps)
    if grid is not None:
        check_choice("grid", grid, GRIDS)
    generator = resolve_generator(generator, seeds, shape, device)
    if device is None and generator is not None:
        device = generator.device
    stats = data_stats(tuple(shape)[1:], data_std, data_mean, data_cov)
    head, ends_at_data = False, SOLVERS[solver].ends_at_data
    fewstep = stats is not None and not ends_at_data and uses_data_stats(
        solver, steps, grid, sigma_max, sigma_min)
    gaussian = None
    if "gaussian" in _solver_params(solver):  # one eigen-decomposition, for grid and solver
        if stats is None:
            raise ValueError(f"solver {solver!r} needs the data's statistics: data_std, or "
                             "data_mean and data_cov (its Gaussian part is solved exactly)")
        gaussian = gaussian_part(stats, device)
    if ends_at_data and not denoise:
        raise ValueError(f"{solver} ends at the data itself (its last call is its denoising "
                         "step): denoise=False does not apply to it")
    if gaussian is not None and grid is None and sigma_max is None and sigma_min is None:
        grid = "log_snr"
        ts = gei_grid(sde, steps, eps, gaussian)
    elif fewstep:
        grid = "log_snr"
        ts, head = fewstep_grid(sde, steps, eps, stats)
    else:
        grid = DEFAULT_GRIDS[solver] if grid is None else grid
        ts = get_grid(sde, grid, steps, eps, rho=rho, sigma_max=sigma_max, sigma_min=sigma_min)
    counted = CountedScore(score_fn)
    callback = _stop_if_not_finite(solver, callback)
    x = prior_draw(sde, shape, generator, device=device, dtype=dtype)
    try:
        x, info = _run_solver(solver, counted, sde, x, ts, head, stats, gaussian, generator,
                              callback, options)
    except FloatingPointError as err:  # from inside a library call (scipy): name the solver
        if str(err).startswith(f"{solver}:"):
            raise
        raise FloatingPointError(f"{solver}: {err}; try more steps, another grid or float64"
                                 ) from None
    if head:
        info.update(grid=ts, steps=steps)
    if ends_at_data and not torch.isfinite(x).all():
        raise FloatingPointError(f"{solver}: non-finite values from the last step's score call "
                                 f"at t = {float(ts[-1]):.4g}; try more steps or float64")
    if denoise and not ends_at_data:
        m, s = (float(v) for v in sde.marginal_coeffs(ts[-1:]))
        with torch.no_grad():
            x = tweedie(counted, x, float(ts[-1]), m, s)
        if not torch.isfinite(x).all():
            raise FloatingPointError(f"{solver}: non-finite values from the final denoising "
                                     f"step at t = {float(ts[-1]):.4g}; try a larger eps")
    info.update(nfe=counted.calls, solver=solver, eps=eps, denoise=bool(denoise),
                grid_name=grid, gaussian_head=head or ends_at_data)
    return x, info
