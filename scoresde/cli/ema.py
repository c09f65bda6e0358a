"""``scoresde ema``: a run's EMA of any length after training, as a run folder, or a sweep of
lengths measured by FID or likelihood (:mod:`scoresde.tasks.ema`)."""

from __future__ import annotations

import re
from pathlib import Path

import click

from .common import (CTX, LazyChoice, check_out, device_option, emit, json_option,
                     keyword_option, new_run_folder, pick_run, refuse_given, run_option, task)


@click.command(context_settings=CTX)
@run_option
@click.option("--sigma-rel", type=float, default=None, metavar="S",
              help="The relative length of the EMA to write as a run folder (--out).")
@click.option("--out", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="With --sigma-rel: the new run folder [default: a new folder under ./runs].")
@click.option("--sweep", default=None, metavar="LOW:HIGH:K|S1,S2,...",
              help="Measure K lengths from LOW to HIGH (or those listed) and the classic EMA, "
                   "and draw the curve.")
@keyword_option("tasks.ema.sweep_ema", "--metric", type=LazyChoice("tasks.ema.METRICS"),
                help="--sweep: FID (the fid command's defaults) or held-out log-likelihood.")
@click.option("--n", "n", type=click.IntRange(min=2), default=None,
              help="--sweep: samples per FID, or held-out points per likelihood [default: the "
                   "fid or likelihood command's].")
@click.option("--figure", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="--sweep: the curve's picture (.png, .pdf, .svg) [default: "
                   "RUN_ema_sweep_METRIC.png beside the run folder].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="--sweep: the samples' (or the likelihood's probes') seed, the same for each.")
@device_option()
@json_option
@click.pass_context
def ema(ctx, run, sigma_rel, out, sweep, metric, n, figure, seed, device, as_json):
    """Choose the EMA after training: a run trained with --ema-profiles stores snapshots of
    power-function EMAs, from which the EMA of any relative length is reconstructed.

    \b
    Examples:
      scoresde ema --run runs/d --sigma-rel 0.07 --out runs/d-ema07   # then sample, fid...
      scoresde ema --run runs/d --sweep 0.02:0.30:12 --metric fid     # the table and curve
      scoresde ema --run runs/d --sweep 0.05,0.1,0.2 --metric likelihood --n 500
    """
    from ..tasks.ema import ema_run, parse_sweep, sweep_ema

    if (sigma_rel is None) == (sweep is None):
        raise click.UsageError("give --sigma-rel S (a run folder of that EMA) or --sweep "
                               "(measure several), one of the two")
    path = pick_run(run, quiet=as_json)
    if sweep is None:
        refuse_given(ctx, ("metric", "n", "figure", "seed"), "goes with --sweep")
        out = out if out is not None else new_run_folder(*_words(path.name, sigma_rel))
        record = task(ema_run, path, out, sigma_rel)
        emit(record, as_json, [f"EMA of relative length {record['sigma_rel']:g} at step "
                               f"{record['step']} ({_how(record)}) into {out}",
                               f"next: scoresde sample --run {out}"])
        return
    refuse_given(ctx, ("out",), "goes with --sigma-rel")
    lengths = task(parse_sweep, sweep)
    default = path.parent / f"{path.name}_ema_sweep_{metric}.png"  # replaced by a rerun
    figure = check_out(figure or default, "--figure", inputs=[path], replace=figure is None,
                       suffixes=(".png", ".pdf", ".svg"))
    options = {"n": n} if n is not None else {}
    say = (lambda line: click.echo(line, err=True)) if not as_json else None
    result = task(sweep_ema, path, lengths, metric=metric, figure=figure, seed=seed,
                  device=device, progress=not as_json, say=say, **options)
    emit(result, as_json, _table(result))


def _words(name: str, sigma_rel: float) -> tuple[str, str]:
    """The default folder's words: the run's name without its number, and the length with
    ``p`` for its point (``00003-vp-moons``, 0.07: ``vp-moons``, ``ema0p07``), dots being cut
    off as a file's suffix."""
    return (re.sub(r"^\d{5}-", "", name).replace(".", "p"),
            "ema" + f"{sigma_rel:g}".replace(".", "p"))


def _how(record: dict) -> str:
    if record["tracked"]:
        return "a tracked profile"
    return (f"reconstructed from {record['snapshots']} snapshots, kernel error "
            f"{record['kernel_error']:.2%}")


def _table(result: dict) -> list[str]:
    """The sweep as a table (with each reconstruction's kernel error: lengths far outside the
    tracked ones are reconstructed less well), the best marked, the classic EMA below, the
    figure's path."""
    key = result["key"]
    lines = [f"{'sigma_rel':>10}  {key:>14}  {'kernel error':>12}"]
    for row in result["rows"]:
        best = ("  <- best" if result["best"] is not None
                and row["sigma_rel"] == result["best"]["sigma_rel"] else "")
        lines.append(f"{row['sigma_rel']:>10.4g}  {row[key]:>14.4f}  "
                     f"{row['kernel_error']:>12.2%}{best}")
    if result["classic"] is not None:
        lines.append(f"{'classic':>10}  {result['classic'][key]:>14.4f}")
    lines.append(f"figure: {result['figure']}")
    return lines
