"""The demo: train on a 2D toy, sample with four solvers, measure the likelihood, draw one figure.

:func:`run_demo` is what ``scoresde demo`` runs; from Python it returns the figure and the
summary lines instead of writing and printing them. Its settings are the module's constants:
:func:`solver_plan` (steps and tolerances of each solver), :data:`PC_SNR`, :data:`FIELD_TIME`.
"""

from __future__ import annotations

import inspect
import math
import os
import sys
import time
from typing import TYPE_CHECKING

import torch

from .checks import check_choice, check_int
from .data import Dataset, get_dataset
from .likelihood import log_likelihood
from .sampling import sample
from .toys import TOYS
from .utils import make_generator, resolve_device, time_vector

if TYPE_CHECKING:  # matplotlib loads only when a figure is drawn
    from matplotlib.figure import Figure

__all__ = ["run_demo", "solver_plan", "PC_SNR", "FIELD_TIME", "QUICK_STEPS", "QUICK_N"]

# pc's corrector signal-to-noise ratio: the paper's 0.16 was tuned for images and over-diffuses 2D
# data (on 8gaussians, mean exact log p of the samples -7.7 at snr 0.16 against -3.3 at 0.02).
PC_SNR = 0.02
FIELD_TIME = 0.05  # the time at which the figure shows the score field
QUICK_STEPS, QUICK_N = 100, 300  # quick=True caps the training steps and the samples at these

Samples = dict[str, tuple[torch.Tensor, int, float]]


def solver_plan(quick: bool = False) -> dict[str, dict]:
    """Solver name -> keywords of :func:`scoresde.sample`: em, pc, ode and dpmpp_2m."""
    tol = 1e-2 if quick else 1e-4
    return {"em": dict(steps=20 if quick else 200),
            "pc": dict(steps=10 if quick else 300, snr=PC_SNR),
            "ode": dict(steps=1, rtol=tol, atol=tol),
            "dpmpp_2m": dict(steps=10)}


def run_demo(run_dir: str | os.PathLike, *, toy: str = "8gaussians", sde: str = "vp",
             steps: int | None = None, n: int = 1000, seed: int = 0,
             device: str | torch.device = "cpu", quick: bool = False,
             progress: bool = True) -> tuple[Figure, list[str]]:
    """Train a score model on a 2D toy into ``run_dir``, sample it four ways, measure it, draw it.

    Trains with :func:`scoresde.train` (its defaults, one checkpoint at the end), samples ``n``
    points each with em, pc (snr :data:`PC_SNR`), ode and dpmpp_2m (:func:`solver_plan`), runs 8
    probability-flow paths (Euler on the EDM grid), and measures the log-likelihood of ``n // 2``
    (at least 10) held-out points and the learned log-density on a grid.

    Args:
        run_dir: the run folder to train into (a new or empty folder).
        toy: one of :data:`scoresde.toys.TOYS`.
        sde: a key of :data:`scoresde.SDES`.
        steps: training steps (None: :func:`scoresde.train`'s default).
        n: samples per solver, >= 10.
        seed: seeds the training and every draw.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        quick: a small, fast version: at most :data:`QUICK_STEPS` steps and :data:`QUICK_N`
            samples, fewer solver steps, looser tolerances, a coarser density grid.
        progress: say on stderr what is trained, and show training's progress line.

    Returns:
        ``(figure, summary)``: the figure (data, samples with their NFE, learned log-density,
        score field at :data:`FIELD_TIME`, paths) and the summary lines (per solver its NFE and
        seconds; the held-out log-likelihood and the data entropy).

    Raises:
        ValueError: an unknown toy or SDE, or bad sizes.
    """
    from . import load_run, train  # the package's names: train() and load_run()

    check_choice("toy", toy, TOYS)
    steps = _train_default("steps") if steps is None else check_int("steps", steps, low=1)
    n = check_int("n", n, low=10)
    dev = resolve_device(device)
    steps, n = (min(steps, QUICK_STEPS), min(n, QUICK_N)) if quick else (steps, n)
    if progress:
        print(f"training {sde} on {toy} for {steps} steps into {run_dir}", file=sys.stderr)
    train(run_dir, data=toy, sde=sde, steps=steps, seed=seed, device=str(dev),
          checkpoint_every=steps, progress=progress)
    model, sde_obj, config = load_run(run_dir, device=dev)
    with torch.no_grad():
        samples, paths = _samples(model, sde_obj, n, quick, seed, dev)
    return _figure(model, sde_obj, config, samples, paths, n, quick, dev)


