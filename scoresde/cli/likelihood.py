"""``scoresde likelihood``: options to :func:`scoresde.tasks.run_likelihood`, and its lines."""

from __future__ import annotations

import click

from .common import (CTX, LazyChoice, device_option, emit, json_option, keyword_option, pick_run,
                     run_option, task)


@click.command(context_settings=CTX)
@run_option
@click.option("--data", default=None, metavar="PATH",
              help="A .npy/.npz of points in model space [default: the run's held-out set].")
@click.option("--n", "n", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Number of held-out points (at most the set's size).")
@keyword_option("log_likelihood", "--divergence", type=LazyChoice("likelihood.DIVERGENCES"),
                help="auto: exact in low dimension.")
@keyword_option("log_likelihood", "--probes", type=click.IntRange(min=1), help="Hutchinson probes.")
@keyword_option("log_likelihood", "--method", type=str, help="scipy solve_ivp method.")
@keyword_option("log_likelihood", "--rtol", type=click.FloatRange(min=0, min_open=True))
@keyword_option("log_likelihood", "--atol", type=click.FloatRange(min=0, min_open=True))
@keyword_option("log_likelihood", "--eps", type=click.FloatRange(min=0, min_open=True))
@click.option("--seed", type=int, default=0, show_default=True)
@device_option()
@json_option
def likelihood(run, as_json, **options):
    """Log-likelihood of held-out data under a run, through the probability-flow ODE.

    \b
    Examples:
      scoresde likelihood                              # the most recent run, 1000 points
      scoresde likelihood --n 10000 --json
      scoresde likelihood --run runs/00001-vp-digits --divergence hutchinson --probes 4
    """
    from ..tasks import run_likelihood
    from ..tasks.reports import likelihood_lines

    path = pick_run(run, quiet=as_json)
    record, about = task(run_likelihood, path, **options, progress=not as_json)
    emit(record, as_json, likelihood_lines(record, about["pixel_bits"]))

