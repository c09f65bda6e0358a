"""Draw samples from a run into a file: what ``scoresde sample`` does, as one function.

:func:`sample_run` loads the run's EMA model, reads what the samples are conditioned on
(:mod:`scoresde.tasks.conditions`), decides whether a few-step solver gets the data's
statistics (:func:`data_statistics`), and draws chunk by chunk into one ``.npz``
(:func:`~scoresde.sample_files.write_in_chunks`: chunk ``k`` from ``(seed, k)``, resumed after
a kill, a finished file of the same options reused), with the figure beside it.
:func:`~scoresde.tasks.cascades.sample_cascade_run` does the same for a cascade of two runs.
The command calls these and prints; a notebook user calling them with the command's options
gets the same arrays.
"""

from __future__ import annotations

import hashlib
import os
import warnings
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import plotting, utils
from ..checks import OptionError
from ..data import run_dataset
from ..distributed import joined
from ..guidance import classifier_free_guidance
from ..images import sample_levels, save_images
from ..observe import LinearObservation
from ..outputs import check_output, samples_name
from ..runs import learnt_unconditional, load_run
from ..sample_files import SAMPLE_BATCH, chunk_randomness, sample_chunk, write_in_chunks
from ..sampling import impute, sample, solve_inverse
from ..sampling.api import SOLVERS
from ..sampling.fewstep import GAUSSIAN_SOLVERS, uses_data_stats
from ..utils import is_inside, keyword_default, one_line, resolve_device
from . import conditions
from .conditions import file_identity

__all__ = ["sample_run", "load_sampler", "data_statistics", "mean_nfe", "run_identity"]

Say = Callable[[str], None]
# The fingerprint entries of a draw at their defaults: a default file name spells out the
# others (their hash).
_UNSET = {"eps": None, "grid": None, "denoise": True, "knobs": {}, "device": "cpu",
          "label": None, "guidance": 0.0, "mask": None, "embedding": None,
          "data_statistics": {}}


def load_sampler(path, device):
    """``(model, sde, config)`` of a run to sample: its EMA model on ``device``.

    Raises:
        OptionError: the run cannot be loaded, or is an autoencoder run (no score).
    """
    try:
        loaded = load_run(path, device=device)
    except Exception as err:  # corrupt files, a checkpoint from another network, ...
        raise OptionError(None, f"cannot load run {path}: {one_line(err)[:300]}"
                          ) from None
    if loaded[2].get("objective") == "autoencoder":
        raise OptionError(None, f"{path} is an autoencoder run, with no score to sample or "
                                f"measure: train a latent model on it (scoresde train --latent "
                                f"{path})")
    return loaded


def data_statistics(config: dict, solver: str, steps: int, grid=None, sigma_max=None,
                    sigma_min=None, say: Say | None = None) -> dict:
    """The run's training data's statistics when the sampler uses them (a few-step solver,
    no grid or window given: ``Dataset.sampling_statistics``); ``{}`` otherwise, or when the
    data can no longer be read (said through ``say``, or as a warning)."""
    needed = solver in GAUSSIAN_SOLVERS
    if config.get("latent") or not uses_data_stats(solver, steps, grid, sigma_max, sigma_min):
        if needed:  # a latent run's data are not its training points
            raise OptionError("solver", f"{solver} needs the statistics of the data it draws, "
                                        "which a latent run does not record: use unipc")
        return {}
    try:
        return run_dataset(config).sampling_statistics(config["sigma_data"])
    except (ValueError, OSError) as err:
        if needed:
            raise OptionError("solver", f"{solver} needs the run's data statistics and the "
                                        f"data cannot be read: {one_line(err)[:200]}") from None
        tell(f"few steps without the data's statistics ({one_line(err)[:200]}): the solver's "
             "default grid", say)
        return {}


def tell(line: str, say: Say | None, stacklevel: int = 2) -> None:
    """``say(line)``, or without ``say`` a warning (of the caller's caller by default)."""
    if say is None:
        warnings.warn(line, stacklevel=stacklevel + 1)
    else:
        say(line)


def raw_values(x: torch.Tensor, config: dict) -> torch.Tensor:
    """Model values ``x`` of a run as its data's raw values: ``x raw_scale + raw_offset``."""
    return utils.raw_values(x, config.get("raw_scale", 1.0), config.get("raw_offset", 0.0))


