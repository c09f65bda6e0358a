"""The ``scoresde`` command: turns strings into objects, writes files, reports progress.

The only module that talks to click. Library names are imported inside the commands, so
``scoresde --help`` stays fast. Errors: bad input exits with status 2, a failure while running
with status 1; either way one line on stderr, no traceback (``SCORESDE_DEBUG=1`` shows it), and
no partial output: files are written to a temporary name and renamed when complete.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import shutil
import sys
import time
from importlib import import_module
from pathlib import Path
from typing import Callable

import click

from . import __version__
from .utils import write_atomically

RUNS = Path("runs")
_CTX = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# ----- library tables and defaults, read when first needed ---------------------------------------
def _library(dotted: str):
    """The library's object at ``dotted``: ``"train"`` is ``scoresde.train`` (the function),
    ``"losses.WEIGHTINGS"`` is ``scoresde.losses.WEIGHTINGS``. It imports the library, so call
    it inside a command or a help, never at import time."""
    module, _, name = dotted.rpartition(".")
    return getattr(import_module(f".{module}", __package__), name)


def _names(table: str) -> Callable[[], list[str]]:
    """The names (tuple entries or dict keys) of the library table ``table``, when asked."""
    return lambda: list(_library(table))


class _LazyChoice(click.Choice):
    """A Choice whose names come from a library table when first needed."""

    def __init__(self, table: str):
        self._names = _names(table)
        super().__init__([])

    @property
    def choices(self):
        return self._names()

    @choices.setter
    def choices(self, value):
        pass


class _Default:
    """The default of keyword ``name`` of the library function ``function``, read when needed.

    A click default (called for the value) that ``--help`` shows as the value itself."""

    def __init__(self, function: str, name: str):
        self.function, self.name = function, name

    def __call__(self):
        return inspect.signature(_library(self.function)).parameters[self.name].default

    def __str__(self) -> str:
        return str(self())


class _LazyHelp(click.Option):
    """An option whose help is a format string of library values, filled in only when shown.

    ``fields`` maps the names in ``help`` to functions giving their values (e.g. a
    :class:`_Default`)."""

    def __init__(self, *args, fields: dict[str, Callable[[], object]], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields = fields

    def get_help_record(self, ctx: click.Context):
        template = self.help
        self.help = template.format(**{k: f() for k, f in self.fields.items()})
        try:
            return super().get_help_record(ctx)
        finally:
            self.help = template


def _one_line(msg: object) -> str:
    return " ".join(str(msg).split()) or "failed"


class _Main(click.Group):
    """A group whose every error is one line on stderr with status 2 (bad input) or 1 (failure)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        debug = bool(os.environ.get("SCORESDE_DEBUG"))
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as err:
            hint = f" (see '{err.ctx.command_path} --help')" if err.ctx else ""
            self._fail(f"Error: {_one_line(err.format_message())}{hint}", 2, debug)
        except click.ClickException as err:
            self._fail(f"Error: {_one_line(err.format_message())}", err.exit_code, debug)
        except click.Abort as err:  # click's word for Ctrl-C (or end of input at a prompt)
            stop = err.__cause__ or err.__context__
            if isinstance(stop, KeyboardInterrupt):
                self._fail("Interrupted.", 128 + getattr(stop, "signum", 2), debug)
            self._fail("Aborted.", 1, debug)
        except (ValueError, TypeError, FileExistsError, FileNotFoundError) as err:
            self._fail(f"Error: {_one_line(err)}", 2, debug)
        except KeyboardInterrupt:
            self._fail("Interrupted.", 130, debug)
        except OSError as err:  # the system's word (a full disk, a permission), said once
            where = f": {err.filename}" if err.filename and str(err.filename) not in str(
                err.strerror) else ""
            self._fail(f"Error: {_one_line(err.strerror or err)}{where}", 1, debug)
        except Exception as err:  # a runtime failure: one line, status 1
            self._fail(f"Error: {type(err).__name__}: {_one_line(err)}", 1, debug)
        sys.exit(rv if isinstance(rv, int) else 0)

    @staticmethod
    def _fail(message: str, code: int, debug: bool) -> None:
        if debug:
            raise
        click.echo(message, err=True)
        sys.exit(code)


@click.group(cls=_Main, context_settings=_CTX)
@click.version_option(__version__, prog_name="scoresde")
def main() -> None:
    """Score-based generative modelling with stochastic differential equations.

    \b
    Examples:
      scoresde demo                                # train, sample, likelihood, one figure
      scoresde train --sde vp                      # a 2D toy into a new folder under ./runs
      scoresde sample --solver pc --steps 1000     # from the most recent run
      scoresde likelihood                          # held-out log-likelihood in nats
      scoresde fid --solver dpmpp_2m --steps 20    # FID, KID, precision/recall of images
    """


# ----- run folders and files ---------------------------------------------------------------------
def _latest_run() -> Path:
    from .runs import latest_run

    path = latest_run(RUNS)
    if path is None:
        raise click.UsageError(f"no run found under ./{RUNS}; train one with 'scoresde train' "
                               "or pass --run DIR")
    return path


def _pick_run(run: str | None, quiet: bool = False) -> Path:
    """The run folder given, or the most recent under ./runs (saying which on stderr)."""
    from .runs import CHECKPOINT, CONFIG, is_run

    if run is None:
        path = _latest_run()
        if not quiet:
            click.echo(f"using run {path} (most recent under ./{RUNS})", err=True)
        return path
    path = Path(run)
    if not path.is_dir():
        raise click.BadParameter(f"run folder {run!r} does not exist", param_hint="--run")
    if not is_run(path):
        raise click.BadParameter(f"{run!r} is not a run folder (needs {CONFIG} and {CHECKPOINT})",
                                 param_hint="--run")
    return path


def _has_run(path: Path) -> bool:
    """Whether ``path`` holds a run to continue; BadParameter if it is a file."""
    from .runs import is_run

    if path.exists() and not path.is_dir():
        raise click.BadParameter(f"{path} is a file, not a run folder", param_hint="--run")
    return is_run(path)


def _load_run(path: Path, device: str):
    from .runs import load_run

    try:
        loaded = load_run(path, device=device)
    except Exception as err:  # corrupt files, a checkpoint from another network, ...
        raise click.UsageError(f"cannot load run {path}: {_one_line(err)[:300]}") from None
    if loaded[2].get("objective") == "autoencoder":
        raise click.UsageError(f"{path} is an autoencoder run, with no score to sample or "
                               f"measure: train a latent model on it (scoresde train --latent "
                               f"{path})")
    return loaded


def _new_run_dir(*words: str) -> Path:
    """``./runs/NNNNN-words``, numbered one above the highest existing run."""
    from .runs import new_run_dir

    return new_run_dir(RUNS, *words)


def _remove_unfinished(path: Path) -> None:
    """Remove a run folder that this command created and that has no checkpoint yet."""
    from .runs import has_checkpoint

    if path.is_dir() and not has_checkpoint(path):
        shutil.rmtree(path)


def _check_out(path: Path, param: str = "--out", **rules) -> Path:
    """``path`` if the command may write it (:func:`scoresde.outputs.check_output` with
    ``rules``); a BadParameter of ``param`` that says why not otherwise."""
    from .outputs import check_output

    try:
        return check_output(path, **rules)
    except (ValueError, FileExistsError) as err:
        raise click.BadParameter(_one_line(err), param_hint=param) from None


