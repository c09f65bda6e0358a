"""``scoresde demo``: the whole loop on a 2D toy, one figure."""

from __future__ import annotations

from pathlib import Path

import click

from ..facts import value as known
from .common import (CTX, Default, LazyChoice, LazyHelp, check_out, device_option,
                     keyword_option, new_run_folder)


@click.command(context_settings=CTX)
@keyword_option("run_demo", "--toy", type=LazyChoice("toys.TOYS"))
@keyword_option("run_demo", "--sde", type=LazyChoice("SDES"))
@click.option("--steps", type=click.IntRange(min=1), default=Default(None, "steps"),
              show_default=True, cls=LazyHelp,
              fields={"batch": lambda: known("training.VECTOR_BATCH")},
              help="Training steps (batch {batch}, as `scoresde train`).")
@keyword_option("run_demo", "--n", "n", type=click.IntRange(min=10), cls=LazyHelp,
                fields={"points": lambda: known("demo.LIKELIHOOD_POINTS")},
                help="Samples per solver (half as many held-out points drawn; the likelihood on "
                     "at most {points} of them).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The figure (.png, .pdf or .svg) [default: RUN/demo.png].")
@click.option("--force", is_flag=True, help="Replace an existing --out [default: refuse].")
@keyword_option("run_demo", "--seed", type=int)
@device_option()
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

    if out is not None:
        check_out(out, replace=force, suffixes=(".png", ".pdf", ".svg"))
    path = new_run_folder("demo", sde, toy)
    figure, summary = run_demo(path, toy=toy, sde=sde, steps=steps, n=n, seed=seed,
                               device=device, quick=quick)
    if out is not None:  # again: a minute has passed, and a file may have appeared there
        check_out(out, replace=force, suffixes=(".png", ".pdf", ".svg"))
    out = out or path / "demo.png"
    plotting.save_figure(figure, out)
    for line in summary:
        click.echo(line)
    click.echo(f"wrote {out}")
