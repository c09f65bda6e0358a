"""The likelihood of held-out data under a run: what ``scoresde likelihood`` does, as one
function.

:func:`run_likelihood` reads the run's held-out points (or a file of points), and gives the mean
log-likelihood in nats with its standard error through the probability-flow ODE; for a run on
8-bit images the bound of :func:`~scoresde.bits_per_dim` on the levels' log-probability and
its bits/dim; for images in model values the density's bits/dim on the raw pixel scale; the gap
to the data's entropy where it is known (the 2D toys); and for a latent run the density of its
latents with the autoencoder's reconstruction error (never image bits/dim).
"""

from __future__ import annotations

import math
import time

import torch

from ..checks import OptionError
from ..data import DATA_OPTIONS, get_dataset, load_run_array, run_dataset
from ..distributed import Ranks, joined
from ..likelihood import RowsOf, bits_per_dim, log_likelihood
from ..progress import Progress
from ..utils import keyword_default, make_generator, resolve_device
from .sampling import load_sampler

__all__ = ["run_likelihood"]


def run_likelihood(run, *, data=None, n: int = 1000, seed: int = 0, device="cpu",
                   progress: bool = True, **options) -> tuple[dict, dict]:
    """The log-likelihood of ``n`` held-out points (or of the points of the file ``data``, in
    model space) under the run folder ``run``'s EMA model.

    ``options`` are :func:`~scoresde.log_likelihood`'s keywords (``divergence``, ``probes``,
    ``method``, ``rtol``, ``atol``, ``eps``; its defaults where not given); ``seed`` seeds the
    Hutchinson probes; ``progress`` shows the flow's time reached on stderr
    (:mod:`scoresde.progress`). Returns ``(record, about)``: ``about["pixel_bits"]`` says
    whether the number is a bound on 8-bit levels (the run's bits) or a density (None); the
    record is what the command prints: ``log_likelihood`` (nats, mean),
    ``standard_error``, ``n``, ``nfe``, ``time_s``, ``divergence``, and where they apply
    ``bits_per_dim``, ``entropy`` and ``gap``; for a latent run ``latent_nll_nats`` and the
    reconstruction error instead.

    Raises:
        OptionError: a run without data of its own and no ``data``, or points of another shape.
    """
    with joined(resolve_device(device)) as (ranks, dev):
        model, sde, config = load_sampler(run, dev)
        with Progress(sde.T, unit="t", desc="likelihood", enabled=progress and ranks.lead) as bar:
            return _run_likelihood(run, model, sde, config, data, n, seed, dev,
                                   dict(options, callback=_shown_on(bar)), ranks)


def _shared(ranks: Ranks, points: torch.Tensor, seed: int, dev, solve):
    """``solve(x, generator)`` on this rank's block of ``points`` (all of them in one process),
    each point's probes and noise those the whole batch would give it (:class:`RowsOf`):
    ``(values, nfe)`` of every point in order, and the largest rank's score calls, on every
    rank. ``values`` is a tuple of ``(B,)`` tensors."""
    generator = make_generator(seed, dev)
    if ranks.world == 1:
        return solve(points, generator)
    rows = torch.arange(len(points)).tensor_split(ranks.world)[ranks.rank]
    values, nfe, error = None, 0, None
    try:
        if len(rows):
            values, nfe = solve(points[rows.to(points.device)],
                                RowsOf(generator, len(points), rows))
            values = tuple(v.detach().cpu() for v in values)
    except Exception as err:
        error = err
    ranks.agree(error)
    shares = [s for s in ranks.gather((values, nfe)) if s[0] is not None]
    joined_values = tuple(torch.cat([s[0][i] for s in shares]) for i in range(len(shares[0][0])))
    return joined_values, max(s[1] for s in shares)


def _shown_on(bar: Progress):
    """A :func:`~scoresde.log_likelihood` callback showing the latest time reached on ``bar``."""
    def show(info: dict) -> None:
        if info["t"] > bar.n:
            bar.set(info["t"], postfix=f"nfe={info['nfe']}")

    return show


