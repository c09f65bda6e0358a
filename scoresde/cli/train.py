"""``scoresde train``: options to :func:`scoresde.train`'s keywords; an interrupt's word."""

from __future__ import annotations

from pathlib import Path

import click

from ..facts import names, value as known
from .common import (CTX, Default, LazyChoice, LazyHelp, device_option, explicit,
                     flag, given, lead, library, task, train_option)


@click.command(context_settings=CTX)
@train_option("sde", type=LazyChoice("SDES"), help="Forward SDE.")
@train_option("data", type=str, metavar="NAME|PATH", cls=LazyHelp,
              fields={"toys": lambda: ", ".join(names("toys.TOYS"))},
              help="A 2D toy ({toys}), 'digits', a .npy/.npz file of (N, *dims) (uint8 of rank "
                   "3 or 4: 8-bit images), or a folder of image files (one subfolder per class "
                   "for --conditional).")
@train_option("channels", type=int, cls=LazyHelp,
              fields={"modes": lambda: ", ".join(f"{c} ({m})" for c, m in
                                                 known("images.MODES").items())},
              help="Image folders: convert every image to {modes} channels [default: the "
                   "images' own, which must agree].")
@train_option("resolution", metavar="R",
              help="Image folders: resize the shorter side to R and centre-crop to R x R "
                   "[default: keep the size, which must agree].")
@click.option("--flip", is_flag=True,
              help="8-bit images: mirror training images left to right at random.")
@train_option("downsample", metavar="F",
              help="Digits and float image arrays: train at 1/F of the resolution (block means); "
                   "2 gives the 4x4 base model of a digits cascade.")
@train_option("super_res", type=click.IntRange(min=2), metavar="F",
              help="Train a super-resolution model conditioned on the images downsampled by F "
                   "(upsampled, as extra U-Net channels): the second stage of a cascade.")
@train_option("cond_aug", type=click.FloatRange(min=0),
              help="--super-res: conditioning augmentation, the low-resolution image noised at a "
                   "level drawn per sample in [0, A] and given to the network; 0 for none.")
@train_option("steps", default=None, show_default=False, cls=LazyHelp,
              fields={"steps": Default(None, "steps")},
              help="Optimizer steps [default: {steps}; with --resume: the run's own total, or the "
                   "new total given here].")
@train_option("batch_size", cls=LazyHelp,
              fields={"vector": lambda: known("training.VECTOR_BATCH"),
                      "image": lambda: known("training.IMAGE_BATCH")},
              help="Points per step [default: {vector} for 2D and vector data, {image} for "
                   "images].")
@train_option("lr", help="Peak learning rate (warmup, then cosine decay).")
@train_option("weighting", help="lambda(t) = s(t)^2, g(t)^2, g(t)^2 with importance-sampled t, "
                                 "or flow matching's velocity loss, g(t)^4 / 4.")
@train_option("log_snr_share", type=click.FloatRange(0, 1),
              help="Share of training times drawn uniformly in log-SNR rather than in t, so "
                   "that small noise levels are trained too (0.3 for sharp-edged data; "
                   "--weighting sigma2 only).")
@train_option("time_sampling",
              help="Training times: by the weighting's rule, or logit-normal, t = sigmoid(LOC + "
                   "SCALE n) (Esser et al. 2024).")
@train_option("time_loc", metavar="LOC", help="--time-sampling logit_normal: the location.")
@train_option("time_scale", metavar="SCALE", help="--time-sampling logit_normal: the scale.")
@train_option("net", type=LazyChoice("models.TRAIN_NETS"),
              help="Network: auto (MLP for vectors, U-Net for images), one by name, or a preset "
                   "(ddpmpp_cifar10 is the paper's DDPM++; the small ones fit a CPU).")
@click.option("--width", type=click.IntRange(min=1), default=None,
              cls=LazyHelp, fields={"width": Default("ScoreMLP", "hidden")},
              help="Hidden width of the MLP (default: the library's, {width}).")
@click.option("--input-features", type=click.IntRange(min=0), default=None, cls=LazyHelp,
              fields={"features": Default("ScoreMLP", "input_features")},
              help="Random Fourier features of the input for the MLP (default: the library's, "
                   "{features}); 64 helps data with sharp edges such as checkerboard.")
@click.option("--run", "run", default=None, metavar="DIR",
              help="Run folder [default: a new one under ./runs].")
@click.option("--resume", is_flag=True,
              help="Continue the run in --run (or the most recent) with its own options, but for "
                   "those given here; a --run folder that is absent or has no checkpoint yet is "
                   "started, so a requeued job can always pass it.")
@train_option("seed")
@device_option(help="cpu, cuda or cuda:N.")
@train_option("checkpoint_every")
@click.option("--quiet", is_flag=True, help="No progress line.")
@click.option("--conditional", is_flag=True,
              help="Class-conditional model (labelled data: digits, 8gaussians, .npz with y, a "
                   "folder of class folders).")
@train_option("label_dropout", help="Share of labels dropped (for classifier-free guidance).")
@click.option("--autoencoder", is_flag=True,
              help="Train an autoencoder of the images (for --latent) instead of a score model.")
@train_option("latent", type=click.Path(file_okay=False, path_type=Path), metavar="AE_RUN",
              help="Train on the latents of the autoencoder run AE_RUN (its data; latents "
                   "scaled to unit variance); sample decodes them.")
