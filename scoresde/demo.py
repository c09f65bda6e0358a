"""The demo: train on a 2D toy, sample with four solvers, measure the likelihood, draw one figure.

:func:`run_demo` is what ``scoresde demo`` runs; from Python it returns the figure and the
summary lines instead of writing and printing them. Its settings are the module's constants:
:func:`solver_plan` (steps and tolerances of each solver), :data:`PC_SNR`, :data:`FIELD_TIME`,
:data:`LIKELIHOOD_POINTS` and :data:`LIKELIHOOD_TOL` (the held-out log-likelihood),
:data:`DENSITY_GRID` and :data:`DENSITY_TOL` (the heat map). Each phase says on stderr what it
does and how long it took; docs/benchmarks/demo.md has what each phase costs and what its
settings cost.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import TYPE_CHECKING

import torch

from .checks import check_choice, check_int
from .config import option_default
from .data import get_dataset
from .likelihood import log_likelihood
from .runs import load_run, removed_on_failure
from .sampling import sample
from .sampling.fewstep import uses_data_stats
from .toys import TOYS
from .training import VECTOR_BATCH, train  # VECTOR_BATCH: the batch train() picks for 2D data
from .utils import make_generator, resolve_device, time_vector

if TYPE_CHECKING:  # matplotlib loads only when a figure is drawn
    from matplotlib.figure import Figure

__all__ = ["run_demo", "solver_plan", "PC_SNR", "FIELD_TIME", "QUICK_STEPS", "QUICK_N",
           "LIKELIHOOD_POINTS", "LIKELIHOOD_TOL", "DENSITY_GRID", "DENSITY_TOL"]

# pc's corrector signal-to-noise ratio: the paper's 0.16 was tuned for images and over-diffuses 2D
# data (on 8gaussians, mean exact log p of the samples -7.7 at snr 0.16 against -3.3 at 0.02).
PC_SNR = 0.02
FIELD_TIME = 0.05  # the time at which the figure shows the score field
QUICK_STEPS, QUICK_N = 100, 300  # quick=True caps the training steps and the samples at these
# The held-out log-likelihood: on at most this many of the n // 2 points shown, RK45 at this
# tolerance (its bias on the mean, measured against 1e-5, is under 1% of its standard error).
LIKELIHOOD_POINTS, LIKELIHOOD_TOL = 300, 1e-3
# The log-density heat map: a DENSITY_GRID x DENSITY_GRID grid, RK45 at DENSITY_TOL (a picture:
# within 0.2 nats of the 60 x 60 map at 1e-3 on a colour scale of 12 nats).
DENSITY_GRID, DENSITY_TOL = 40, 1e-2
PATHS, PATH_STEPS = 8, 60  # probability-flow paths: starting points and Euler steps

Samples = dict[str, tuple[torch.Tensor, int, float]]


def solver_plan(quick: bool = False) -> dict[str, dict]:
    """Solver name -> keywords of :func:`scoresde.sample`: em, pc, ode and dpmpp_2m."""
    tol = 1e-2 if quick else 1e-3
    return {"em": dict(steps=20 if quick else 100),
            "pc": dict(steps=10 if quick else 100, snr=PC_SNR),
            "ode": dict(steps=1, rtol=tol, atol=tol),
            "dpmpp_2m": dict(steps=10)}


def run_demo(run_dir: str | os.PathLike, *, toy: str = "8gaussians", sde: str = "vp",
             steps: int | None = None, n: int = 1000, seed: int = 0,
             device: str | torch.device = "cpu", quick: bool = False,
             progress: bool = True) -> tuple[Figure, list[str]]:
    """Train a score model on a 2D toy into ``run_dir``, sample it four ways, measure it, draw it.

    Trains with :func:`scoresde.train` (its defaults, one checkpoint at the end), samples ``n``
    points each with em, pc (snr :data:`PC_SNR`), ode and dpmpp_2m (:func:`solver_plan`; dpmpp_2m
    with the data's mean and covariance, :meth:`~scoresde.data.Dataset.moments`), runs
    :data:`PATHS` probability-flow paths (Euler on the EDM grid), and measures the log-likelihood
    of ``n // 2`` held-out points (at least 10, at most :data:`LIKELIHOOD_POINTS`) and the learned
    log-density on a :data:`DENSITY_GRID` square grid.

    Args:
        run_dir: the run folder to train into (a new or empty folder); a folder this call
            creates is removed again if the demo is interrupted, or fails before training
            saved its checkpoint.
        toy: one of :data:`scoresde.toys.TOYS`.
        sde: a key of :data:`scoresde.SDES`.
        steps: training steps (None: :func:`scoresde.train`'s default).
        n: samples per solver, >= 10.
        seed: seeds the training and every draw.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        quick: a small, fast version: at most :data:`QUICK_STEPS` steps and :data:`QUICK_N`
            samples, fewer solver steps, looser tolerances, a coarser density grid.
        progress: say on stderr what it does as it goes (one line a phase, with its time), and
            show training's progress line.

    Returns:
        ``(figure, summary)``: the figure (data, samples with their NFE, learned log-density,
        score field at :data:`FIELD_TIME`, paths) and the summary lines (per solver its NFE and
        seconds; the held-out log-likelihood with its standard error and the data entropy).

    Raises:
        ValueError: an unknown toy or SDE, or bad sizes.
    """
    check_choice("toy", toy, TOYS)
    steps = option_default("steps") if steps is None else check_int("steps", steps, low=1)
    n = check_int("n", n, low=10)
    dev = resolve_device(device)
    steps, n = (min(steps, QUICK_STEPS), min(n, QUICK_N)) if quick else (steps, n)
    say = _Say(progress)
    with removed_on_failure(run_dir, interrupt_removes_all=True):  # cut short: no run kept
        say.line(f"training {sde} on {toy}: {steps} steps of batch {VECTOR_BATCH} into {run_dir}")
        start = time.perf_counter()
        train(run_dir, data=toy, sde=sde, steps=steps, seed=seed, device=str(dev),
              checkpoint_every=steps, progress=progress)
        say.line(f"trained in {time.perf_counter() - start:.1f} s")
        model, sde_obj, config = load_run(run_dir, device=dev)
        dataset = get_dataset(config["data"])
        stats = dataset.sampling_statistics()
        with torch.no_grad():
            samples, paths = _samples(model, sde_obj, n, quick, seed, dev, say, stats)
        shown = dataset.test[:max(n // 2, 10)]  # the data panel: n // 2 held-out points
        ll = _held_out(model, sde_obj, shown, quick, dev, say)
        lim = float(shown.abs().max()) * 1.15
        density, field = _density_and_field(model, sde_obj, lim, quick, dev, say)
        return _figure(config, dataset.entropy, shown, samples, paths, ll, density, field)


class _Say:
    """Progress lines on stderr: ``say.line(text)``; ``say.timed(label, fn, note)`` prints
    ``label...``, runs ``fn()``, then ``note(result)`` and the seconds it took, and returns
    ``(result, seconds)``."""

    def __init__(self, on: bool):
        self.on = on

    def line(self, text: str, end: str = "\n") -> None:
        if self.on:
            print(text, end=end, file=sys.stderr, flush=True)

    def timed(self, label: str, fn, note=lambda result: ""):
        self.line(f"{label}...", end="")
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
        self.line(f" {note(result)}{seconds:.1f} s")
        return result, seconds


def _nfe(result: tuple[torch.Tensor, dict]) -> str:
    """The NFE of a sampler's or log_likelihood's ``(x, info)``, for a progress line."""
    return f"NFE {result[1]['nfe']}, "


def _describe(solver: str, kw: dict, stats: bool = False) -> str:
    """``"pc (100 steps, snr 0.02)"``, ``"ode (RK45, tolerance 0.001)"``: a solver and its plan
    (``stats``: it uses the data's mean and covariance)."""
    if solver == "ode":
        return f"ode (RK45, tolerance {kw['rtol']:g})"
    extra = f", snr {kw['snr']:g}" if "snr" in kw else ""
    extra += ", the data's mean and covariance" if stats else ""
    return f"{solver} ({kw['steps']} steps{extra})"


def _samples(model, sde, n: int, quick: bool, seed: int, dev, say: _Say,
             stats: dict) -> tuple[Samples, torch.Tensor]:
    """Per solver ``(x (n, 2), nfe, seconds)``; and :data:`PATHS` probability-flow paths
    ``(S, PATHS, 2)``. ``stats``: the data's mean and covariance, for the few-step solver."""
    samples = {}
    for solver, kw in solver_plan(quick).items():
        extra = stats if uses_data_stats(solver, kw["steps"]) else {}
        (x, info), seconds = say.timed(
            f"sampling {n} points with {_describe(solver, kw, bool(extra))}",
            lambda: sample(model, sde, (n, 2), solver=solver,
                           generator=make_generator(seed, dev), **kw, **extra), _nfe)
        samples[solver] = (x.cpu(), info["nfe"], seconds)
    path = []  # probability-flow paths: Euler on the EDM grid
    steps = 10 if quick else PATH_STEPS
    say.timed(f"{PATHS} probability-flow paths (euler, {steps} steps)",
              lambda: sample(model, sde, (PATHS, 2), solver="euler", steps=steps,
                             generator=make_generator(seed + 1, dev),
                             callback=lambda d: path.append(d["x"].cpu())))
    return samples, torch.stack(path)


def _held_out(model, sde, shown: torch.Tensor, quick: bool, dev, say: _Say) -> dict:
    """Log-likelihood of the first :data:`LIKELIHOOD_POINTS` (or fewer) held-out points: mean,
    standard error, NFE, time."""
    data = shown[:LIKELIHOOD_POINTS]
    tol = 1e-2 if quick else LIKELIHOOD_TOL
    (logp, info), seconds = say.timed(
        f"log-likelihood of {len(data)} held-out points (probability-flow ODE, RK45, "
        f"tolerance {tol:g})",
        lambda: log_likelihood(model, sde, data.to(dev), rtol=tol, atol=tol), _nfe)
    return dict(mean=float(logp.mean()), count=len(logp), nfe=info["nfe"],
                sem=float(logp.std() / math.sqrt(len(logp))), seconds=seconds)


def _density_and_field(model, sde, lim: float, quick: bool, dev,
                       say: _Say) -> tuple[tuple, tuple]:
    """The learned log-density on a square grid ``(xs, ys, log_p)``, and the score field
    ``(points, vectors, t)`` on a 17 x 17 grid at :data:`FIELD_TIME`."""
    from . import plotting

    res, tol = (16, 1e-2) if quick else (DENSITY_GRID, DENSITY_TOL)
    grid, xs, ys = plotting.grid_points(lim, res)
    grid_t = torch.as_tensor(grid, dtype=torch.float32, device=dev)
    (heat, _), _ = say.timed(
        f"log-density on a {res} x {res} grid (probability-flow ODE, RK45, tolerance {tol:g})",
        lambda: log_likelihood(model, sde, grid_t, rtol=tol, atol=tol), _nfe)
    field, _, _ = plotting.grid_points(lim * 0.95, 17)
    field_t = torch.as_tensor(field, dtype=torch.float32, device=dev)
    with torch.no_grad():
        vectors = model(field_t, time_vector(FIELD_TIME, field_t))
    return (xs, ys, heat.reshape(res, res).cpu()), (field, vectors.cpu(), FIELD_TIME)


def _figure(config: dict, entropy: float | None, shown: torch.Tensor, samples: Samples,
            paths: torch.Tensor, ll: dict, density: tuple,
            field: tuple) -> tuple[Figure, list[str]]:
    """The demo's figure and summary lines from the samples and the likelihoods."""
    from . import plotting

    title = f"{config['sde']['name']} SDE on {config['data']}: log-likelihood " \
            f"{ll['mean']:.3f} ± {ll['sem']:.3f} nats"
    if entropy is not None:
        title += f" (data entropy {entropy:.3f})"
    fig = plotting.demo_figure(
        shown, {k: v[0] for k, v in samples.items()}, {k: v[1] for k, v in samples.items()},
        density=density, field=field, paths=paths, suptitle=title,
        notes={"pc": f"snr {PC_SNR:g}"})
    summary = [f"{k:>9}: NFE {v[1]:5d}, {v[2]:6.2f} s" for k, v in samples.items()]
    line = f"log-likelihood {ll['mean']:.4f} ± {ll['sem']:.4f} nats on {ll['count']} held-out " \
           f"points (NFE {ll['nfe']}, {ll['seconds']:.1f} s)"
    if entropy is not None:  # the gap: KL(data || model) up to the sampling error of the mean
        gap = -ll["mean"] - entropy
        line += f"; data entropy {entropy:.4f} nats, gap {gap:+.4f} ± {ll['sem']:.4f} " \
                "(the KL divergence from the data to the model, >= 0; below 0 only by the " \
                "noise of the estimate)"
    summary.append(line)
    return fig, summary
