"""``scoresde convert``: another code's checkpoint into a run folder."""

from __future__ import annotations

from pathlib import Path

import click

from .common import CTX, LazyChoice, emit, new_run_folder, one_line


@click.command(context_settings=CTX)
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--from", "source", type=LazyChoice("convert.SOURCES"), required=True,
              help="The code that wrote CHECKPOINT.")
@click.option("--config", type=LazyChoice("convert.SCORE_SDE_CONFIGS"), required=True,
              help="The reference's config it was trained with, by the name of its "
                   "configs/SDE/NAME.py: NAME, or SDE_NAME where NAME alone is another SDE's.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="The new run folder [default: a new folder under ./runs].")
@click.option("--no-ema", is_flag=True,
              help="Keep the raw weights for sampling and evaluation, not the EMA's (which the "
                   "reference samples and evaluates with).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON line.")
def convert(checkpoint, source, config, out, no_ema, as_json):
    """Turn another code's checkpoint into a run folder for sample and likelihood.

    The network is rebuilt as ours with every tensor matched by name and shape; its score is
    the reference's own score function, its SDE the config's. Then `scoresde sample --run RUN`
    and `scoresde likelihood --run RUN --data IMAGES.npy` work on it as on a trained run.

    \b
    Examples:
      scoresde convert checkpoint_8.pth --from score_sde --config cifar10_ddpmpp_continuous \\
          --out runs/ddpmpp
      scoresde convert checkpoint_24.pth --from score_sde --config cifar10_ncsnpp_continuous
    """
    from ..convert import convert_score_sde
    from ..runs import read_config

    try:
        path = convert_score_sde(checkpoint, config, out or new_run_folder(source, config),
                                 ema=not no_ema)
    except (ValueError, FileNotFoundError) as err:
        raise click.UsageError(one_line(err)) from None
    run = read_config(path)
    ema = run["source"]["ema"]  # False for a checkpoint without an EMA
    record = {"run": str(path), "source": source, "config": config, "ema": ema,
              "num_params": run["num_params"], "sde": run["sde"]["name"]}
    emit(record, as_json, [f"converted {checkpoint} ({config}, {run['num_params']:,} "
                            f"parameters, {'EMA' if ema else 'raw'} weights) into {path}"])
