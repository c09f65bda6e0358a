"""``scoresde fid``: options to :func:`scoresde.tasks.run_fid` (or, with ``--samples``,
:func:`scoresde.tasks.file_fid`), and the scores in a line."""

from __future__ import annotations

from pathlib import Path

import click

from ..facts import value as known
from .common import (CTX, Default, LazyChoice, LazyHelp, device_option, emit, json_option,
                     keyword_option, pick_run, refuse_given, run_option, task)


@click.command(context_settings=CTX)
@run_option
@keyword_option("quality.run_quality", "--n", "n", type=click.IntRange(min=2),
                help="Samples (FID is biased below 10,000; compare equal N).")
@keyword_option("quality.run_quality", "--solver", type=LazyChoice("sampling.SAMPLERS"),
                help="The sampler (by default a few-step one, given the data's statistics: on the "
                     "digits near the ODE's FID at 10 score calls).")
@click.option("--steps", type=click.IntRange(min=1), default=None, cls=LazyHelp,
              fields={"fid": lambda: known("quality.FID_STEPS"),
                      "solver": lambda: known("quality.FID_SOLVER"),
                      "other": Default("sample", "steps")},
              help="Solver steps [default: {fid} with {solver}, {other} with another solver].")
@click.option("--eps", type=click.FloatRange(min=0, min_open=True), default=None,
              help="The last time [default: the SDE's].")
@click.option("--grid", type=LazyChoice("sampling.GRIDS"), default=None,
              help="The time grid [default: the solver's].")
@click.option("--rtol", type=click.FloatRange(min=0, min_open=True), default=None,
              help="ode, torchsde: relative tolerance [default: the solver's].")
@click.option("--atol", type=click.FloatRange(min=0, min_open=True), default=None,
              help="ode, torchsde: absolute tolerance [default: the solver's].")
@keyword_option("quality.run_quality", "--features", metavar="NAME|PATH",
                help="'digits' (the shipped digits network, 1x8x8) or a TorchScript file, e.g. "
                     "the FID Inception network; TorchScript runs code: use trusted files only.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seeds the samples (chunk k from seed and k, as `scoresde sample`) and KID's "
                   "subsets.")
@keyword_option("quality.run_quality", "--batch-size", type=click.IntRange(min=1),
                help="Samples per chunk (memory holds one chunk and the features).")
@click.option("--label", default=None, metavar="K|NAME|all",
              help="Class-conditional runs: the class of every sample (number or name), or "
                   "'all' for each class in turn [default: the unconditional score].")
@click.option("--guidance", type=float, default=0.0, show_default=True,
              help="Classifier-free guidance weight w, with --label.")
@click.option("--samples", "samples_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, metavar="FILE",
              help="Measure the images of this .npz/.npy instead of sampling: its 'samples' "
              "(a `scoresde sample` file: model values) or its array as a data file is read "
              "(uint8: 8-bit images, e.g. another code's).")
@click.option("--data", default=None, metavar="NAME|PATH",
              help="With --samples: the data to compare with [default: the run's].")
@device_option()
@json_option
@click.pass_context
def fid(ctx, run, samples_file, data, features, seed, device, as_json, **p):
    """FID, KID, precision and recall of a run's samples against its training images.

    The reference statistics of the data (per data, resolution and extractor) are computed
    once and cached under $SCORESDE_CACHE (default ~/.cache/scoresde). A latent run's samples
    are decoded first and compared with its autoencoder's images.

    \b
    Examples:
      scoresde fid --run runs/00000-vp-digits --solver dpmpp_2m --steps 20
      scoresde fid --n 50000 --features inception-2015-12-05.pt --json
      scoresde fid --label all --guidance 1 --solver dpmpp_2m --steps 20   # conditional run
      scoresde fid --samples runs/sr8/cascade-euler-50.npz --run runs/sr8   # a file's images
    """
    from ..tasks.quality import file_fid, run_fid
    from ..tasks.reports import quality_lines

    if samples_file is not None:
        refuse_given(ctx, p, "is for sampling; --samples measures the file's images as they are")
        run = pick_run(run, as_json) if data is None else run
        record, name = task(file_fid, samples_file, data=data, run=run, features=features,
                            seed=seed, device=device, say=_warn)
        return emit(record, as_json, quality_lines(record, samples_file, name))
    if data is not None:
        raise click.UsageError("--data is for --samples (a run is compared with its own data)")
    record = task(run_fid, pick_run(run, quiet=as_json), features=features, seed=seed,
                  device=device, say=_warn, progress=not as_json,
                  **{k: v for k, v in p.items() if v is not None})  # None: the task's default
    emit(record, as_json, quality_lines(record))


def _warn(line: str) -> None:
    click.echo(f"warning: {line}", err=True)

