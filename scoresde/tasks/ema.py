"""Choosing the EMA after training: what ``scoresde ema`` does, as functions.

A run trained with ``ema_profiles`` stores snapshots of power-function EMAs
(:mod:`scoresde.phema`). :func:`ema_run` writes the average of any relative length as a run
folder of its own, which ``sample``, ``fid`` and ``likelihood`` take as any run;
:func:`sweep_ema` measures a range of lengths, each by the ``fid`` or ``likelihood`` task
(:func:`~scoresde.tasks.run_fid`, :func:`~scoresde.tasks.run_likelihood`) on such a folder,
beside the run's classic EMA, and marks the best.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from ..checks import OptionError
from ..phema import check_sigma_rels
from ..runs import (CHECKPOINT, ema_weights, is_run, load_checkpoint, read_config,
                    save_checkpoint, upgrade_config, write_config)

__all__ = ["METRICS", "ema_run", "parse_sweep", "sweep_ema"]

# The forms of a sweep's lengths, as a refusal names them.
SWEEP_FORMS = "LOW:HIGH:K (K >= 2 lengths, LOW < HIGH) or S1,S2,... (one length or more)"

# What a sweep measures: the record's key of each task, and whether more is better.
METRICS = {"fid": ("fid", False), "likelihood": ("log_likelihood", True)}


def _sigma_rel(value) -> float:
    try:
        return check_sigma_rels("sigma_rel", value)[0]
    except (TypeError, ValueError) as err:
        raise OptionError("sigma_rel", str(err)) from None


def ema_run(run: str | os.PathLike, out: str | os.PathLike, sigma_rel: float) -> dict:
    """Write the run folder ``out``: the run's config and a checkpoint whose EMA is the
    power-function EMA of relative std ``sigma_rel`` at the run's last EMA snapshot
    (:func:`~scoresde.runs.ema_weights`) and whose raw weights are the run's last ones.

    The folder samples and is measured as any run (``load_run(out)`` gives the average); it
    holds no optimizer state, so it is not trained on. Its config says where it came from
    under ``source``. It is written in a temporary folder beside ``out`` and renamed into
    place, so ``out`` is there whole or not at all.

    Returns:
        ``{"run", "out", "sigma_rel", "step", "tracked", "snapshots", "kernel_error"}``.

    Raises:
        OptionError: a bad ``sigma_rel``; ``run`` without EMA snapshots; ``out`` that exists
            and is not an empty folder, lies inside a run folder or below a file.
    """
    sigma_rel = _sigma_rel(sigma_rel)
    out = Path(out)
    _check_out(out)
    try:
        weights, info = ema_weights(run, sigma_rel)
    except ValueError as err:
        raise OptionError("run", str(err)) from None
    state = load_checkpoint(os.path.join(run, CHECKPOINT), map_location="cpu")
    ema = {f"module.{k}": v for k, v in {**state["model"], **weights}.items()}
    ema["n_averaged"] = state["ema"].get("n_averaged", state["step"])
    config = read_config(run)
    config.pop("run_dir", None)
    config["source"] = {"format": "post-hoc EMA", "run": os.path.abspath(run),
                        "sigma_rel": sigma_rel, "step": info["step"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{secrets.token_hex(6)}-{out.name}"  # renamed into place whole
    tmp.mkdir()  # the permissions any new folder gets
    try:
        save_checkpoint(tmp / CHECKPOINT, {"step": info["step"], "model": state["model"],
                                           "ema": ema})
        write_config(tmp, config)
        os.rename(tmp, out)  # onto nothing, or onto an empty folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"run": str(run), "out": str(out), **info}


def _check_out(out: Path) -> None:
    """Refuse ``out`` unless it is a new or empty folder outside any run folder, below a
    folder (or below folders to be made)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OptionError("out", f"{out} already exists{' as a run' if is_run(out) else ''}: "
                                 "give a new folder")
    for parent in Path(os.path.abspath(out)).parents:
        if parent.exists() and not parent.is_dir():
            raise OptionError("out", f"{out}: {parent} is a file, not a folder")
        if is_run(parent):
            raise OptionError("out", f"{out} is inside the run folder {parent}: give a folder "
                                     "outside any run")


def _check_images(run) -> None:
    """Refuse a FID sweep of a run whose samples are not images, before anything is written."""
    config = upgrade_config(read_config(run))
    images = upgrade_config(read_config(config["latent"])) if config.get("latent") else config
    if not images.get("is_image"):
        raise OptionError("metric", f"FID needs a run of images; {run} was trained on data of "
                                    f"shape {tuple(images['data_shape'])}: give --metric "
                                    "likelihood")