def _explicit(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE


def _emit(record: dict, as_json: bool, lines: list[str]) -> None:
    click.echo(_strict_json(record) if as_json else "\n".join(lines))


def _strict_json(record: dict) -> str:
    """``record`` as strict JSON: a NaN or infinite number becomes ``null`` (``NaN`` and
    ``Infinity`` are not JSON, and strict readers refuse them), and ``"non_finite"`` maps each
    such key (``a.b`` inside dicts) to what it was, ``"nan"``, ``"inf"`` or ``"-inf"``."""
    bad: dict[str, str] = {}

    def clean(value, key: str):
        if isinstance(value, float) and not math.isfinite(value):
            bad[key] = str(value)
            return None
        if isinstance(value, dict):
            return {k: clean(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, f"{key}[{i}]") for i, v in enumerate(value)]
        return value

    out = clean(record, "")
    if bad:
        out["non_finite"] = bad
    return json.dumps(out, allow_nan=False)


# ----- train --------------------------------------------------------------------------------------
@main.command(context_settings=_CTX)
@click.option("--sde", type=_LazyChoice("SDES"), default=_Default("train", "sde"),
              show_default=True, help="Forward SDE.")
@click.option("--data", type=str, default=_Default("train", "data"), show_default=True,
              metavar="NAME|PATH", cls=_LazyHelp,
              fields={"toys": lambda: ", ".join(_library("toys.TOYS"))},
              help="A 2D toy ({toys}), 'digits', a .npy/.npz file of (N, *dims) (uint8 of rank "
                   "3 or 4: 8-bit images), or a folder of image files (one subfolder per class "
                   "for --conditional).")
@click.option("--channels", type=int, default=None, cls=_LazyHelp,
              fields={"modes": lambda: ", ".join(f"{c} ({m})" for c, m in
                                                 _library("images.MODES").items())},
              help="Image folders: convert every image to {modes} channels [default: the "
                   "images' own, which must agree].")
@click.option("--resolution", type=click.IntRange(min=1), default=None, metavar="R",
              help="Image folders: resize the shorter side to R and centre-crop to R x R "
                   "[default: keep the size, which must agree].")
@click.option("--flip", is_flag=True,
              help="8-bit images: mirror training images left to right at random.")
@click.option("--downsample", type=click.IntRange(min=1), default=_Default("train", "downsample"),
              show_default=True, metavar="F",
              help="Digits and float image arrays: train at 1/F of the resolution (block means); "
                   "2 gives the 4x4 base model of a digits cascade.")
@click.option("--super-res", type=click.IntRange(min=2), default=None, metavar="F",
              help="Train a super-resolution model conditioned on the images downsampled by F "
                   "(upsampled, as extra U-Net channels): the second stage of a cascade.")
@click.option("--cond-aug", type=click.FloatRange(min=0), default=_Default("train", "cond_aug"),
              show_default=True,
              help="--super-res: conditioning augmentation, the low-resolution image noised at a "
                   "level drawn per sample in [0, A] and given to the network; 0 for none.")
@click.option("--steps", type=click.IntRange(min=1), default=None, cls=_LazyHelp,
              fields={"steps": _Default("train", "steps")},
              help="Optimizer steps [default: {steps}; with --resume: the run's own total, or the "
                   "new total given here].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, cls=_LazyHelp,
              fields={"vector": lambda: _library("training.VECTOR_BATCH"),
                      "image": lambda: _library("training.IMAGE_BATCH")},
              help="Points per step [default: {vector} for 2D and vector data, {image} for "
                   "images].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=_Default("train", "lr"),
              show_default=True, help="Peak learning rate (warmup, then cosine decay).")
@click.option("--weighting", type=_LazyChoice("losses.WEIGHTINGS"),
              default=_Default("train", "weighting"), show_default=True,
              help="lambda(t) = s(t)^2, g(t)^2, or g(t)^2 with importance-sampled t.")
@click.option("--log-snr-share", type=click.FloatRange(0, 1),
              default=_Default("train", "log_snr_share"), show_default=True,
              help="Share of training times drawn uniformly in log-SNR rather than in t, so "
                   "that small noise levels are trained too (0.3 for sharp-edged data; "
                   "--weighting sigma2 only).")
@click.option("--net", type=_LazyChoice("models.TRAIN_NETS"), default=_Default("train", "net"),
              show_default=True,
              help="Network: auto (MLP for vectors, U-Net for images), one by name, or a preset "
                   "(ddpmpp_cifar10 is the paper's DDPM++; the small ones fit a CPU).")
@click.option("--width", type=click.IntRange(min=1), default=None,
              cls=_LazyHelp, fields={"width": _Default("ScoreMLP", "hidden")},
              help="Hidden width of the MLP (default: the library's, {width}).")
@click.option("--input-features", type=click.IntRange(min=0), default=None, cls=_LazyHelp,
              fields={"features": _Default("ScoreMLP", "input_features")},
              help="Random Fourier features of the input for the MLP (default: the library's, "
                   "{features}); 64 helps data with sharp edges such as checkerboard.")
@click.option("--run", "run", default=None, metavar="DIR",
              help="Run folder [default: a new one under ./runs].")
@click.option("--resume", is_flag=True,
              help="Continue the run in --run (or the most recent); a --run folder that is absent "
                   "or has no checkpoint yet is started, so a requeued job can always pass it.")
@click.option("--seed", type=int, default=_Default("train", "seed"), show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--checkpoint-every", type=click.IntRange(min=1),
              default=_Default("train", "checkpoint_every"), show_default=True)
@click.option("--quiet", is_flag=True, help="No progress line.")
@click.option("--conditional", is_flag=True,
              help="Class-conditional model (labelled data: digits, 8gaussians, .npz with y, a "
                   "folder of class folders).")
@click.option("--label-dropout", type=click.FloatRange(0, 1, max_open=True),
              default=_Default("train", "label_dropout"), show_default=True,
              help="Share of labels dropped (for classifier-free guidance).")
@click.option("--autoencoder", is_flag=True,
              help="Train an autoencoder of the images (for --latent) instead of a score model.")
@click.option("--latent", type=click.Path(file_okay=False, path_type=Path), default=None,
              metavar="AE_RUN",
              help="Train on the latents of the autoencoder run AE_RUN (its data; latents "
                   "scaled to unit variance); sample decodes them.")
@click.option("--precision", type=_LazyChoice("stepping.PRECISIONS"),
              default=_Default("train", "precision"), show_default=True,
              help="bf16: autocast (CPU, CUDA); fp16: autocast with a gradient scaler (CUDA).")
@click.option("--batch-gpu", type=click.IntRange(min=1), default=None,
              help="At most this many samples per forward pass: gradients accumulate over "
                   "micro-batches (same result as the whole batch) [default: the whole batch].")
@click.option("--compile/--no-compile", "compile_", default=False,
              help="torch.compile the model (stops if it cannot) [default: no].")
@click.option("--channels-last/--no-channels-last", default=False,
              help="Images in channels-last memory format [default: no].")
@click.option("--sample-every", type=click.IntRange(min=1), default=None, metavar="N",
              help="Every N steps, a grid of samples from the EMA weights into "
                   "RUN/samples/step_N.png [default: none].")
@click.option("--eval-every", type=click.IntRange(min=1), default=None, metavar="K",
              help="Every K steps, FID/KID of the EMA weights into the run's metrics "
                   "[default: none].")
@click.option("--eval-n", type=click.IntRange(min=2), default=_Default("train", "eval_n"),
              show_default=True, help="Samples per evaluation (the same seed each time).")
@click.option("--eval-features", default=_Default("train", "eval_features"), show_default=True,
              metavar="NAME|PATH", help="Evaluation features: 'digits' or a trusted "
                                        "TorchScript file (it runs code).")
@click.pass_context
def train(ctx, sde, data, channels, resolution, flip, downsample, super_res, cond_aug, steps,
          batch_size, lr, weighting,
          log_snr_share, net, width, input_features, run, resume, seed, device,
          checkpoint_every, quiet, conditional, label_dropout, autoencoder, latent, precision,
          batch_gpu, compile_, channels_last, sample_every, eval_every, eval_n, eval_features):
    """Train a score model into a run folder: its options, checkpoint and metrics.

    \b
    Examples:
      scoresde train --sde vp                          # 8gaussians, about a minute on a CPU
      scoresde train --sde ve --data moons --steps 5000
      scoresde train --data checkerboard --input-features 64 --log-snr-share 0.3 \\
          --batch-size 2048 --steps 4500                # sharp edges: ~2.5 min
      scoresde train --data digits --steps 20000 --batch-size 128
      scoresde train --resume --steps 6000             # continue the most recent run
      scoresde train --data digits --conditional       # labels in, for --label / --guidance
      scoresde train --data photos/ --resolution 32 --flip   # your own images
      scoresde train --data digits --net ddpmpp_small8 # the paper's DDPM++, small
      scoresde train --data digits --precision bf16 --batch-gpu 32 --sample-every 500
      scoresde train --data digits --eval-every 500 --eval-n 1000   # FID/KID in metrics
      scoresde train --data digits --downsample 2 --run runs/base4   # a cascade: 4x4 base,
      scoresde train --data digits --super-res 2 --run runs/sr8      # then 4x4 -> 8x8
      scoresde train --data digits --autoencoder --run runs/ae       # latent diffusion:
      scoresde train --latent runs/ae --run runs/latent              # a score of its latents
    """
    from .training import train as train_run
    from .utils import FolderBusyError, resolve_device

    resolve_device(device)
    net_params = {k: v for k, v in [("hidden", width), ("input_features", input_features)]
                  if v is not None}
    keywords = dict(sde=sde, data=data, channels=channels, resolution=resolution, flip=flip,
                    downsample=downsample, super_res=super_res, cond_aug=cond_aug, net=net,
                    batch_size=batch_size, lr=lr, weighting=weighting,
                    log_snr_share=log_snr_share, seed=seed, net_params=net_params or None,
                    conditional=conditional, label_dropout=label_dropout, device=device,
                    resume=resume, checkpoint_every=checkpoint_every, progress=not quiet,
                    precision=precision)
    if autoencoder or latent is not None:
        keywords.update(objective="autoencoder" if autoencoder else "score",
                        latent=None if latent is None else str(latent))
    for key, param, value in [("batch_gpu", "batch_gpu", batch_gpu),
                              ("compile", "compile_", compile_),
                              ("channels_last", "channels_last", channels_last),
                              ("sample_every", "sample_every", sample_every),
                              ("eval_every", "eval_every", eval_every),
                              ("eval_n", "eval_n", eval_n),
                              ("eval_features", "eval_features", eval_features)]:
        if not resume or _explicit(ctx, param):  # on resume, the run's own unless given here
            keywords[key] = value
    if steps is not None:
        keywords["steps"] = steps
    if resume and run is not None and not _has_run(Path(run)):
        path = _run_folder(Path(run))  # a job requeued before its first checkpoint: start it
        click.echo(f"no checkpoint in {path} yet: starting the run there", err=True)
        keywords["run_dir"] = path
    elif resume:
        path = _run_folder(_pick_run(run))
        keywords = _resume_keywords(ctx, path, dict(keywords, run_dir=path))
        _check_eval_features(ctx, keywords)
    else:
        path = Path(run) if run else _new_run_dir(sde, "latent" if latent else data)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise click.BadParameter(f"{path} already exists; pass --resume to continue it or "
                                     "choose another --run", param_hint="--run")
        keywords["run_dir"] = path
    created = not path.exists()
    try:
        result = train_run(**keywords)
    except FolderBusyError:
        raise  # the folder is another process's, whoever created it
    except BaseException as err:
        if created:
            _remove_unfinished(path)  # a run that failed before its first checkpoint: nothing
        if isinstance(err, _library("training.TrainingInterrupted")):  # the checkpoint is saved
            click.echo(_interrupted(ctx, err, path), err=True)
            ctx.exit(128 + err.signum)  # 130 for SIGINT, 143 for SIGTERM, as shells report them
        raise
    if result["resumed_from"] == result["step"]:
        click.echo(f"{path} is already at step {result['step']} of {result['step']}: nothing "
                   f"to train; pass --steps N (N > {result['step']}) to train longer")
    else:
        click.echo(f"trained {result['step']} steps in {result['train_time_s']:.1f} s "
                   f"(loss {result['loss']:.4f}) into {path}")
    click.echo(f"next: scoresde sample --run {path}")


def _interrupted(ctx: click.Context, stop, path: Path) -> str:
    """What an interrupted ``train`` (``stop``, a TrainingInterrupted) says: the step saved and
    the command that resumes the run, with the options given here that ``--resume`` does not
    take from the run (the total given as ``--steps`` included, though the run has it too)."""
    import shlex

    from .runs import has_checkpoint

    if not has_checkpoint(path):
        return f"interrupted ({stop.signal_name}) before the first step: nothing was saved"
    command = ["scoresde", "train", "--resume", "--run", str(path)]
    for name, flag in (("steps", "--steps"), ("device", "--device"),
                       ("checkpoint_every", "--checkpoint-every"),
                       ("eval_features", "--eval-features")):  # a file is never the run's
        if _explicit(ctx, name):
            command += [flag, str(ctx.params[name])]
    command += ["--quiet"] if ctx.params.get("quiet") else []
    if stop.step is None:
        saved = f"before training resumed: {path} is as it was"
    else:
        saved = (f"at step {stop.step} of {stop.steps}: saved the checkpoint of step "
                 f"{stop.step} in {path}")
    return f"interrupted ({stop.signal_name}) {saved}; resume with: {shlex.join(command)}"


def _run_folder(path: Path) -> Path:
    """``path`` if training may write there (:func:`scoresde.runs.check_run_folder`)."""
    from .runs import check_run_folder

    try:
        check_run_folder(path)
    except ValueError as err:
        raise click.BadParameter(_one_line(err), param_hint="--run") from None
    return path


def _check_eval_features(ctx: click.Context, keywords: dict) -> None:
    """Refuse a resumed run whose evaluation would load a TorchScript file that only its
    config names: a file that runs code is loaded only when the command line names it."""
    features = str(keywords.get("eval_features"))
    if (keywords.get("eval_every") and not _explicit(ctx, "eval_features")
            and features not in _library("features.EXTRACTORS")):
        raise click.BadParameter(
            f"the run measures FID with the TorchScript file {features!r}, which runs code; a "
            f"file named only in a run's config is never loaded: pass --eval-features "
            f"{features} to trust it, or --eval-features digits", param_hint="--eval-features")


def _resume_keywords(ctx: click.Context, path: Path, keywords: dict) -> dict:
    """``train()`` keywords that continue the run in ``path``: the options not given on the
    command line are the run's own (see :func:`scoresde.runs.resume_keywords`)."""
    from .runs import read_config, resume_keywords, upgrade_config
    from .training import train as train_run

    old = upgrade_config(read_config(path))
    explicit = {key for key in ctx.params if _explicit(ctx, key)}
    return resume_keywords(old, keywords, explicit, inspect.signature(train_run).parameters)


# ----- sample -------------------------------------------------------------------------------------
def _grids_by_solver() -> str:
    """``uniform for em, pc, ...; edm for euler, ...``: each solver's default grid, from the
    library's table."""
    by_grid: dict[str, list[str]] = {}
    for solver, grid in _library("sampling.DEFAULT_GRIDS").items():
        by_grid.setdefault(grid, []).append(solver)
    return "; ".join(f"{grid} for {'/'.join(names)}" for grid, names in by_grid.items())


class _SeedList(click.ParamType):
    """``0-63`` (inclusive), ``0,5,9-12``: a list of integer seeds >= 0, one per sample."""

    name = "SEEDS"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        seeds = []
        try:
            for part in str(value).split(","):
                low, dash, high = part.strip().partition("-")
                low = int(low)
                high = int(high) if dash else low
                if low < 0 or high < low:
                    raise ValueError
                seeds.extend(range(low, high + 1))
        except ValueError:
            self.fail(f"expected seeds as ranges 'a-b' (inclusive, 0 <= a <= b) and integers "
                      f"joined by commas, e.g. 0-63 or 0,5,9-12; got {value!r}", param, ctx)
        return seeds


def _sample_count(ctx: click.Context, n, seeds, is_image: bool) -> int:
    """The number of samples: ``--n``, the number of ``--seeds``, or the default."""
    if seeds is None:
        return n or (64 if is_image else 1000)
    if n is not None and n != len(seeds):
        raise click.BadParameter(f"--n {n} differs from the {len(seeds)} seeds of --seeds; "
                                 "give one of them", param_hint="--n/--seeds")
    if _explicit(ctx, "seed"):
        raise click.BadParameter("--seed seeds the whole batch, --seeds each sample: give one",
                                 param_hint="--seed/--seeds")
    return len(seeds)


_KNOBS = ("predictor", "corrector", "snr", "corrector_steps", "method", "adaptive", "rtol",
          "atol", "sigma_max", "sigma_min")


@main.command(context_settings=_CTX)
@click.option("--run", default=None, metavar="DIR", help="Run folder [default: most recent].")
@click.option("--solver", type=_LazyChoice("sampling.SAMPLERS"),
              default=_Default("sample", "solver"), show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=_Default("sample", "steps"),
              show_default=True,
              help="Steps of the time grid (ode picks its own).")
@click.option("--n", "n", type=click.IntRange(min=1), default=None,
              help="Number of samples [default: 1000, 64 for images].")
@click.option("--eps", type=click.FloatRange(min=0, min_open=True), default=None, cls=_LazyHelp,
              fields={"vp": lambda: _library("sampling.grids.VP_EPS"),
                      "ve": lambda: _library("sampling.grids.VE_EPS")},
              help="Last time [default: {vp:g} VP-type, {ve:g} VE-type].")
@click.option("--grid", type=_LazyChoice("sampling.GRIDS"), default=None, cls=_LazyHelp,
              fields={"grids": lambda: _grids_by_solver()},
              help="Time grid [default: {grids}].")
@click.option("--predictor", type=_LazyChoice("sampling.PREDICTORS"),
              default=_Default("sampling.sample_pc", "predictor"), show_default=True,
              help="pc only.")
@click.option("--corrector", type=_LazyChoice("sampling.CORRECTORS"),
              default=_Default("sampling.sample_pc", "corrector"), show_default=True,
              help="pc only.")
@click.option("--snr", type=click.FloatRange(min=0, min_open=True),
              default=_Default("sampling.sample_pc", "snr"), show_default=True,
              help="Corrector signal-to-noise ratio (pc only).")
@click.option("--corrector-steps", type=click.IntRange(min=1),
              default=_Default("sampling.sample_pc", "corrector_steps"), show_default=True,
              help="pc only.")
@click.option("--method", default=None, cls=_LazyHelp,
              fields={"ode": lambda: ", ".join(_library("scipy_ode.ODE_METHODS")),
                      "sde": lambda: ", ".join(_library("sampling.TORCHSDE_METHODS")),
                      "ode_default": _Default("sampling.sample_ode", "method"),
                      "sde_default": _Default("sampling.sample_torchsde", "method")},
              help="ode: {ode} [default: {ode_default}]; torchsde: {sde} "
                   "[default: {sde_default}].")
@click.option("--adaptive", is_flag=True, help="torchsde only: adaptive steps with --rtol/--atol "
              "(--steps sets the first step).")
@click.option("--rtol", type=click.FloatRange(min=0, min_open=True), default=None, cls=_LazyHelp,
              fields={"ode": _Default("sampling.sample_ode", "rtol"),
                      "sde": _Default("sampling.sample_torchsde", "rtol")},
              help="Relative tolerance: ode [default: {ode}]; torchsde with --adaptive "
                   "[default: {sde}].")
@click.option("--atol", type=click.FloatRange(min=0, min_open=True), default=None, cls=_LazyHelp,
              fields={"ode": _Default("sampling.sample_ode", "atol"),
                      "sde": _Default("sampling.sample_torchsde", "atol")},
              help="Absolute tolerance: ode [default: {ode}]; torchsde with --adaptive "
                   "[default: {sde}].")
@click.option("--sigma-max", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Few steps: one jump from T to this sigma = s/m, the other steps below it.")
@click.option("--sigma-min", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Few steps: the other steps above this sigma = s/m, one jump to eps.")
@click.option("--no-denoise", is_flag=True, help="Skip the final Tweedie denoising step.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the one generator of the whole batch.")
@click.option("--seeds", type=_SeedList(), default=None,
              help="One seed per sample, e.g. 0-63 or 0,5,9-12: sample i depends only on its "
              "seed, whatever the batch (ode and --adaptive torchsde choose their steps for the "
              "batch: equal within tolerance) [default: --n samples from --seed].")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Samples file (.npz) [default: RUN/samples-SOLVER-STEPS-nN-seedS[-HASH].npz, "
              "HASH naming any other option given]; the figure goes beside it as .png.")
@click.option("--force", is_flag=True,
              help="Replace an existing --out (and its figure) that holds other samples or "
              "another file [default: refuse; the same command again reuses its own file].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, cls=_LazyHelp,
              fields={"vector": lambda: _library("sample_files.SAMPLE_BATCH")["vector"],
                      "image": lambda: _library("sample_files.SAMPLE_BATCH")["image"]},
              help="Samples drawn at a time [default: {vector}, {image} for images]. Each chunk "
                   "is saved as it is done (OUT.parts/), so memory holds one chunk and the same "
                   "command after a kill continues where it stopped.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--label", default=None, metavar="K|all",
              help="Class of every sample, or 'all' to cycle through the classes (conditional "
              "runs).")
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
@click.option("--inverse", type=_LazyChoice("sampling.INVERSE_METHODS"), default=None,
              cls=_LazyHelp, fields={"default": _Default("sampling.solve_inverse", "method")},
              help="Method for --observe, or for --mask instead of plain replacement [default "
              "with --observe: {default}]. smc takes no --solver.")
@click.option("--particles", type=click.IntRange(min=1),
              default=_Default("sampling.sample_smc", "particles"), show_default=True,
              help="--inverse smc: particles per sample.")
@click.option("--step-size", type=click.FloatRange(min=0),
              default=_Default("sampling.inverse._dps", "step_size"), show_default=True,
              help="--inverse dps: the gradient step.")
@click.option("--jump", type=click.IntRange(min=1),
              default=_Default("sampling.inverse._repaint", "jump"), show_default=True,
              help="--inverse repaint: steps per segment.")
@click.option("--resample", type=click.IntRange(min=1),
              default=_Default("sampling.inverse._repaint", "resample"), show_default=True,
              help="--inverse repaint: runs of each segment.")
@click.option("--cascade", "cascade_runs", nargs=2, type=click.Path(path_type=Path),
              default=None, metavar="BASE_RUN SR_RUN",
              help="Sample a cascade: BASE_RUN with --solver/--steps, then the super-resolution "
                   "run SR_RUN conditioned on it with --sr-solver/--sr-steps.")
@click.option("--sr-solver", type=_LazyChoice("sampling.SAMPLERS"), default=None,
              help="--cascade: the second stage's solver [default: --solver].")
@click.option("--sr-steps", type=click.IntRange(min=1), default=None,
              help="--cascade: the second stage's steps [default: --steps].")
@click.option("--aug-level", type=click.FloatRange(min=0),
              default=_Default("cascade.cascade", "aug_level"), show_default=True,
              help="--cascade: conditioning-augmentation level of the second stage.")
@click.pass_context
def sample(ctx, run, solver, steps, n, eps, grid, predictor, corrector, snr, corrector_steps,
           method, adaptive, rtol, atol, sigma_max, sigma_min, no_denoise, seed, seeds, out,
           force, batch_size, device, as_json, label, embedding, guidance, mask, observe,
           inverse, particles, step_size, jump, resample, cascade_runs, sr_solver, sr_steps,
           aug_level):
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
    from . import plotting
    from .outputs import samples_name
    from .runs import learnt_unconditional
    from .sample_files import SAMPLE_BATCH, write_in_chunks
    from .utils import resolve_device

    dev = resolve_device(device)
    if cascade_runs is not None:
        return _sample_cascade(ctx, cascade_runs, dev, n, seed, out, force, as_json)
    for name in ("sr_solver", "sr_steps", "aug_level"):
        if _explicit(ctx, name):
            raise click.UsageError(f"--{name.replace('_', '-')} is for --cascade")
    path = _pick_run(run, quiet=as_json)
    inputs = [path, mask, observe, embedding]
    if out is not None:  # the cheap checks first; the figure's and the inputs' below
        _check_out(out, suffixes=(".npz",), inputs=inputs, replace=True)
    knobs = {k: ctx.params[k] for k in _KNOBS if _explicit(ctx, k)}
    model, sde, config = _load_run(path, str(dev))
    is_image = bool(config.get("is_image"))
    n = _sample_count(ctx, n, seeds, is_image)
    default_batch = SAMPLE_BATCH["image" if is_image else "vector"]
    batch_size = batch_size or default_batch
    stats = _data_statistics(config, solver, steps, grid, sigma_max, sigma_min, quiet=as_json)
    if embedding is not None and label is not None:
        raise click.UsageError("give --label (class labels) or --embedding, not both")
    if embedding is not None:  # embeddings take the place of labels
        label, labels = str(embedding), _embeddings(model, embedding, guidance, n)
    else:
        _, labels = _conditioning(model, label, guidance, n)  # checks labels and guidance
    if guidance != 0 and labels is not None and not learnt_unconditional(config):
        raise click.BadParameter(f"{path} was trained with label_dropout=0, so it never learnt "
                                 "the unconditional score that guidance mixes in; sample it "
                                 "unguided, or train with --label-dropout", param_hint="--guidance")
    if config.get("latent") and (mask is not None or observe is not None):
        raise click.UsageError(f"--mask and --observe are not supported for the latent run "
                               f"{path}: it samples latents {tuple(config['data_shape'])} and "
                               "decodes them, so a measurement of images cannot be imposed")
    known = _mask_values(mask, config, n) if mask is not None else None
    options = dict(solver=solver, steps=steps, eps=eps, grid=grid, denoise=not no_denoise,
                   knobs=knobs)
    problem = None
    if observe is not None or inverse is not None:
        problem = _inverse_problem(ctx, observe, inverse, known, config, n, seeds)
        known = None
    draw = _chunk_draw(model, sde, config, dev, options, stats, seed, seeds, labels, guidance,
                       known, problem)
    fingerprint = dict(options, run=_run_identity(path), device=str(dev), seed=seed, seeds=seeds,
                       label=label, guidance=guidance, mask=_file_identity(mask),
                       embedding=_file_identity(embedding), data_statistics=_stats_identity(stats))
    if problem is not None:
        fingerprint.update(observe=_file_identity(observe), inverse=problem["method"],
                           inverse_knobs=problem["knobs"])
    if out is None:
        extras = {k: v for k, v in fingerprint.items()  # the run's weights too: trained on,
                  if k not in ("solver", "steps", "seed", "seeds")  # they sample anew
                  and v != _UNSET.get(k, object())}
        if seeds is None and batch_size != default_batch:  # chunk k draws from (seed, k)
            extras["batch_size"] = batch_size
        if seeds is not None:
            extras["seeds"] = seeds
        stem, run_with = "samples", (solver, steps)
        if problem is not None:  # the method, then what solve_inverse runs
            stem, run_with = f"samples-{problem['method']}", _inverse_solver(problem)
        out = path / samples_name(stem, solver=run_with[0], steps=run_with[1], n=n,
                                  seed=None if seeds is not None else seed, extras=extras)
    out = _check_out(out, suffixes=(".npz",), inputs=inputs + _data_files(config), replace=True)
    fig_path = None
    if is_image or tuple(config["data_shape"]) == (2,):  # what samples_picture draws
        fig_path = _check_out(out.with_suffix(".png"), inputs=inputs + _data_files(config),
                              others=[out], replace=force or out.exists())
    ncol = model.num_classes if label == "all" else None
    keep = (64 // ncol) * ncol if ncol and is_image else 64 if is_image else n if fig_path else 0
    result = write_in_chunks(out, n, batch_size, draw, fingerprint, keep=keep, replace=force)
    _say_reused(result, out, as_json)
    infos = result["info"]
    nfe = _mean_nfe(infos)
    seconds = sum(i["time_s"] for i in infos)
    if problem is not None:  # what solve_inverse ran: its own defaults where none was given
        solver, steps = _inverse_solver(problem)
    if fig_path is not None:
        plotting.save_figure(plotting.samples_picture(
            result["head"]["samples"], solver or problem["method"], nfe, is_image=is_image,
            ncol=ncol, raw_scale=config.get("raw_scale", 1.0),
            raw_offset=config.get("raw_offset", 0.0), pixel_bits=config.get("pixel_bits")),
            fig_path)
    record = {"run": str(path), "solver": solver, "steps": steps, "n": n, "nfe": nfe,
              "eps": infos[0]["eps"], "time_s": round(seconds, 4), "out": str(out),
              "figure": str(fig_path) if fig_path else None, "options": knobs,
              "data_statistics": sorted(stats), "batch_size": batch_size,
              "chunks": result["chunks"], "chunks_reused": result["chunks"] - result["drawn"]}
    if problem is not None:
        record.update(inverse=problem["method"], inverse_options=problem["knobs"])
    _emit(record, as_json, [f"{solver or problem['method']}: {n} samples, NFE {nfe}, "
                            f"{seconds:.2f} s",
                            _wrote(result, out, fig_path)])


def _wrote(result: dict, out: Path, figure: Path | None) -> str:
    """The line that says which files a sample command wrote (or found already written)."""
    line = f"kept {out} (it holds these samples)" if result["reused"] else f"wrote {out}"
    return line + (f" and {'wrote ' if result['reused'] else ''}{figure}" if figure else "")


def _say_reused(result: dict, out: Path, as_json: bool) -> None:
    """On stderr: what of a sample file was there already (the file, or some chunks)."""
    if as_json:
        return
    if result["reused"]:
        click.echo(f"{out} already holds these samples (the same options): nothing drawn",
                   err=True)
    elif result["drawn"] < result["chunks"]:
        click.echo(f"continued: {result['chunks'] - result['drawn']} of {result['chunks']} "
                   f"chunks were already drawn", err=True)


# The fingerprint entries of `sample` at their defaults: the default file name spells out the
# others (their hash).
_UNSET = {"eps": None, "grid": None, "denoise": True, "knobs": {}, "device": "cpu",
          "label": None, "guidance": 0.0, "mask": None, "embedding": None,
          "data_statistics": {}}


def _data_files(config: dict) -> list:
    """The files and run folders a run reads its data from (never to be written over): the
    data as named and where it was when the run started, the autoencoder run of a latent run."""
    return [Path(p) for p in (config.get("data"), config.get("data_path"), config.get("latent"))
            if isinstance(p, str) and os.path.exists(p)]


def _sample_cascade(ctx: click.Context, runs, dev, n, seed, out, force, as_json):
    """``scoresde sample --cascade BASE_RUN SR_RUN``: both stages at once, chunk by chunk (chunk
    ``k`` from ``(seed, k)``, resumed after a kill as ``sample`` is), one .npz and figure."""
    from . import plotting
    from .outputs import samples_name
    from .sample_files import SAMPLE_BATCH, write_in_chunks

    p = ctx.params
    for name in ("run", "seeds", "label", "embedding", "mask", "observe", "inverse", "grid",
                 "sigma_max", "sigma_min", "eps", "guidance", "no_denoise"):
        if _explicit(ctx, name):
            raise click.UsageError(f"--{name.replace('_', '-')} does not apply to --cascade")
    (base, base_sde, base_config), (sr, sr_sde, config) = (_load_run(path, str(dev))
                                                           for path in runs)
    if not sr.cond_channels:
        raise click.BadParameter(f"{runs[1]} is not a super-resolution run (train it with "
                                 "--super-res)", param_hint="--cascade")
    if base.cond_channels:
        raise click.BadParameter(f"{runs[0]} is a super-resolution run; the base run of a "
                                 "cascade is an ordinary one", param_hint="--cascade")
    low, high = base_config["data_shape"][1:], config["data_shape"][1:]
    if [side * config["super_res"] for side in low] != high:  # the factor it was trained for
        raise click.BadParameter(f"{runs[1]} was trained to raise {high[0] // config['super_res']}"
                                 f" pixels to {high[0]} (--super-res {config['super_res']}); "
                                 f"{runs[0]} samples {low[0]}x{low[1]}", param_hint="--cascade")
    knobs = {k: p[k] for k in _KNOBS if _explicit(ctx, k)}
    stages = dict(solver=p["solver"], steps=p["steps"], sr_solver=p["sr_solver"],
                  sr_steps=p["sr_steps"], aug_level=p["aug_level"], base_knobs=knobs,
                  sr_knobs=knobs if p["sr_solver"] in (None, p["solver"]) else {})
    n, batch_size = n or 64, p["batch_size"] or SAMPLE_BATCH["image"]
    draw = _cascade_draw(base, base_sde, sr, sr_sde, config, stages, seed, dev)
    fingerprint = dict(stages, cascade=[_run_identity(r) for r in runs], device=str(dev),
                       seed=seed)
    if out is None:  # the stages' solvers, steps and level, then the rest as a hash
        stem = f"cascade-{p['solver']}-{p['steps']}"
        if p["sr_solver"] is not None or p["sr_steps"] is not None:
            stem += f"-sr-{p['sr_solver'] or p['solver']}-{p['sr_steps'] or p['steps']}"
        if p["aug_level"]:
            stem += f"-aug{p['aug_level']:g}"
        extras = {k: v for k, v in fingerprint.items() if k not in ("solver", "steps", "seed")}
        if batch_size != SAMPLE_BATCH["image"]:
            extras["batch_size"] = batch_size
        out = runs[1] / samples_name(stem, solver=None, steps=None, n=n, seed=seed,
                                     extras=extras)
    inputs = [*runs, *_data_files(base_config), *_data_files(config)]
    out = _check_out(out, suffixes=(".npz",), inputs=inputs, replace=True)
    fig_path = _check_out(out.with_suffix(".png"), inputs=inputs, others=[out],
                          replace=force or out.exists())
    result = write_in_chunks(out, n, batch_size, draw, fingerprint, keep=64, replace=force)
    _say_reused(result, out, as_json)
    infos = result["info"]
    nfe_base, nfe_sr = _mean_nfe(infos, "nfe_base"), _mean_nfe(infos, "nfe_sr")
    nfe = round(nfe_base + nfe_sr, 1)  # the stages' means as shown (an int stays an int)
    seconds = sum(i["time_s"] for i in infos)
    plotting.save_figure(plotting.samples_picture(
        result["head"]["samples"], "cascade", nfe, is_image=True,
        raw_scale=config.get("raw_scale", 1.0), raw_offset=config.get("raw_offset", 0.0),
        pixel_bits=config.get("pixel_bits")), fig_path)
    record = {"cascade": [str(r) for r in runs], "n": n, "nfe": nfe, "nfe_base": nfe_base,
              "nfe_sr": nfe_sr, "aug_level": infos[0]["aug_level"],
              "time_s": round(seconds, 4), "out": str(out), "figure": str(fig_path),
              "batch_size": batch_size, "chunks": result["chunks"],
              "chunks_reused": result["chunks"] - result["drawn"]}
    _emit(record, as_json, [f"cascade: {n} samples, NFE {nfe} ({nfe_base} + {nfe_sr}), "
                            f"{seconds:.2f} s", _wrote(result, out, fig_path)])


def _cascade_draw(base, base_sde, sr, sr_sde, config, stages, seed, dev):
    """``draw(k, start, stop)`` for :func:`~scoresde.sample_files.write_in_chunks`: a cascade's
    samples ``start:stop`` from chunk ``k``'s generator, with their low-resolution stage."""
    import torch

    from .cascade import cascade
    from .sample_files import chunk_generator

    scale, offset = config.get("raw_scale", 1.0), config.get("raw_offset", 0.0)

    def draw(k: int, start: int, stop: int):
        begin = time.perf_counter()
        try:
            with torch.no_grad():
                x, info = cascade(base, base_sde, sr, sr_sde, stop - start, device=dev,
                                  generator=chunk_generator(seed, k, dev), **stages)
        except ValueError as err:  # before anything is drawn: the models do not fit
            raise click.UsageError(_one_line(err)) from None
        x = x.cpu()
        arrays = dict(samples=x.numpy(), low_res=info["low_res"].cpu().numpy(),
                      raw=(x * scale + offset).numpy())
        return arrays, {"nfe": info["nfe"], "nfe_base": info["base"]["nfe"],
                        "nfe_sr": info["sr"]["nfe"], "aug_level": info["aug_level"],
                        "time_s": time.perf_counter() - begin}

    return draw


def _chunk_draw(model, sde, config, dev, options, stats, seed, seeds, labels, guidance, known,
                problem=None):
    """``draw(k, start, stop)`` for :func:`~scoresde.sample_files.write_in_chunks`: samples
    ``start:stop`` of the command, from chunk ``k``'s generator or the samples' own seeds."""
    import torch

    from .guidance import classifier_free_guidance
    from .sample_files import chunk_randomness
    from .sampling import impute
    from .sampling import sample as draw_samples

    shape = tuple(config["data_shape"])
    scale, offset = config.get("raw_scale", 1.0), config.get("raw_offset", 0.0)
    solver_options = dict({k: options[k] for k in ("solver", "steps", "eps", "grid", "denoise")},
                          **options["knobs"])

    def draw(k: int, start: int, stop: int):
        rows = slice(start, stop)
        randomness, recorded = chunk_randomness(k, start, stop, seed, seeds, dev)
        cond = None if labels is None else labels[rows]
        if cond is not None and problem is not None and problem["method"] == "smc":
            cond = cond.repeat_interleave(problem["knobs"]["particles"], 0)  # per particle
        score = model if cond is None else classifier_free_guidance(model, cond, guidance)
        begin = time.perf_counter()
        with torch.no_grad():
            if problem is not None:
                x, info = _solve_chunk(score, sde, problem, options, rows, stop - start, shape,
                                       randomness["generator"])
            elif known is not None:
                mask, values = (_rows(a, rows, stop - start, shape) for a in known)
                x, info = impute(score, sde, values.to(dev), mask.to(dev), **solver_options,
                                 **randomness)
            else:
                x, info = draw_samples(score, sde, (stop - start, *shape), device=dev, **stats,
                                       **solver_options, **randomness)
        if hasattr(model, "decode"):  # a latent run: images from its latents
            with torch.no_grad():
                x = model.decode(x)
        x = x.cpu()  # finite: the samplers stop at the first non-finite step
        arrays = dict(samples=x.numpy(), raw=(x * scale + offset).numpy(), **recorded)
        if labels is not None:
            arrays["labels"] = labels[rows].numpy()
        return arrays, {"nfe": info["nfe"], "eps": info["eps"],
                        "time_s": time.perf_counter() - begin}

    return draw


# The methods' knobs that sample has options for (the library says which method takes which).
_INVERSE_KNOBS = ("particles", "step_size", "jump", "resample")


def _inverse_problem(ctx, observe, inverse, known, config, n, seeds) -> dict:
    """``--observe`` (or ``--mask`` with ``--inverse``) as keywords of ``solve_inverse``;
    BadParameter if the options do not fit together."""
    from .data import load_observation
    from .observe import LinearObservation, mask_matrix

    if seeds is not None:
        raise click.BadParameter("--inverse and --observe draw with --seed, not --seeds",
                                 param_hint="--seeds")
    if observe is not None and known is not None:
        raise click.BadParameter("give --observe or --mask, not both", param_hint="--observe")
    if observe is None and known is None:
        raise click.BadParameter("--inverse needs --observe or --mask", param_hint="--inverse")
    method = inverse or _Default("sampling.solve_inverse", "method")()
    if observe is not None:
        try:
            a, y, noise_std = load_observation(observe, tuple(config["data_shape"]))
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--observe") from None
    else:
        mask, values = known
        if mask.ndim > len(config["data_shape"]):
            raise click.BadParameter("--inverse takes one mask of the data's shape (not one "
                                     "per row)", param_hint="--mask")
        flat, rows = mask.reshape(-1), values.ndim > len(config["data_shape"])
        values = values.reshape(values.shape[0] if rows else 1, -1)[:, flat].double()
        a, y, noise_std = mask_matrix(flat), values if rows else values[0], 0.0
    if y.ndim == 2 and y.shape[0] not in (1, n):
        raise click.BadParameter(f"y holds {y.shape[0]} rows; --n is {n}", param_hint="--observe")
    try:  # before any chunk is drawn: y in the range of A when noiseless, and so on
        LinearObservation(a, y, noise_std, tuple(config["data_shape"]))
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--observe/--mask") from None
    from .sampling.inverse import INVERSE_METHODS, _method_knobs

    own = {m: [k for k in _method_knobs(m) if k in _INVERSE_KNOBS] for m in INVERSE_METHODS}
    knobs = {k: ctx.params[k] for k in own[method]}
    wrong = [k for group in own.values() for k in group
             if k not in knobs and _explicit(ctx, k)]
    if wrong:
        raise click.BadParameter(f"--{wrong[0].replace('_', '-')} does not apply to --inverse "
                                 f"{method}", param_hint=f"--{wrong[0].replace('_', '-')}")
    return dict(A=a, y=y, noise_std=noise_std, method=method, knobs=knobs,
                solver=ctx.params["solver"] if _explicit(ctx, "solver") else None,
                steps=ctx.params["steps"] if _explicit(ctx, "steps") else None)


def _inverse_solver(problem: dict) -> tuple[str | None, int]:
    """``(solver, steps)`` that ``solve_inverse`` runs for ``problem`` (solver None for smc)."""
    from .sampling.inverse import DEFAULT_SOLVER

    steps = problem["steps"] or _Default("sampling.solve_inverse", "steps")()
    if problem["method"] == "smc":
        return None, steps
    return problem["solver"] or DEFAULT_SOLVER, steps


def _solve_chunk(score, sde, problem, options, rows, count, shape, generator):
    """Rows ``rows`` of the inverse problem, through ``solve_inverse``; UsageError if it
    refuses the options."""
    from .sampling import solve_inverse

    y = problem["y"]
    y = y[rows] if y.ndim == 2 and y.shape[0] > 1 else y.reshape(1, -1)
    keywords = dict(problem["knobs"], **options["knobs"])
    for k in ("solver", "steps"):
        if problem[k] is not None:
            keywords[k] = problem[k]
    try:
        return solve_inverse(score, sde, problem["A"], y, problem["noise_std"],
                             method=problem["method"], n=count, event_shape=shape,
                             eps=options["eps"], grid=options["grid"], generator=generator,
                             denoise=options["denoise"], **keywords)
    except ValueError as err:
        raise click.UsageError(_one_line(err)) from None


def _rows(array, rows: slice, count: int, shape: tuple):
    """Rows ``rows`` of a mask or values array of shape ``shape`` or ``(N, *shape)``."""
    if array.ndim > len(shape) and array.shape[0] > 1:
        return array[rows].clone()
    return array.reshape(1, *shape).expand(count, *shape).clone()


def _mean_nfe(infos: list[dict], key: str = "nfe"):
    """Score calls per chunk (``info[key]``): the number, or their mean where chunks differ
    (``ode``)."""
    values = {i[key] for i in infos}
    return values.pop() if len(values) == 1 else round(sum(i[key] for i in infos) / len(infos),
                                                       1)


def _run_identity(path: Path) -> dict:
    """What names a run's current weights wherever the folder is: its checkpoint's digest."""
    from .runs import CHECKPOINT
    from .utils import file_digest

    return {"checkpoint_sha256": file_digest(path / CHECKPOINT)[:16]}


def _stats_identity(stats: dict) -> dict:
    """What names the data statistics a few-step draw uses: a digest of each tensor."""
    import hashlib

    return {k: hashlib.sha256(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
            for k, v in sorted(stats.items())}


def _file_identity(path) -> dict | None:
    if path is None:
        return None
    stat = os.stat(path)
    return {"path": str(Path(path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


# Above this many entries per sample the covariance is too large to pass: the run's sigma_data
# and the data's mean stand for it (an isotropic Gaussian).
def _data_statistics(config: dict, solver: str, steps: int, grid, sigma_max, sigma_min,
                     quiet: bool = False) -> dict:
    """The run's training data's statistics when the sampler uses them (few steps, no grid or
    window given: ``Dataset.sampling_statistics``); ``{}`` otherwise, or when the data can no
    longer be read (said on stderr)."""
    from .data import run_dataset
    from .sampling.fewstep import uses_data_stats

    if config.get("latent") or not uses_data_stats(solver, steps, grid, sigma_max, sigma_min):
        return {}  # a latent run's data are not its training points
    try:
        return run_dataset(config).sampling_statistics(config["sigma_data"])
    except (ValueError, OSError) as err:
        if not quiet:
            click.echo(f"few steps without the data's statistics ({_one_line(err)[:200]}): "
                       "the solver's default grid", err=True)
        return {}


def _conditioning(model, label, guidance, n):
    """``(score_fn, labels)`` for ``--label`` and ``--guidance``; bad values raise BadParameter."""
    from .guidance import classifier_free_guidance
    from .quality import chunk_labels

    if label is None:
        if guidance != 0:
            raise click.BadParameter("--guidance needs --label", param_hint="--guidance")
        return model, None
    if getattr(model, "embed_dim", 0):
        raise click.BadParameter("this run is conditioned on embeddings, not classes; give "
                                 "--embedding FILE", param_hint="--label")
    if not model.num_classes:
        raise click.BadParameter("this run is unconditional; train with --conditional",
                                 param_hint="--label")
    try:
        labels = chunk_labels(_parse_label(label), 0, n, model.num_classes)
        return classifier_free_guidance(model, labels, guidance), labels
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--label/--guidance") from None


def _parse_label(label: str | None):
    """``--label``: None, ``"all"`` or an integer class (its range is the model's to check)."""
    if label is None or label == "all":
        return label
    try:
        return int(label)
    except ValueError:
        raise click.BadParameter(f"expected an integer class or 'all', got {label!r}",
                                 param_hint="--label") from None


def _embeddings(model, path, guidance, n):
    """The ``(n, E)`` embeddings of ``--embedding`` (one row for all, or ``n`` rows), checked
    with ``--guidance`` against the run; BadParameter if bad."""
    import numpy as np
    import torch

    from .guidance import classifier_free_guidance

    if not model.embed_dim:
        raise click.BadParameter("this run is not conditioned on embeddings; train with "
                                 "--conditional on an .npz whose y holds floats (N, E)",
                                 param_hint="--embedding")
    try:
        e = torch.from_numpy(np.load(path, allow_pickle=False)).float()
    except (OSError, ValueError, RuntimeError) as err:
        raise click.BadParameter(_one_line(err), param_hint="--embedding") from None
    if e.ndim not in (1, 2) or e.shape[-1] != model.embed_dim:
        raise click.BadParameter(f"expected one embedding ({model.embed_dim},) or one per "
                                 f"sample ({n}, {model.embed_dim}), got shape {tuple(e.shape)}",
                                 param_hint="--embedding")
    e = e.expand(n, -1) if e.ndim == 1 else e
    if e.shape[0] != n:
        raise click.BadParameter(f"expected one embedding or {n} (one per sample), got "
                                 f"{e.shape[0]}", param_hint="--embedding")
    try:
        classifier_free_guidance(model, e, guidance)
    except ValueError as err:
        raise click.BadParameter(_one_line(err), param_hint="--embedding") from None
    return e.contiguous()


def _mask_values(path, config, n):
    """``(mask, values)`` from ``--mask``, each of the data's shape or with 1 or ``n`` rows in
    front (expanded chunk by chunk); BadParameter if bad."""
    from .data import load_mask

    shape = tuple(config["data_shape"])
    try:
        known, values = load_mask(path, shape)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--mask") from None
    if known.ndim > len(shape) and known.shape[0] not in (1, n):
        raise click.BadParameter(f"the mask holds {known.shape[0]} rows; --n is {n}",
                                 param_hint="--mask")
    return known, values


# ----- likelihood ---------------------------------------------------------------------------------
@main.command(context_settings=_CTX)
@click.option("--run", default=None, metavar="DIR", help="Run folder [default: most recent].")
@click.option("--data", default=None, metavar="PATH",
              help="A .npy/.npz of points in model space [default: the run's held-out set].")
@click.option("--n", "n", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Number of held-out points (at most the set's size).")
@click.option("--divergence", type=_LazyChoice("likelihood.DIVERGENCES"),
              default=_Default("log_likelihood", "divergence"), show_default=True,
              help="auto: exact in low dimension.")
@click.option("--probes", type=click.IntRange(min=1), default=_Default("log_likelihood", "probes"),
              show_default=True, help="Hutchinson probes.")
@click.option("--method", type=str, default=_Default("log_likelihood", "method"),
              show_default=True, help="scipy solve_ivp method.")
@click.option("--rtol", type=click.FloatRange(min=0, min_open=True),
              default=_Default("log_likelihood", "rtol"), show_default=True)
@click.option("--atol", type=click.FloatRange(min=0, min_open=True),
              default=_Default("log_likelihood", "atol"), show_default=True)
@click.option("--eps", type=click.FloatRange(min=0, min_open=True),
              default=_Default("log_likelihood", "eps"), show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def likelihood(run, data, n, divergence, probes, method, rtol, atol, eps, seed, device, as_json):
    """Log-likelihood of held-out data under a run, through the probability-flow ODE.

    \b
    Examples:
      scoresde likelihood                              # the most recent run, 1000 points
      scoresde likelihood --n 10000 --json
      scoresde likelihood --run runs/00001-vp-digits --divergence hutchinson --probes 4
    """

    from .data import load_run_array, run_dataset
    from .utils import make_generator, resolve_device

    dev = resolve_device(device)
    path = _pick_run(run, quiet=as_json)
    model, sde, config = _load_run(path, str(dev))
    if config.get("latent"):
        return _latent_likelihood(model, sde, path, config, data, n, locals(), as_json)
    shape = tuple(config["data_shape"])
    dataset = None
    if data is None and config.get("data") is None:
        raise click.UsageError(f"run {path} has no data set of its own (it was converted): "
                               "give --data")
    if data is None:
        dataset = run_dataset(config)
        x = dataset.test[:n]
    else:
        x = load_run_array(data, config)[:n]
    if tuple(x.shape[1:]) != shape:
        raise click.BadParameter(f"points of shape {tuple(x.shape[1:])} do not match the run's "
                                 f"data shape {shape}", param_hint="--data")
    knobs = dict(eps=eps, method=method, rtol=rtol, atol=atol, divergence=divergence,
                 probes=probes, generator=make_generator(seed, dev))
    start = time.perf_counter()
    logp, info, bpd = _log_likelihood(model, sde, x.to(dev), config, knobs)
    seconds = time.perf_counter() - start
    count, dim = len(logp), math.prod(shape)
    mean = float(logp.mean())
    sem = float(logp.std() / math.sqrt(count)) if count > 1 else float("nan")
    record = {"run": str(path), "n": count, "log_likelihood": mean, "standard_error": sem,
              "nfe": info["nfe"], "time_s": round(seconds, 4), "divergence": divergence}
    what = "nats of the 8-bit levels, dequantised bound" if bpd is not None else "nats"
    lines = [f"log-likelihood {mean:.4f} ± {sem:.4f} {what} ({count} points, NFE {info['nfe']}, "
             f"{seconds:.1f} s)"]
    if bpd is not None:
        record["bits_per_dim"] = float(bpd.double().mean())
        lines.append(f"{record['bits_per_dim']:.4f} bits/dim ({config['pixel_bits']}-bit "
                     "levels, uniform dequantisation: an upper bound)")
    elif config.get("is_image"):  # per dimension, on the raw pixel scale (density)
        raw_logp = mean - dim * math.log(config.get("raw_scale", 1.0))
        record["bits_per_dim"] = -raw_logp / (dim * math.log(2))
        lines.append(f"{record['bits_per_dim']:.4f} bits/dim (continuous density, raw pixel "
                     "scale)")
    entropy = dataset.entropy if dataset is not None else None
    if entropy is not None:
        record["entropy"] = entropy
        record["gap"] = -mean - entropy
        lines.append(f"data entropy {entropy:.4f} nats: gap {record['gap']:+.4f} nats")
    _emit(record, as_json, lines)


def _latent_likelihood(model, sde, path, config, data, n, options, as_json):
    """``likelihood`` of a latent run: the NLL of the scaled latents of held-out images (a
    density over latents, labelled so, never image bits/dim) and the reconstruction error."""
    import torch

    from .data import DATA_OPTIONS, get_dataset, load_run_array
    from .likelihood import log_likelihood
    from .utils import make_generator

    if data is None:
        x = get_dataset(config["data"], **{k: config[k] for k in DATA_OPTIONS if k in config}
                        ).test[:n]
    else:
        x = load_run_array(data, config)[:n]
    shape = tuple(model.autoencoder.config()["event_shape"])
    if tuple(x.shape[1:]) != shape:
        raise click.BadParameter(f"images of shape {tuple(x.shape[1:])} do not match the "
                                 f"autoencoder's {shape}", param_hint="--data")
    dev = next(model.net.parameters()).device
    with torch.no_grad():
        z = model.encode(x.to(dev))
        mse = model.reconstruction_error(x.to(dev)).double().cpu()
    knobs = {k: options[k] for k in ("eps", "method", "rtol", "atol", "divergence", "probes")}
    start = time.perf_counter()
    logp, info = log_likelihood(model, sde, z, generator=make_generator(options["seed"], dev),
                                **knobs)
    seconds = time.perf_counter() - start
    dim, nll = math.prod(z.shape[1:]), float(-logp.double().mean())
    scale, raw = config["latent_scale"], config.get("raw_scale", 1.0)
    record = {"run": str(path), "n": len(z), "latent_nll_nats": nll,
              "latent_nll_nats_per_dim": nll / dim, "latent_shape": list(z.shape[1:]),
              "latent_scale": scale, "reconstruction_mse": float(mse.mean()),
              "reconstruction_rmse_raw": math.sqrt(float(mse.mean())) * raw,
              "nfe": info["nfe"], "time_s": round(seconds, 4),
              "note": "a density over the autoencoder's scaled latents, not over images: "
                      "no image bits/dim exists for a latent model"}
    _emit(record, as_json, [
        f"latent NLL {nll:.4f} nats ({nll / dim:.4f} per latent dimension, {dim} dims; "
        f"latents scaled by {scale:.4g}; {len(z)} points, NFE {info['nfe']}, {seconds:.1f} s)",
        f"reconstruction error {record['reconstruction_mse']:.5f} mean squared per entry "
        f"(RMS {record['reconstruction_rmse_raw']:.3f} on the raw pixel scale)",
        "not image bits/dim: the decoder is not invertible, the density is over latents"])


def _log_likelihood(model, sde, x, config: dict, knobs: dict):
    """``(logp, info, bpd)``: for a run on 8-bit images, :func:`scoresde.bits_per_dim` of the
    levels of ``x`` (``logp`` its bound on their log-probability, nats); otherwise the
    density's :func:`scoresde.log_likelihood` of ``x`` and ``bpd`` None."""
    import torch

    from .likelihood import bits_per_dim, log_likelihood

    bits = config.get("pixel_bits")
    if not bits:
        logp, info = log_likelihood(model, sde, x, **knobs)
        return logp.double().cpu(), info, None
    scale, offset = config["raw_scale"], config["raw_offset"]
    raw = x * scale + offset
    if not torch.equal(raw, raw.round()):
        raise click.BadParameter(f"this run is on {bits}-bit images: --data must hold them "
                                 "(uint8 arrays of rank 3 or 4)", param_hint="--data")
    # the model range whose bins of width 1 / scale are centred on the levels 0 .. 2^bits - 1
    data_range = ((-0.5 - offset) / scale, (2**bits - 0.5 - offset) / scale)
    bpd, info = bits_per_dim(model, sde, raw.round().long(), bits=bits, data_range=data_range,
                             **knobs)
    return info["log_prob_bound"].double().cpu(), info, bpd.cpu()


# ----- convert ------------------------------------------------------------------------------------
@main.command(context_settings=_CTX)
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--from", "source", type=_LazyChoice("convert.SOURCES"), required=True,
              help="The code that wrote CHECKPOINT.")
@click.option("--config", type=_LazyChoice("convert.SCORE_SDE_CONFIGS"), required=True,
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
    from .convert import convert_score_sde

    out, ema = (out if out is not None else _new_run_dir(source, config)), not no_ema
    try:
        path = convert_score_sde(checkpoint, config, out, ema=ema)
    except (ValueError, FileNotFoundError) as err:
        raise click.UsageError(_one_line(err)) from None
    from .runs import read_config

    run = read_config(path)
    ema = run["source"]["ema"]  # False for a checkpoint without an EMA
    record = {"run": str(path), "source": source, "config": config, "ema": ema,
              "num_params": run["num_params"], "sde": run["sde"]["name"]}
    _emit(record, as_json, [f"converted {checkpoint} ({config}, {run['num_params']:,} "
                            f"parameters, {'EMA' if ema else 'raw'} weights) into {path}"])


# ----- fid ----------------------------------------------------------------------------------------
@main.command(context_settings=_CTX)
@click.option("--run", default=None, metavar="DIR", help="Run folder [default: most recent].")
@click.option("--n", "n", type=click.IntRange(min=2), default=_Default("quality.run_quality", "n"),
              show_default=True, help="Samples (FID is biased below 10,000; compare equal N).")
@click.option("--solver", type=_LazyChoice("sampling.SAMPLERS"),
              default=_Default("sample", "solver"), show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=_Default("sample", "steps"),
              show_default=True)
@click.option("--eps", type=click.FloatRange(min=0, min_open=True), default=None,
              help="The last time [default: the SDE's].")
@click.option("--grid", type=_LazyChoice("sampling.GRIDS"), default=None,
              help="The time grid [default: the solver's].")
@click.option("--rtol", type=click.FloatRange(min=0, min_open=True), default=None,
              help="ode, torchsde: relative tolerance [default: the solver's].")
@click.option("--atol", type=click.FloatRange(min=0, min_open=True), default=None,
              help="ode, torchsde: absolute tolerance [default: the solver's].")
@click.option("--features", default=_Default("quality.run_quality", "features"),
              show_default=True, metavar="NAME|PATH",
              help="'digits' (the shipped digits network, 1x8x8) or a TorchScript file, e.g. "
                   "the FID Inception network; TorchScript runs code: use trusted files only.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seeds the samples (chunk k from seed and k, as `scoresde sample`) and KID's "
                   "subsets.")
@click.option("--batch-size", type=click.IntRange(min=1),
              default=_Default("quality.run_quality", "batch_size"), show_default=True,
              help="Samples per chunk (memory holds one chunk and the features).")
@click.option("--label", default=None, metavar="K|all",
              help="Class-conditional runs: the class of every sample, or 'all' for each class "
              "in turn [default: the unconditional score].")
@click.option("--guidance", type=float, default=0.0, show_default=True,
              help="Classifier-free guidance weight w, with --label.")
@click.option("--samples", "samples_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, metavar="FILE",
              help="Measure the images of this .npz/.npy instead of sampling: its 'samples' "
              "(a `scoresde sample` file: model values) or its array as a data file is read "
              "(uint8: 8-bit images, e.g. another code's).")
@click.option("--data", default=None, metavar="NAME|PATH",
              help="With --samples: the data to compare with [default: the run's].")
@click.option("--device", default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def fid(ctx, run, n, solver, steps, eps, grid, rtol, atol, features, seed, batch_size, label,
        guidance, samples_file, data, device, as_json):
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
    from .quality import run_quality
    from .utils import resolve_device

    resolve_device(device)  # before anything else: a device that is not there is bad input
    names = _library("features.EXTRACTORS")
    if features not in names and not Path(features).is_file():
        raise click.BadParameter(f"{features!r} is neither one of {', '.join(names)} nor a file",
                                 param_hint="--features")
    if samples_file is not None:
        return _fid_of_file(ctx, samples_file, data, run, features, seed, device, as_json)
    if data is not None:
        raise click.UsageError("--data is for --samples (a run is compared with its own data)")
    path = _pick_run(run, quiet=as_json)
    options = {k: v for k, v in dict(eps=eps, grid=grid, rtol=rtol, atol=atol).items()
               if v is not None}
    label = _parse_label(label)
    if guidance != 0 and label is None:
        raise click.BadParameter("--guidance needs --label", param_hint="--guidance")
    _warn_small_n(n)
    record = run_quality(path, features=features, n=n, solver=solver, steps=steps, seed=seed,
                         batch_size=batch_size, device=resolve_device(device), label=label,
                         guidance=guidance, **options)
    record["seeds"] = f"chunk k of {batch_size} from (seed {seed}, k); KID subsets from {seed}"
    _emit(record, as_json, [
        f"FID {record['fid']:.4f}   KID {record['kid']:.5f} +- {record['kid_se']:.5f}   "
        f"precision {record['precision']:.4f}   recall {record['recall']:.4f}",
        f"N {n} ({solver}, {steps} steps, NFE {record['nfe']:g}), seed {seed}, reference "
        f"{record['reference_n']} training images, features {record['features']}"])


def _warn_small_n(n: int) -> None:
    from .quality import FID_N

    if n < FID_N:
        click.echo(f"warning: N={n} < {FID_N:,}: FID is biased upward at small N and comparable "
                   "only between equal N (KID is unbiased)", err=True)


def _fid_of_file(ctx, samples_file, data, run, features, seed, device, as_json):
    """``scoresde fid --samples FILE``: the scores of a file's images against ``--data`` or the
    run's data."""
    from .data import get_dataset
    from .quality import file_quality, run_images
    from .utils import resolve_device

    for name in ("n", "solver", "steps", "eps", "grid", "rtol", "atol", "batch_size", "label",
                 "guidance"):
        if _explicit(ctx, name):
            raise click.UsageError(f"--{name.replace('_', '-')} is for sampling; --samples "
                                   "measures the file's images as they are")
    if not samples_file.is_file():
        raise click.BadParameter(f"{samples_file} does not exist", param_hint="--samples")
    if data is not None and run is not None:
        raise click.UsageError("give --data or --run (whose data the samples are compared "
                               "with), not both")
    dataset = get_dataset(data) if data is not None else run_images(_pick_run(run, as_json))
    record = file_quality(samples_file, dataset, features=features, seed=seed,
                          device=resolve_device(device))
    _warn_small_n(record["n"])
    _emit(record, as_json, [
        f"FID {record['fid']:.4f}   KID {record['kid']:.5f} +- {record['kid_se']:.5f}   "
        f"precision {record['precision']:.4f}   recall {record['recall']:.4f}",
        f"N {record['n']} images of {samples_file} ("
        f"{'8-bit' if record['pixels'] else 'model values'}), KID subsets from seed {seed}, "
        f"reference {record['reference_n']} training images of {dataset.name}, features "
        f"{record['features']}"])


# ----- demo ---------------------------------------------------------------------------------------
@main.command(context_settings=_CTX)
@click.option("--toy", type=_LazyChoice("toys.TOYS"), default=_Default("run_demo", "toy"),
              show_default=True)
@click.option("--sde", type=_LazyChoice("SDES"), default=_Default("run_demo", "sde"),
              show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=_Default("train", "steps"),
              show_default=True, cls=_LazyHelp,
              fields={"batch": lambda: _library("training.VECTOR_BATCH")},
              help="Training steps (batch {batch}, as `scoresde train`).")
@click.option("--n", "n", type=click.IntRange(min=10), default=_Default("run_demo", "n"),
              show_default=True, cls=_LazyHelp,
              fields={"points": lambda: _library("demo.LIKELIHOOD_POINTS")},
              help="Samples per solver (half as many held-out points drawn; the likelihood on "
                   "at most {points} of them).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The figure (.png, .pdf or .svg) [default: RUN/demo.png].")
@click.option("--force", is_flag=True, help="Replace an existing --out [default: refuse].")
@click.option("--seed", type=int, default=_Default("run_demo", "seed"), show_default=True)
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
    from . import plotting
    from .demo import run_demo
    from .utils import resolve_device

    dev = resolve_device(device)
    if out is not None:
        _check_out(out, replace=force, suffixes=(".png", ".pdf", ".svg"))
    path = _new_run_dir("demo", sde, toy)
    try:
        figure, summary = run_demo(path, toy=toy, sde=sde, steps=steps, n=n, seed=seed,
                                   device=dev, quick=quick)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: a demo cut short is no run to keep
        shutil.rmtree(path, ignore_errors=True)
        raise
    except BaseException:
        _remove_unfinished(path)  # a demo that failed before its checkpoint leaves nothing
        raise
    if out is not None:  # again: a minute has passed, and a file may have appeared there
        _check_out(out, replace=force, suffixes=(".png", ".pdf", ".svg"))
    out = out or path / "demo.png"
    plotting.save_figure(figure, out)
    for line in summary:
        click.echo(line)
    click.echo(f"wrote {out}")


if __name__ == "__main__":  # pragma: no cover
    main()