def _run_likelihood(run, model, sde, config, data, n, seed, dev, ode_options, ranks):
    divergence = ode_options.get("divergence", keyword_default(log_likelihood, "divergence"))
    about = {"pixel_bits": config.get("pixel_bits")}
    if config.get("latent"):
        return _latent_likelihood(model, sde, run, config, data, n, ode_options, seed,
                                  ranks), about
    shape = tuple(config["data_shape"])
    dataset = None
    if data is None and config.get("data") is None:
        raise OptionError(None, f"run {run} has no data set of its own (it was converted): "
                                "give --data")
    if data is None:
        dataset = run_dataset(config)
        x = dataset.test[:n]
    else:
        x = load_run_array(data, config)[:n]
    if tuple(x.shape[1:]) != shape:
        where = f" in {data}" if data is not None else ""
        raise OptionError("data", f"points of shape {tuple(x.shape[1:])}{where} do not match "
                                  f"the run's data shape {shape}")

    def solve(points, generator):
        logp, info, bpd = _log_likelihood(model, sde, points, config,
                                          dict(ode_options, generator=generator))
        return (logp,) if bpd is None else (logp, bpd), info["nfe"]

    start = time.perf_counter()
    (logp, *bpd), nfe = _shared(ranks, x.to(dev), seed, dev, solve)
    bpd = bpd[0] if bpd else None
    seconds = time.perf_counter() - start
    count, dim = len(logp), math.prod(shape)
    mean = float(logp.mean())
    sem = float(logp.std() / math.sqrt(count)) if count > 1 else float("nan")
    record = {"run": str(run), "n": count, "log_likelihood": mean, "standard_error": sem,
              "nfe": nfe, "time_s": round(seconds, 4), "divergence": divergence}
    if bpd is not None:
        record["bits_per_dim"] = float(bpd.double().mean())
    elif config.get("is_image"):  # per dimension, on the raw pixel scale (density)
        raw_logp = mean - dim * math.log(config.get("raw_scale", 1.0))
        record["bits_per_dim"] = -raw_logp / (dim * math.log(2))
    entropy = dataset.entropy if dataset is not None else None
    if entropy is not None:
        record["entropy"] = entropy
        record["gap"] = -mean - entropy
    return record, about


def _latent_likelihood(model, sde, run, config, data, n, ode_options, seed, ranks):
    """A latent run's record: the NLL of the scaled latents of held-out images (a density over
    latents, labelled so, never image bits/dim) and the reconstruction error."""
    if data is None:
        x = get_dataset(config["data"], **{k: config[k] for k in DATA_OPTIONS if k in config}
                        ).test[:n]
    else:
        x = load_run_array(data, config)[:n]
    shape = tuple(model.autoencoder.config()["event_shape"])
    if tuple(x.shape[1:]) != shape:
        raise OptionError("data", f"images of shape {tuple(x.shape[1:])} do not match the "
                                  f"autoencoder's {shape}")
    dev = next(model.net.parameters()).device
    with torch.no_grad():
        z = model.encode(x.to(dev))
        mse = model.reconstruction_error(x.to(dev)).double().cpu()
    def solve(points, generator):
        logp, info = log_likelihood(model, sde, points, generator=generator, **ode_options)
        return (logp,), info["nfe"]

    start = time.perf_counter()
    (logp,), nfe = _shared(ranks, z, seed, dev, solve)
    seconds = time.perf_counter() - start
    dim, nll = math.prod(z.shape[1:]), float(-logp.double().mean())
    scale, raw = config["latent_scale"], config.get("raw_scale", 1.0)
    return {"run": str(run), "n": len(z), "latent_nll_nats": nll,
            "latent_nll_nats_per_dim": nll / dim, "latent_shape": list(z.shape[1:]),
            "latent_scale": scale, "reconstruction_mse": float(mse.mean()),
            "reconstruction_rmse_raw": math.sqrt(float(mse.mean())) * raw,
            "nfe": nfe, "time_s": round(seconds, 4),
            "note": "a density over the autoencoder's scaled latents, not over images: "
                    "no image bits/dim exists for a latent model"}


def _log_likelihood(model, sde, x, config: dict, ode_options: dict):
    """``(logp, info, bpd)``: for a run on 8-bit images, :func:`scoresde.bits_per_dim` of the
    levels of ``x`` (``logp`` its bound on their log-probability, nats); otherwise the
    density's :func:`scoresde.log_likelihood` of ``x`` and ``bpd`` None."""
    bits = config.get("pixel_bits")
    if not bits:
        logp, info = log_likelihood(model, sde, x, **ode_options)
        return logp.double().cpu(), info, None
    scale, offset = config["raw_scale"], config["raw_offset"]
    raw = x * scale + offset
    if not torch.equal(raw, raw.round()):
        raise OptionError("data", f"this run is on {bits}-bit images: --data must hold them "
                                  "(uint8 arrays of rank 3 or 4)")
    # the model range whose bins of width 1 / scale are centred on the levels 0 .. 2^bits - 1
    data_range = ((-0.5 - offset) / scale, (2**bits - 0.5 - offset) / scale)
    bpd, info = bits_per_dim(model, sde, raw.round().long(), bits=bits, data_range=data_range,
                             **ode_options)
    return info["log_prob_bound"].double().cpu(), info, bpd.cpu()