def parse_sweep(text: str) -> list[float]:
    """``"LOW:HIGH:K"`` as ``K`` evenly spaced relative lengths from ``LOW`` to ``HIGH``, or
    ``"S1,S2,..."`` as those.

    Raises:
        OptionError: not of either form, or lengths outside ``(0,
            scoresde.phema.SIGMA_REL_MAX]``.
    """
    try:
        if ":" in text:
            low, high, k = text.split(":")
            if int(k) < 2 or not float(low) < float(high):
                raise ValueError
            values = np.linspace(float(low), float(high), int(k)).round(6).tolist()
        else:
            values = [float(part) for part in text.split(",") if part.strip()]
        if not values:
            raise ValueError
    except ValueError:
        raise OptionError("sweep", f"{text!r} is not {SWEEP_FORMS}") from None
    try:
        return check_sigma_rels("sweep", values)
    except (TypeError, ValueError) as err:
        raise OptionError("sweep", str(err)) from None


def sweep_ema(run: str | os.PathLike, sigma_rels, *, metric: str = "fid",
              classic: bool = True, figure: str | os.PathLike | None = None,
              say: Callable[[str], None] | None = None, **options) -> dict:
    """Measure the run's post-hoc EMA at each relative length of ``sigma_rels`` (and its
    classic EMA) by ``metric``: ``"fid"`` (:func:`~scoresde.tasks.run_fid` with ``options``,
    the ``fid`` command's defaults otherwise) or ``"likelihood"`` (the held-out
    log-likelihood of :func:`~scoresde.tasks.run_likelihood` with ``options``). Each average
    is written by :func:`ema_run` into a temporary run folder, measured and removed.

    ``figure``: a path to draw the metric against the length into
    (:func:`~scoresde.plotting.ema_sweep_figure`). ``say`` is told each length's result.

    Returns:
        ``{"run", "metric", "key", "rows": [{"sigma_rel", KEY, "kernel_error", "record"}],
        "best": {"sigma_rel", KEY}, "classic": {KEY, "record"} or None, "figure"}`` where
        ``KEY`` is ``"fid"`` or ``"log_likelihood"``; ``best`` is None when every length
        measured NaN (a NaN is never the best).

    Raises:
        OptionError: an unknown ``metric``, ``"fid"`` for a run not of images, no lengths; the
            classic EMA's measure fails before any length is measured.
    """
    from . import run_fid, run_likelihood

    if metric not in METRICS:
        raise OptionError("metric", f"metric must be one of {', '.join(METRICS)}, not "
                                    f"{metric!r}")
    key, higher = METRICS[metric]
    sigma_rels = check_sigma_rels("sweep", sigma_rels)
    if not sigma_rels:
        raise OptionError("sweep", f"no lengths to measure: give {SWEEP_FORMS}")

    def measure(folder) -> dict:
        record = (run_fid(folder, say=say, **options) if metric == "fid" else
                  run_likelihood(folder, **options)[0])
        if key not in record:  # a latent run's likelihood is its latents'
            raise OptionError("metric", f"the {metric} of {run} has no {key!r}")
        return record

    if metric == "fid":
        _check_images(run)
    base = None
    if classic:  # first: a metric the run cannot give fails before any length is measured
        record = measure(run)
        base = {key: record[key], "record": record}
    rows = []
    with tempfile.TemporaryDirectory(prefix="scoresde-ema-") as tmp:
        for i, sigma_rel in enumerate(sigma_rels):
            folder = Path(tmp) / f"ema-{i}"
            made = ema_run(run, folder, sigma_rel)
            record = measure(folder)
            shutil.rmtree(folder)
            rows.append({"sigma_rel": sigma_rel, key: record[key],
                         "kernel_error": made["kernel_error"], "record": record})
            if say is not None:
                say(f"sigma_rel {sigma_rel:.4g}: {key} {record[key]:.4f}")
    values = [row[key] for row in rows]
    finite = not np.isnan(np.asarray(values, dtype=float)).all()  # a NaN is never the best
    best = (int(np.nanargmax(values) if higher else np.nanargmin(values)) if finite else None)
    result = {"run": str(run), "metric": metric, "key": key, "rows": rows,
              "best": None if best is None else {"sigma_rel": rows[best]["sigma_rel"],
                                                 key: values[best]},
              "classic": base, "figure": None}
    if figure is not None:
        from ..plotting import ema_sweep_figure, save_figure

        fig = ema_sweep_figure(sigma_rels, values, key, best=best,
                               classic=None if base is None else base[key],
                               title=f"{Path(run).name}: {metric} by EMA length")
        result["figure"] = save_figure(fig, figure)
    return result