@train_option("precision",
              help="bf16: autocast (CPU, CUDA); fp16: autocast with a gradient scaler (CUDA).")
@train_option("batch_gpu", type=click.IntRange(min=1),
              help="At most this many samples per forward pass: gradients accumulate over "
                   "micro-batches (same result as the whole batch) [default: the whole batch].")
@train_option("compile", "--compile/--no-compile", show_default=False,
              help="torch.compile the model (stops if it cannot) [default: no].")
@train_option("channels_last", "--channels-last/--no-channels-last", show_default=False,
              help="Images in channels-last memory format [default: no].")
@train_option("ema_profiles", type=str, callback=lambda ctx, param, value: _numbers(value),
              metavar="S1,S2",
              help="Also keep power-function EMAs of these relative lengths (e.g. 0.05,0.10) "
                   "and store snapshots of them, to choose the EMA after training with "
                   "'scoresde ema' [default: none].")
@train_option("ema_snapshot_every", metavar="K",
              help="--ema-profiles: a snapshot of each every K steps and at the end "
                   "[default: a twentieth of --steps].")
@train_option("sample_every", metavar="N",
              help="Every N steps, a grid of samples from the EMA weights into "
                   "RUN/samples/step_N.png [default: none].")
@train_option("eval_every", metavar="K",
              help="Every K steps, FID/KID of the EMA weights into the run's metrics "
                   "[default: none].")
@train_option("eval_n", type=click.IntRange(min=2),
              help="Samples per evaluation (the same seed each time).")
@train_option("eval_features", metavar="NAME|PATH",
              help="Evaluation features: 'digits' or a trusted TorchScript file (it runs code).")
@click.pass_context
def train(ctx, run, resume, device, quiet, width, input_features, autoencoder, latent, **_):
    """Train a score model into a run folder: its options, checkpoint and metrics.

    \b
    Examples:
      scoresde train --sde vp                          # 8gaussians, about a minute on a CPU
      scoresde train --sde ve --data moons --steps 5000
      scoresde train --sde rf --weighting flow --time-sampling logit_normal   # rectified flow
      scoresde train --data checkerboard --input-features 64 --log-snr-share 0.3 \\
          --batch-size 2048 --steps 4500                # sharp edges: ~2.5 min
      scoresde train --data digits --steps 20000 --batch-size 128
      scoresde train --resume --steps 6000             # continue the most recent run
      scoresde train --data digits --conditional       # labels in, for --label / --guidance
      scoresde train --data photos/ --resolution 32 --flip   # your own images
      scoresde train --data digits --net ddpmpp_small8 # the paper's DDPM++, small
      scoresde train --data digits --precision bf16 --batch-gpu 32 --sample-every 500
      scoresde train --data digits --eval-every 500 --eval-n 1000   # FID/KID in metrics
      scoresde train --data digits --ema-profiles 0.05,0.10   # choose the EMA afterwards
      scoresde train --data digits --downsample 2 --run runs/base4   # a cascade: 4x4 base,
      scoresde train --data digits --super-res 2 --run runs/sr8      # then 4x4 -> 8x8
      scoresde train --data digits --autoencoder --run runs/ae       # latent diffusion:
      scoresde train --latent runs/ae --run runs/latent              # a score of its latents
    """
    from ..interrupts import TrainingInterrupted
    from ..tasks.training import train_run

    # Only the options given here: the library's defaults fill in the others, or on --resume
    # the run's own.
    options = given(ctx, [name for name in ctx.params if name in library("config.OPTIONS")])
    net_params = {k: v for k, v in [("hidden", width), ("input_features", input_features)]
                  if v is not None}
    if net_params:
        options["net_params"] = net_params
    if autoencoder:
        options["objective"] = "autoencoder"
    if latent is not None:
        options["latent"] = str(latent)
    try:
        path, result = task(train_run, run, resume=resume, device=device, progress=not quiet,
                            say=(lambda line: click.echo(line, err=True)) if lead() else None,
                            **options)
    except TrainingInterrupted as stop:  # the checkpoint is saved
        if lead():
            click.echo(_interrupted(ctx, stop, Path(stop.run_dir)), err=True)
        ctx.exit(128 + stop.signum)  # 130 for SIGINT, 143 for SIGTERM, as shells report them
    if lead():
        click.echo("\n".join(library("tasks.reports.train_lines")(path, result)))


def _numbers(text: str | None) -> list[float] | None:
    """``"0.05,0.10"`` as ``[0.05, 0.1]``; a usage error if a part is not a number."""
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers",
                                 param_hint="--ema-profiles") from None


def _interrupted(ctx: click.Context, stop, path: Path) -> str:
    """What an interrupted ``train`` (``stop``, a TrainingInterrupted) says: what was saved,
    and the command that resumes the run, with the options given here that ``--resume`` does
    not take from the run (the total given as ``--steps`` included, though the run has it)."""
    import shlex

    if not library("runs.has_checkpoint")(path):
        return f"interrupted ({stop.signal_name}) before the first step: nothing was saved"
    command = ["scoresde", "train", "--resume", "--run", str(path)]
    for name in ("steps", "device", "checkpoint_every", "eval_features"):  # a file is never
        if explicit(ctx, name):                                            # the run's
            command += [flag(name), str(ctx.params[name])]
    command += ["--quiet"] if ctx.params.get("quiet") else []
    return f"{stop}; resume with: {shlex.join(command)}"

