"""``scoresde sample``: options to :func:`scoresde.tasks.sample_run` (or, with ``--cascade``,
:func:`scoresde.tasks.sample_cascade_run`), and what they did on the screen."""

from __future__ import annotations

from pathlib import Path

import click

from ..facts import value as known
from .common import (CTX, Default, LazyChoice, LazyHelp, device_option, emit, explicit, given,
                     json_option, keyword_option, lead, library, pick_run, refuse_given, run_option,
                     task)

# The solvers' own options, passed on when given.
SOLVER_OPTIONS = ("predictor", "corrector", "snr", "corrector_steps", "method", "adaptive", "rtol",
                  "atol", "sigma_max", "sigma_min")
# The options passed to the draw as they are.
DRAW = ("n", "eps", "grid", "label", "embedding", "guidance", "mask", "observe", "inverse",
        "batch_size", "device", "images")


def _grids_by_solver() -> str:
    """``uniform for em, pc, ...; edm for euler, ...``: each solver's default grid, from the
    library's table."""
    by_grid: dict[str, list[str]] = {}
    for solver, grid in known("sampling.DEFAULT_GRIDS").items():
        by_grid.setdefault(grid, []).append(solver)
    return "; ".join(f"{grid} for {'/'.join(names)}" for grid, names in by_grid.items())


@click.command(context_settings=CTX)
@run_option
@keyword_option("sample", "--solver", type=LazyChoice("sampling.SAMPLERS"))
@keyword_option("sample", "--steps", type=click.IntRange(min=1),
                help="Steps of the time grid (ode picks its own); the NFE printed counts the "
                     "score calls they make (docs/sampling.md, 'steps and NFE').")
@click.option("--n", "n", type=click.IntRange(min=1), default=None,
              help="Number of samples [default: 1000, 64 for images].")
@click.option("--eps", type=click.FloatRange(min=0, min_open=True), default=None, cls=LazyHelp,
              fields={"vp": lambda: known("sampling.grids.VP_EPS"),
                      "ve": lambda: known("sampling.grids.VE_EPS")},
              help="Last time [default: {vp:g} VP-type, {ve:g} VE-type].")
@click.option("--grid", type=LazyChoice("sampling.GRIDS"), default=None, cls=LazyHelp,
              fields={"grids": lambda: _grids_by_solver()},
              help="Time grid [default: {grids}].")
@keyword_option("sampling.sample_pc", "--predictor", type=LazyChoice("sampling.PREDICTORS"),
                help="pc only.")
@keyword_option("sampling.sample_pc", "--corrector", type=LazyChoice("sampling.CORRECTORS"),
                help="pc only.")
@keyword_option("sampling.sample_pc", "--snr", type=click.FloatRange(min=0, min_open=True),
                help="Corrector signal-to-noise ratio (pc only).")
@keyword_option("sampling.sample_pc", "--corrector-steps", type=click.IntRange(min=1),
                help="pc only.")
@click.option("--method", default=None, cls=LazyHelp,
              fields={"ode": lambda: ", ".join(known("scipy_ode.ODE_METHODS")),
                      "sde": lambda: ", ".join(known("sampling.TORCHSDE_METHODS")),
                      "ode_default": Default("sampling.sample_ode", "method"),
                      "sde_default": Default("sampling.sample_torchsde", "method")},
              help="ode: {ode} [default: {ode_default}]; torchsde: {sde} "
                   "[default: {sde_default}].")
@click.option("--adaptive", is_flag=True, help="torchsde only: adaptive steps with --rtol/--atol "
              "(--steps sets the first step).")
@click.option("--rtol", type=click.FloatRange(min=0, min_open=True), default=None, cls=LazyHelp,
              fields={"ode": Default("sampling.sample_ode", "rtol"),
                      "sde": Default("sampling.sample_torchsde", "rtol")},
              help="Relative tolerance: ode [default: {ode}]; torchsde with --adaptive "
                   "[default: {sde}].")