def _train_default(name: str):
    from . import train

    return inspect.signature(train).parameters[name].default


def _samples(model, sde, n: int, quick: bool, seed: int, dev) -> tuple[Samples, torch.Tensor]:
    """Per solver ``(x (n, 2), nfe, seconds)``; and 8 probability-flow paths ``(S, 8, 2)``."""
    samples = {}
    for solver, kw in solver_plan(quick).items():
        start = time.perf_counter()
        x, info = sample(model, sde, (n, 2), solver=solver, generator=make_generator(seed, dev),
                         **kw)
        samples[solver] = (x.cpu(), info["nfe"], time.perf_counter() - start)
    path = []  # probability-flow paths: Euler on the EDM grid, 8 starting points
    sample(model, sde, (8, 2), solver="euler", steps=10 if quick else 60,
           generator=make_generator(seed + 1, dev), callback=lambda d: path.append(d["x"].cpu()))
    return samples, torch.stack(path)


def _held_out(model, sde, dataset: Dataset, n: int, quick: bool, dev) -> dict:
    """Log-likelihood of ``max(n // 2, 10)`` held-out points: mean, standard error, NFE, time."""
    data = dataset.test[:max(n // 2, 10)]
    tol = 1e-2 if quick else 1e-5
    start = time.perf_counter()
    logp, info = log_likelihood(model, sde, data.to(dev), rtol=tol, atol=tol)
    return dict(data=data, mean=float(logp.mean()), count=len(logp), nfe=info["nfe"],
                sem=float(logp.std() / math.sqrt(len(logp))),
                seconds=time.perf_counter() - start)


def _density_and_field(model, sde, lim: float, quick: bool, dev) -> tuple[tuple, tuple]:
    """The learned log-density on a square grid ``(xs, ys, log_p)``, and the score field
    ``(points, vectors, t)`` on a 17 x 17 grid at :data:`FIELD_TIME`."""
    from . import plotting

    res, tol = (16, 1e-2) if quick else (60, 1e-3)
    grid, xs, ys = plotting.grid_points(lim, res)
    heat, _ = log_likelihood(model, sde, torch.as_tensor(grid, dtype=torch.float32, device=dev),
                             rtol=tol, atol=tol)
    field, _, _ = plotting.grid_points(lim * 0.95, 17)
    field_t = torch.as_tensor(field, dtype=torch.float32, device=dev)
    with torch.no_grad():
        vectors = model(field_t, time_vector(FIELD_TIME, field_t))
    return (xs, ys, heat.reshape(res, res).cpu()), (field, vectors.cpu(), FIELD_TIME)


def _figure(model, sde, config: dict, samples: Samples, paths: torch.Tensor, n: int,
            quick: bool, dev) -> tuple[Figure, list[str]]:
    """The demo's figure and summary lines from the samples and the likelihoods."""
    from . import plotting

    dataset = get_dataset(config["data"])
    ll = _held_out(model, sde, dataset, n, quick, dev)
    density, field = _density_and_field(model, sde, float(ll["data"].abs().max()) * 1.15, quick,
                                        dev)
    entropy = dataset.entropy
    title = f"{config['sde']['name']} SDE on {config['data']}: log-likelihood " \
            f"{ll['mean']:.3f} ± {ll['sem']:.3f} nats"
    if entropy is not None:
        title += f" (data entropy {entropy:.3f})"
    fig = plotting.demo_figure(
        ll["data"], {k: v[0] for k, v in samples.items()}, {k: v[1] for k, v in samples.items()},
        density=density, field=field, paths=paths, suptitle=title,
        notes={"pc": f"snr {PC_SNR:g}"})
    summary = [f"{k:>9}: NFE {v[1]:5d}, {v[2]:6.2f} s" for k, v in samples.items()]
    summary.append(f"log-likelihood {ll['mean']:.4f} ± {ll['sem']:.4f} nats on {ll['count']} "
                   f"held-out points (NFE {ll['nfe']}, {ll['seconds']:.1f} s)" +
                   (f"; data entropy {entropy:.4f} nats" if entropy is not None else ""))
    return fig, summary
