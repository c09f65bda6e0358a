"""A cascade's samples into a file: what ``scoresde sample --cascade`` does, as one function."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .. import plotting
from ..cascade import cascade
from ..checks import OptionError
from ..distributed import joined
from ..outputs import samples_name
from ..sample_files import SAMPLE_BATCH, chunk_generator, write_in_chunks
from ..sampling import sample
from ..utils import keyword_default, one_line, resolve_device
from .sampling import (load_sampler, mean_nfe, output_path, raw_values, run_identity,
                       run_inputs)

__all__ = ["sample_cascade_run"]


def sample_cascade_run(base_run, sr_run, out=None, *, solver: str | None = None,
                       steps: int | None = None, sr_solver: str | None = None,
                       sr_steps: int | None = None, aug_level: float | None = None,
                       solver_options: dict | None = None, n: int | None = None,
                       seed: int = 0, batch_size: int | None = None, device="cpu",
                       replace: bool = False, progress: bool = True) -> tuple[dict, dict]:
    """A cascade's samples into ``out``: ``base_run`` with ``solver``/``steps``, then the
    super-resolution run ``sr_run`` conditioned on them (:func:`~scoresde.cascade`), chunk by
    chunk as :func:`sample_run` draws (chunk ``k`` from ``(seed, k)``, resumed after a kill),
    with the progress of the chunks on stderr unless ``progress=False``; under ``torchrun``
    the ranks share the chunks, as :func:`sample_run`'s.

    Returns:
        ``(record, result)`` as :func:`sample_run`.
    """
    asked = resolve_device(device)  # under torchrun each rank's own GPU: the files are alike
    with joined(asked) as (ranks, dev):  # under torchrun: this rank's share of the chunks
        runs = (Path(base_run), Path(sr_run))
        solver = keyword_default(sample, "solver") if solver is None else solver
        steps = keyword_default(sample, "steps") if steps is None else steps
        aug_level = keyword_default(cascade, "aug_level") if aug_level is None else aug_level
        (base, base_sde, base_config), (sr, sr_sde, config) = (load_sampler(p, dev) for p in runs)
        _check_cascade(runs, base, base_config, sr, config)
        options = dict(solver_options or {})
        stages = dict(solver=solver, steps=steps, sr_solver=sr_solver, sr_steps=sr_steps,
                      aug_level=aug_level, base_options=options,
                      sr_options=options if sr_solver in (None, solver) else {})
        n, batch_size = n or 64, batch_size or SAMPLE_BATCH["image"]
        draw = _cascade_draw(base, base_sde, sr, sr_sde, config, stages, seed, dev)
        fingerprint = dict(_manifest_names(stages), cascade=[run_identity(base), run_identity(sr)],
                           device=str(asked), seed=seed)
        if out is None:  # the stages' solvers, steps and level, then the rest as a hash
            stem = f"cascade-{solver}-{steps}"
            if sr_solver is not None or sr_steps is not None:
                stem += f"-sr-{sr_solver or solver}-{sr_steps or steps}"
            if aug_level:
                stem += f"-aug{aug_level:g}"
            extras = {k: v for k, v in fingerprint.items() if k not in ("solver", "steps", "seed")}
            if batch_size != SAMPLE_BATCH["image"]:
                extras["batch_size"] = batch_size
            out = runs[1] / samples_name(stem, solver=None, steps=None, n=n, seed=seed,
                                         extras=extras)
        inputs = [*runs, *run_inputs(base_config), *run_inputs(config)]
        out = output_path(out, suffixes=(".npz",), inputs=inputs, replace=True)
        fig_path = output_path(out.with_suffix(".png"), inputs=inputs, others=[out],
                               replace=replace or out.exists())
        result = write_in_chunks(out, n, batch_size, draw, fingerprint, progress, keep=64,
                                 replace=replace, ranks=ranks)
        infos = result["info"]
        nfe_base, nfe_sr = mean_nfe(infos, "nfe_base"), mean_nfe(infos, "nfe_sr")
        nfe = round(nfe_base + nfe_sr, 1)  # the stages' means as shown (an int stays an int)
        if ranks.lead:
            plotting.save_figure(plotting.samples_picture(
                result["head"]["samples"], "cascade", nfe, is_image=True,
                raw_scale=config.get("raw_scale", 1.0), raw_offset=config.get("raw_offset", 0.0),
                pixel_bits=config.get("pixel_bits")), fig_path)
        record = {"cascade": [str(r) for r in runs], "n": n, "nfe": nfe, "nfe_base": nfe_base,
                  "nfe_sr": nfe_sr, "aug_level": infos[0]["aug_level"],
                  "time_s": round(sum(i["time_s"] for i in infos), 4), "out": str(out),
                  "figure": str(fig_path), "batch_size": batch_size, "chunks": result["chunks"],
                  "chunks_reused": result["chunks"] - result["drawn"]}
        return record, result


def _check_cascade(runs, base, base_config, sr, config) -> None:
    """A base run and a super-resolution run trained for its resolution."""
    for path, run_config in zip(runs, (base_config, config)):
        if len(run_config["data_shape"]) != 3:  # a cascade raises the resolution of images
            raise OptionError("cascade", f"{path} is not a run on images (C, H, W); its data "
                                         f"have shape {tuple(run_config['data_shape'])}")
    if not getattr(sr, "cond_channels", 0):
        raise OptionError("cascade", f"{runs[1]} is not a super-resolution run (train it with "
                                     "--super-res)")
    if getattr(base, "cond_channels", 0):
        raise OptionError("cascade", f"{runs[0]} is a super-resolution run; the base run of a "
                                     "cascade is an ordinary one")
    low, high = base_config["data_shape"][1:], config["data_shape"][1:]
    if [side * config["super_res"] for side in low] != high:  # the factor it was trained for
        raise OptionError("cascade", f"{runs[1]} was trained to raise "
                                     f"{high[0] // config['super_res']} pixels to {high[0]} "
                                     f"(--super-res {config['super_res']}); {runs[0]} samples "
                                     f"{low[0]}x{low[1]}")


def _manifest_names(stages: dict) -> dict:
    """The stages as sample files name them (the stages' solver options were once "knobs")."""
    return {{"base_options": "base_knobs", "sr_options": "sr_knobs"}.get(k, k): v
            for k, v in stages.items()}


def _cascade_draw(base, base_sde, sr, sr_sde, config, stages, seed, dev):
    """``draw(k, start, stop)`` for :func:`~scoresde.sample_files.write_in_chunks`: a cascade's
    samples ``start:stop`` from chunk ``k``'s generator, with their low-resolution stage."""
    def draw(k: int, start: int, stop: int):
        begin = time.perf_counter()
        try:
            with torch.no_grad():
                x, info = cascade(base, base_sde, sr, sr_sde, stop - start, device=dev,
                                  generator=chunk_generator(seed, k, dev), **stages)
        except ValueError as err:  # before anything is drawn: the models do not fit
            raise OptionError(None, one_line(err)) from None
        x = x.cpu()
        arrays = dict(samples=x.numpy(), low_res=info["low_res"].cpu().numpy(),
                      raw=raw_values(x, config).numpy())
        return arrays, {"nfe": info["nfe"], "nfe_base": info["base"]["nfe"],
                        "nfe_sr": info["sr"]["nfe"], "aug_level": info["aug_level"],
                        "time_s": time.perf_counter() - begin}

    return draw