@click.option("--atol", type=click.FloatRange(min=0, min_open=True), default=None, cls=LazyHelp,
              fields={"ode": Default("sampling.sample_ode", "atol"),
                      "sde": Default("sampling.sample_torchsde", "atol")},
              help="Absolute tolerance: ode [default: {ode}]; torchsde with --adaptive "
                   "[default: {sde}].")
@click.option("--sigma-max", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Few steps: one jump from T to this sigma = s/m, the other steps below it.")
@click.option("--sigma-min", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Few steps: the other steps above this sigma = s/m, one jump to eps.")
@click.option("--no-denoise", is_flag=True, help="Skip the final Tweedie denoising step.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the one generator of the whole batch.")
@click.option("--seeds", default=None, metavar="SEEDS",
              help="One seed per sample, e.g. 0-63 or 0,5,9-12: sample i depends only on its "
              "seed, whatever the batch (ode and --adaptive torchsde choose their steps for the "
              "batch: equal within tolerance) [default: --n samples from --seed].")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Samples file (.npz) [default: RUN/samples-SOLVER-STEPS-nN-seedS[-HASH].npz, "
              "no STEPS for ode, HASH naming any other option given]; the figure beside it.")
@click.option("--images", type=click.Path(file_okay=False, path_type=Path), default=None,
              metavar="DIR", help="Also write each sample as an 8-bit PNG into the new folder "
                                  "DIR (a subfolder per class with --label; runs of images).")
@click.option("--force", is_flag=True,
              help="Replace an existing --out (and its figure) that holds other samples or "
              "another file [default: refuse; the same command again reuses its own file].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, cls=LazyHelp,
              fields={"vector": lambda: known("sample_files.SAMPLE_BATCH")["vector"],
                      "image": lambda: known("sample_files.SAMPLE_BATCH")["image"]},
              help="Samples drawn at a time [default: {vector}, {image} for images]. Each chunk "
                   "is saved as it is done (OUT.parts/), so memory holds one chunk and the same "
                   "command after a kill continues where it stopped.")
@device_option()
@json_option
@click.option("--label", default=None, metavar="K|NAME|all",
              help="Class of every sample, by number or by name (a folder of class folders: "
                   "the folder's), or 'all' to cycle through the classes (conditional runs).")
@click.option("--embedding", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Runs conditioned on embeddings: a .npy of one embedding (E,) for every "
              "sample or (N, E), one per sample (floats).")
@click.option("--guidance", type=float, default=0.0, show_default=True,
              help="Classifier-free guidance weight w: (1 + w) s(x, t, y) - w s(x, t).")
@click.option("--mask", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Impute: .npz with 'mask' (True = known) and 'values' of the data's shape "
              "(model space), or a .npy mask (values 0).")
@click.option("--observe", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Inverse problem: .npz with 'A' (M, D) acting on flattened samples, 'y' (M,) "
              "or (N, M) in model space, optionally 'noise_std'; solved by --inverse.")
@click.option("--inverse", type=LazyChoice("sampling.INVERSE_METHODS"), default=None,
              cls=LazyHelp, fields={"default": Default("sampling.solve_inverse", "method")},
              help="Method for --observe, or for --mask instead of plain replacement [default "
              "with --observe: {default}]. smc takes no --solver.")
@keyword_option("sampling.sample_smc", "--particles", type=click.IntRange(min=1),
                help="--inverse smc: particles per sample.")
@keyword_option("sampling.inverse._dps", "--step-size", type=click.FloatRange(min=0),
                help="--inverse dps: the gradient step.")
@keyword_option("sampling.inverse._repaint", "--jump", type=click.IntRange(min=1),
                help="--inverse repaint: steps per segment.")
@keyword_option("sampling.inverse._repaint", "--resample", type=click.IntRange(min=1),
                help="--inverse repaint: runs of each segment.")
@click.option("--cascade", "cascade_runs", nargs=2, type=click.Path(path_type=Path),
              default=None, metavar="BASE_RUN SR_RUN",
              help="Sample a cascade: BASE_RUN with --solver/--steps, then the super-resolution "
                   "run SR_RUN conditioned on it with --sr-solver/--sr-steps.")
@click.option("--sr-solver", type=LazyChoice("sampling.SAMPLERS"), default=None,
              help="--cascade: the second stage's solver [default: --solver].")
@click.option("--sr-steps", type=click.IntRange(min=1), default=None,
              help="--cascade: the second stage's steps [default: --steps].")
@keyword_option("cascade.cascade", "--aug-level", type=click.FloatRange(min=0),
                help="--cascade: conditioning-augmentation level of the second stage.")
@click.pass_context
def sample(ctx, run, out, seed, seeds, no_denoise, force, as_json, cascade_runs, **p):
    """Draw samples from a trained run; write them (.npz) and a figure (.png).

    \b
    Examples:
      scoresde sample --solver pc --steps 1000       # the most recent run under ./runs
      scoresde sample --solver ode --rtol 1e-4 --json
      scoresde sample --solver unipc --steps 10 --n 5000   # 10 score calls
      scoresde sample --solver dpmpp_2m --steps 9 --grid log_snr --sigma-max 5 --sigma-min 0.01
      scoresde sample --run runs/00000-vp-8gaussians --solver em --out em.npz
      scoresde sample --label all --guidance 1 --solver dpmpp_2m --steps 40   # conditional
      scoresde sample --mask known.npz --solver pc                             # imputation
      scoresde sample --observe a_y.npz --inverse smc --particles 32 --steps 100   # y = A x + n
      scoresde sample --seeds 0-63 --solver em     # sample i from seed i, in any batch
      scoresde sample --cascade runs/base4 runs/sr8 --solver euler --steps 50 --sr-steps 20
    """
    from ..tasks import sample_run

    if cascade_runs is not None:
        return _cascade(ctx, cascade_runs, as_json)
    refuse_given(ctx, ("sr_solver", "sr_steps", "aug_level"), "is for --cascade")
    path = pick_run(run, quiet=as_json)
    record, result = task(
        sample_run, path, out, **given(ctx, ("solver", "steps")), **{k: p[k] for k in DRAW},
        denoise=not no_denoise, solver_options=given(ctx, SOLVER_OPTIONS),
        seed=seed if explicit(ctx, "seed") or seeds is None else None, seeds=seeds,
        inverse_options=given(ctx, library("tasks.conditions.INVERSE_OPTIONS")), replace=force,
        progress=not as_json,
        say=(lambda line: None) if as_json else (lambda line: click.echo(line, err=True)))
    _report(record, result, as_json)


def _cascade(ctx: click.Context, runs, as_json: bool) -> None:
    """``--cascade BASE_RUN SR_RUN``: both stages at once, chunk by chunk, one .npz and figure."""
    from ..tasks import sample_cascade_run

    p = ctx.params
    refuse_given(ctx, ("run", "seeds", "label", "embedding", "mask", "observe", "inverse", "grid",
                       "sigma_max", "sigma_min", "eps", "guidance", "no_denoise", "images"),
                 "does not apply to --cascade")
    record, result = task(
        sample_cascade_run, *runs, p["out"], solver_options=given(ctx, SOLVER_OPTIONS),
        **{k: p[k] for k in ("solver", "steps", "sr_solver", "sr_steps", "aug_level", "n", "seed",
                             "batch_size", "device")}, replace=p["force"], progress=not as_json)
    _report(record, result, as_json)


def _report(record: dict, result: dict, as_json: bool) -> None:
    """The record as JSON, or its lines (:func:`scoresde.tasks.reports.samples_lines`)."""
    notes, lines = library("tasks.reports.samples_lines")(record, result)
    for note in [] if as_json or not lead() else notes:
        click.echo(note, err=True)
    emit(record, as_json, lines)