def run_identity(model) -> dict:
    """What names the weights a run samples with, wherever its folder is and whatever else its
    checkpoint records (the time trained): a digest of the model's tensors (a latent model's
    score and autoencoder both)."""
    parts = [model] if isinstance(model, torch.nn.Module) else [
        v for _, v in sorted(vars(model).items()) if isinstance(v, torch.nn.Module)]
    h = hashlib.sha256()
    for key, value in (item for part in parts for item in sorted(part.state_dict().items())):
        value = value.detach().cpu().contiguous()
        h.update(f"{key}:{value.dtype}:{tuple(value.shape)}:".encode())
        h.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return {"weights_sha256": h.hexdigest()[:16]}


def _stats_identity(stats: dict) -> dict:
    """What names the data statistics a few-step draw uses: a digest of each tensor."""
    return {k: hashlib.sha256(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
            for k, v in sorted(stats.items())}


def mean_nfe(infos: list[dict], key: str = "nfe"):
    """Score calls per chunk (``info[key]``): the number, or their mean where chunks differ
    (``ode``)."""
    values = {i[key] for i in infos}
    return values.pop() if len(values) == 1 else round(sum(i[key] for i in infos) / len(infos),
                                                       1)


def run_inputs(config: dict) -> list:
    """The files and run folders a run reads its data from (never to be written over): the
    data as named and where it was when the run started, the autoencoder run of a latent run."""
    return [Path(p) for p in (config.get("data"), config.get("data_path"), config.get("latent"))
            if isinstance(p, str) and os.path.exists(p)]


def output_path(path, **rules) -> Path:
    """``path`` checked as an output (:func:`~scoresde.outputs.check_output`)."""
    try:
        return check_output(path, **rules)
    except (ValueError, FileExistsError) as err:
        raise OptionError("out", one_line(err)) from None


def _count(n, seeds, seed, is_image: bool) -> int:
    """The number of samples: ``n``, the number of ``seeds``, or the default."""
    if seeds is None:
        return n or (64 if is_image else 1000)
    if n is not None and n != len(seeds):
        raise OptionError("n/seeds", f"--n {n} differs from the {len(seeds)} seeds of --seeds; "
                                     "give one of them")
    if seed is not None:
        raise OptionError("seed/seeds", "--seed seeds the whole batch, --seeds each sample: "
                                        "give one")
    return len(seeds)


def sample_run(run, out=None, *, solver: str | None = None, steps: int | None = None,
               n: int | None = None, eps: float | None = None, grid: str | None = None,
               denoise: bool = True, solver_options: dict | None = None,
               seed: int | None = None, seeds=None, label=None, embedding=None,
               guidance: float = 0.0, mask=None, observe=None, inverse: str | None = None,
               inverse_options: dict | None = None, batch_size: int | None = None,
               device="cpu", replace: bool = False, progress: bool = True,
               images=None, say: Say | None = None) -> tuple[dict, dict]:
    """Draw ``n`` samples from the run folder ``run`` into ``out`` (``.npz``) and a figure.

    Args:
        run: a run folder. out: the ``.npz`` [default: ``RUN/samples-...npz``, a name that
            differs whenever the samples do (:func:`~scoresde.outputs.samples_name`)].
        solver, steps: as :func:`~scoresde.sample` (None: its defaults; with an observation,
            :func:`~scoresde.sampling.solve_inverse`'s). eps, grid, denoise: as ``sample``.
        solver_options: the solver's own options (``rtol``, ``snr``, ``sigma_max``, ...);
            a window (``sigma_max``, ``sigma_min``) among them, like ``grid``, keeps a few-step
            solver from the data's statistics (:func:`data_statistics`).
        seed: chunk ``k`` draws from ``(seed, k)`` [default: 0]; seeds: one seed per sample
            instead (not with ``seed``), or the command's text of them (``"0-63"``).
        label: a class (or ``"all"``: each class in turn) of a class-conditional run;
            embedding: a ``.npy`` of embeddings for a run conditioned on them; guidance: the
            classifier-free guidance weight.
        mask: a mask file (imputation); observe: a file of a linear observation ``A``, ``y``;
            inverse, inverse_options: the method for either and its options.
        batch_size: samples per chunk [default: ``SAMPLE_BATCH``]; replace: replace an ``out``
            holding other samples or another file.
        images: a new (or empty) folder to write each sample into as an 8-bit PNG
            (``NNNNNN.png``; with labels, in a subfolder per class named as the run's classes),
            the samples' own levels (:func:`~scoresde.images.sample_levels`); runs of images.
        progress: progress on stderr, of the steps (of the chunks for ``ode`` and
            ``torchsde``): a bar in a terminal, a line every 30 s elsewhere
            (:mod:`scoresde.progress`).
        say: called with a line for the user (the data statistics could not be read)
            [default: a warning].

    Returns:
        ``(record, result)``: the record the command prints (run, solver, steps, n, nfe, eps,
        time_s, out, figure, ...) and :func:`~scoresde.sample_files.write_in_chunks`'s answer
        (``head``, ``reused``, ...).

    Raises:
        OptionError: an option that does not fit the run or the others (named).
    """
    asked = resolve_device(device)  # under torchrun each rank's own GPU: the files are alike
    with joined(asked) as (ranks, dev):  # under torchrun: this rank's share
        path = Path(run)
        say = say if ranks.lead else (lambda line: None)
        inputs = [path, mask, observe, embedding]
        if out is not None:  # the cheap checks first; the figure's and the data's below
            output_path(out, suffixes=(".npz",), inputs=inputs, replace=True)
        solver_options = dict(solver_options or {})
        seeds = conditions.parse_seeds(seeds) if isinstance(seeds, str) else seeds
        given = (solver, steps)
        solver = keyword_default(sample, "solver") if solver is None else solver
        steps = keyword_default(sample, "steps") if steps is None else steps
        model, sde, config = load_sampler(path, dev)
        is_image = bool(config.get("is_image"))
        n = _count(n, seeds, seed, is_image)
        seed = 0 if seed is None else seed
        default_batch = SAMPLE_BATCH["image" if is_image else "vector"]
        batch_size = batch_size or default_batch
        stats = data_statistics(config, solver, steps, grid, solver_options.get("sigma_max"),
                                solver_options.get("sigma_min"), say)
        if embedding is not None and label is not None:
            raise OptionError(None, "give --label (class labels) or --embedding, not both")
        label = conditions.named_label(label, config.get("class_names"))
        if embedding is not None:  # embeddings take the place of labels
            label, labels = str(embedding), conditions.embeddings(model, embedding, guidance, n)
        else:
            labels = conditions.class_labels(model, label, guidance, n)
        if guidance != 0 and labels is not None and not learnt_unconditional(config):
            raise OptionError("guidance", f"{path} was trained with label_dropout=0, so it never "
                                          "learnt the unconditional score that guidance mixes in; "
                                          "sample it unguided, or train with --label-dropout")
        shape = tuple(config["data_shape"])
        if images is not None:
            _check_images(images, is_image)
        if config.get("latent") and (mask is not None or observe is not None):
            raise OptionError(None, f"--mask and --observe are not supported for the latent run "
                                    f"{path}: it samples latents {shape} and decodes them, so a "
                                    "measurement of images cannot be imposed")
        known = conditions.mask_values(mask, shape, n) if mask is not None else None
        shown = known  # the observation drawn beside the samples
        # The keys of the sample file's manifest: "knobs" (and "inverse_knobs" below) are the
        # solver's (the inverse method's) own options, named so in files already written.
        options = dict(solver=solver, steps=steps, eps=eps, grid=grid, denoise=denoise,
                       knobs=solver_options)
        problem = None
        if observe is not None or inverse is not None:
            problem = conditions.inverse_problem(observe, inverse, known, shape, n, seeds=seeds,
                                                 solver=given[0], steps=given[1],
                                                 options=inverse_options or {})
            known = None
        draw = _chunk_draw(model, sde, config, dev, options, stats, seed, seeds, labels, guidance,
                           known, problem)
        fingerprint = dict(options, run=run_identity(model), device=str(asked), seed=seed,
                           seeds=seeds, label=label, guidance=guidance, mask=file_identity(mask),
                           embedding=file_identity(embedding),
                           data_statistics=_stats_identity(stats))
        if problem is not None:
            fingerprint.update(observe=file_identity(observe), inverse=problem["method"],
                               inverse_knobs=problem["method_options"])
            solver, steps = conditions.inverse_solver(problem)  # what solve_inverse runs
        if solver in SOLVERS and not SOLVERS[solver].uses_steps:  # ode: its own steps
            steps = fingerprint["steps"] = None
        if out is None:
            extras = {k: v for k, v in fingerprint.items()  # the run's weights too: trained on,
                      if k not in ("solver", "steps", "seed", "seeds")  # they sample anew
                      and v != _UNSET.get(k, object())}
            if seeds is None and batch_size != default_batch:  # chunk k draws from (seed, k)
                extras["batch_size"] = batch_size
            if seeds is not None:
                extras["seeds"] = seeds
            stem = "samples" if problem is None else f"samples-{problem['method']}"
            out = path / samples_name(stem, solver=solver, steps=steps, n=n,
                                      seed=None if seeds is not None else seed, extras=extras)
        inputs += run_inputs(config)
        out = output_path(out, suffixes=(".npz",), inputs=inputs, replace=True)
        fig_path = None
        if is_image or shape == (2,):  # what samples_picture draws
            fig_path = output_path(Path(out).with_suffix(".png"), inputs=inputs, others=[out],
                                   replace=replace or out.exists())
        if images is not None:
            _check_images(images, is_image, [out, fig_path])
        ncol = model.num_classes if label == "all" else None
        keep = ((64 // ncol) * ncol if ncol and is_image else 64 if is_image
                else n if fig_path else 0)
        result = write_in_chunks(out, n, batch_size, draw, fingerprint, progress, keep=keep,
                                 replace=replace, ranks=ranks, steps=progress_steps(
                                     solver, steps, problem and problem["method_options"]))
        infos = result["info"]
        nfe, name = mean_nfe(infos), solver or problem["method"]
        if fig_path is not None and ranks.lead:
            plotting.save_figure(plotting.samples_picture(
                result["head"]["samples"], name, nfe, is_image=is_image, ncol=ncol,
                raw_scale=config.get("raw_scale", 1.0), raw_offset=config.get("raw_offset", 0.0),
                pixel_bits=config.get("pixel_bits"), **_beside(
                    config, shown, problem, None if embedding else label, ncol,
                    len(result["head"]["samples"]), shape)
                if is_image else {}), fig_path)
        record = {"run": str(path), "solver": solver, "steps": steps, "n": n, "nfe": nfe,
                  "eps": infos[0]["eps"], "time_s": round(sum(i["time_s"] for i in infos), 4),
                  "out": str(out), "figure": str(fig_path) if fig_path else None,
                  "options": solver_options,
                  "data_statistics": sorted(stats), "batch_size": batch_size,
                  "chunks": result["chunks"], "chunks_reused": result["chunks"] - result["drawn"]}
        if problem is not None:
            record.update(inverse=problem["method"], inverse_options=problem["method_options"])
        if images is not None:
            record["images"] = _save_images(images, out, config) if ranks.lead else str(images)
        return record, result


def _beside(config: dict, known, problem, label, ncol, rows: int, shape: tuple) -> dict:
    """What the picture of image samples shows beside them: the observation of the first
    ``rows`` (a mask's known values; the measured pixels of a selection ``A``, else the
    least-norm ``x`` with ``A x = y``; NaN where nothing is observed), a class name per column
    (``label="all"``) or the one class's."""
    extras, names = {}, config.get("class_names") or []
    if label == "all" and ncol:
        extras["columns"] = [names[k] if k < len(names) else str(k) for k in range(ncol)]
    elif label is not None:
        extras["label"] = f"class {names[int(label)] if int(label) < len(names) else label}"
    if known is not None and problem is None:
        mask, values = (_rows(a, slice(0, rows), rows, shape) for a in known)
        extras["observed"] = torch.where(mask.bool(), values.float(), float("nan")).numpy()
    elif problem is not None:
        a = torch.as_tensor(problem["A"], dtype=torch.float64)
        y = torch.as_tensor(problem["y"], dtype=torch.float64).reshape(-1, a.shape[0])
        y = y.expand(rows, -1) if y.shape[0] == 1 else y[:rows]
        flat = torch.full((len(y), a.shape[1]), float("nan"), dtype=torch.float64)
        if bool(((a == 0) | (a == 1)).all() and (a.sum(1) == 1).all()):  # a selection
            flat[:, a.argmax(1)] = y
        else:
            flat = LinearObservation(a, y, problem["noise_std"], shape).x_row
            extras["observed_title"] = "observed: least-norm x of A x = y"
        extras["observed"] = flat.reshape(len(y), *shape).float().numpy()
    return extras


def _check_images(images, is_image: bool, outputs=()) -> None:
    """``images`` may take the samples' PNGs: a run of images; a new folder, or an empty one
    (not a link), in a folder this process may write; none of ``outputs`` inside it."""
    if not is_image:
        raise OptionError("images", "is for runs of images; these samples are points")
    folder = Path(os.path.abspath(images))
    if folder.is_symlink() or (folder.exists() and not (folder.is_dir()
                                                         and not any(folder.iterdir()))):
        raise OptionError("images", f"{folder} exists and is not an empty folder; give a new one")
    parent = next(p for p in folder.parents if p.exists())
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OptionError("images", f"cannot write into {parent}")
    for out in outputs:
        if is_inside(os.path.abspath(out), folder):
            raise OptionError("images", f"{folder} would hold {out}, written beside the images; "
                                        "give the images a folder of their own")


def _save_images(images, out: Path, config: dict) -> str:
    """The samples of the file ``out`` as PNGs in the folder ``images``; returns its path."""
    with np.load(out) as f:
        samples, labels = torch.from_numpy(f["samples"]), f["labels"] if "labels" in f else None
    names = config.get("class_names") or []
    classes = None if labels is None or labels.dtype.kind == "f" else [
        names[k] if k < len(names) else str(k) for k in labels.tolist()]
    levels = sample_levels(samples, raw_scale=config.get("raw_scale", 1.0),
                           raw_offset=config.get("raw_offset", 0.0),
                           pixel_bits=config.get("pixel_bits"))
    save_images(images, levels, classes)
    return os.path.abspath(images)


def _chunk_draw(model, sde, config, dev, options, stats, seed, seeds, labels, guidance, known,
                problem=None):
    """``draw(k, start, stop)`` for :func:`~scoresde.sample_files.write_in_chunks`: samples
    ``start:stop``, from chunk ``k``'s generator or the samples' own seeds."""
    shape = tuple(config["data_shape"])
    solver_options = dict({k: options[k] for k in ("solver", "steps", "eps", "grid",
                                                    "denoise")}, **options["knobs"])

    def draw(k: int, start: int, stop: int, tick=None):
        rows = slice(start, stop)
        hook = tick  # a sampler's callback: one step more on the progress
        cond = None if labels is None else labels[rows]
        if cond is not None and problem is not None and problem["method"] == "smc":
            particles = problem["method_options"]["particles"]
            cond = cond.repeat_interleave(particles, 0)  # a row per particle
        begin = time.perf_counter()
        if problem is None and known is None:  # a latent run's latents come back decoded
            x, info, recorded = sample_chunk(model, sde, shape, k, start, stop, seed=seed,
                                             seeds=seeds, labels=cond, guidance=guidance,
                                             device=dev, callback=hook, **stats,
                                             **solver_options)
        else:  # observations and masks: no latent run has them
            randomness, recorded = chunk_randomness(k, start, stop, seed, seeds, dev)
            score = model if cond is None else classifier_free_guidance(model, cond, guidance)
            with torch.no_grad():
                if problem is not None:
                    x, info = _solve_chunk(score, sde, problem, options, rows, stop - start,
                                           shape, randomness["generator"], hook)
                else:
                    mask, values = (_rows(a, rows, stop - start, shape) for a in known)
                    x, info = impute(score, sde, values.to(dev), mask.to(dev), **solver_options,
                                     callback=hook, **randomness)
            x = x.cpu()  # finite: the samplers stop at the first non-finite step
        arrays = dict(samples=x.numpy(), raw=raw_values(x, config).numpy(), **recorded)
        if labels is not None:
            arrays["labels"] = labels[rows].numpy()
        return arrays, {"nfe": info["nfe"], "eps": info["eps"],
                        "time_s": time.perf_counter() - begin}

    return draw


def progress_steps(solver: str | None, steps: int | None,
                   method_options: dict | None = None) -> int | None:
    """The steps each chunk's progress counts: the grid's, for a solver that calls back after
    every step (times ``resample`` for repaint, which runs each segment that often); None (the
    chunks are counted) for one that integrates in a single call."""
    entry = SOLVERS.get(solver)
    if entry is None or not entry.per_step_hook:
        return None
    return steps * (method_options or {}).get("resample", 1)


def _solve_chunk(score, sde, problem, options, rows, count, shape, generator, callback=None):
    """Rows ``rows`` of the inverse problem, through ``solve_inverse``."""
    y = problem["y"]
    y = y[rows] if y.ndim == 2 and y.shape[0] > 1 else y.reshape(1, -1)
    keywords = dict(problem["method_options"], **options["knobs"])
    for k in ("solver", "steps"):
        if problem[k] is not None:
            keywords[k] = problem[k]
    try:
        return solve_inverse(score, sde, problem["A"], y, problem["noise_std"],
                             method=problem["method"], n=count, event_shape=shape,
                             eps=options["eps"], grid=options["grid"], generator=generator,
                             denoise=options["denoise"], callback=callback, **keywords)
    except ValueError as err:  # before anything is drawn: options the method refuses
        raise OptionError(None, one_line(err)) from None


def _rows(array, rows: slice, count: int, shape: tuple):
    """Rows ``rows`` of a mask or values array of shape ``shape`` or ``(N, *shape)``."""
    if array.ndim > len(shape) and array.shape[0] > 1:
        return array[rows].clone()
    return array.reshape(1, *shape).expand(count, *shape).clone()
