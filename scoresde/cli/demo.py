"""``scoresde demo``: the whole loop on a 2D toy, one figure."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from .common import (CTX, Default, LazyChoice, LazyHelp, TrainDefault, check_out, library,
                     new_run_folder)
from .common import remove_unfinished


@click.command(context_settings=CTX)
@click.option("--toy", type=LazyChoice("toys.TOYS"), default=Default("run_demo", "toy"),
              show_default=True)
@click.option("--sde", type=LazyChoice("SDES"), default=Default("run_demo", "sde"),
              show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=TrainDefault("steps"),
              show_default=True, cls=LazyHelp,
              fields={"batch": lambda: library("training.VECTOR_BATCH")},
              help="Training steps (batch {batch}, as `scoresde train`).")
@click.option("--n", "n", type=click.IntRange(min=10), default=Default("run_demo", "n"),
              show_default=True, cls=LazyHelp,
              fields={"points": lambda: library("demo.LIKELIHOOD_POINTS")},
              help="Samples per solver (half as many held-out points drawn; the likelihood on "
                   "at most {points} of them).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The figure (.png, .pdf or .svg) [default: RUN/demo.png].")
@click.option("--force", is_flag=True, help="Replace an existing --out [default: refuse].")
@click.option("--seed", type=int, default=Default("run_demo", "seed"), show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--quick", is_flag=True, help="A small, fast version (for tests and a first look).")
def demo(toy, sde, steps, n, out, force, seed, device, quick):
    """Train on a 2D toy, sample with em, pc, ode and dpmpp_2m, measure the likelihood, draw it.

    The figure shows the data, the samples of each solver with its NFE, the learned log-density,
    the score field and a few probability-flow paths. It says on stderr what it is doing as it
    goes. About a minute on two idle CPU cores, most of it training.

    \b
    Examples:
      scoresde demo
      scoresde demo --toy moons --sde ve --out moons.png
      scoresde demo --quick
    """
    from .. import plotting
    from ..demo import run_demo
    from ..utils import resolve_device

    dev = resolve_device(device)
    if out is not None:
        check_out(out, replace=force, suffixes=(".png", ".pdf", ".svg"))
    path = new_run_folder("demo", sde, toy)
    try:
        figure, summary = run_demo(path, toy=toy, sde=sde, steps=steps, n=n, seed=seed,
                                   device=dev, quick=quick)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: a demo cut short is no run to keep
        shutil.rmtree(path, ignore_errors=True)
        raise
    except BaseException:
        remove_unfinished(path)  # a demo that failed before its checkpoint leaves nothing
        raise
    if out is not None:  # again: a minute has passed, and a file may have appeared there
        check_out(out, replace=force, suffixes=(".png", ".pdf", ".svg"))
    out = out or path / "demo.png"
    plotting.save_figure(figure, out)
    for line in summary:
        click.echo(line)
    click.echo(f"wrote {out}")
