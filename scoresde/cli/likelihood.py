"""``scoresde likelihood``: options to :func:`scoresde.tasks.run_likelihood`, and its lines."""

from __future__ import annotations

import math

import click

from .common import CTX, Default, LazyChoice, emit, pick_run, task


@click.command(context_settings=CTX)
@click.option("--run", default=None, metavar="DIR", help="Run folder [default: most recent].")
@click.option("--data", default=None, metavar="PATH",
              help="A .npy/.npz of points in model space [default: the run's held-out set].")
@click.option("--n", "n", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Number of held-out points (at most the set's size).")
@click.option("--divergence", type=LazyChoice("likelihood.DIVERGENCES"),
              default=Default("log_likelihood", "divergence"), show_default=True,
              help="auto: exact in low dimension.")
@click.option("--probes", type=click.IntRange(min=1), default=Default("log_likelihood", "probes"),
              show_default=True, help="Hutchinson probes.")
@click.option("--method", type=str, default=Default("log_likelihood", "method"),
              show_default=True, help="scipy solve_ivp method.")
@click.option("--rtol", type=click.FloatRange(min=0, min_open=True),
              default=Default("log_likelihood", "rtol"), show_default=True)
@click.option("--atol", type=click.FloatRange(min=0, min_open=True),
              default=Default("log_likelihood", "atol"), show_default=True)
@click.option("--eps", type=click.FloatRange(min=0, min_open=True),
              default=Default("log_likelihood", "eps"), show_default=True)
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

    from ..tasks import run_likelihood
    from ..utils import resolve_device

    resolve_device(device)  # before anything else: a device that is not there is bad input
    path = pick_run(run, quiet=as_json)
    record, about = task(run_likelihood, path, data=data, n=n, seed=seed, device=device,
                         divergence=divergence, probes=probes, method=method, rtol=rtol,
                         atol=atol, eps=eps, progress=not as_json)
    emit(record, as_json, _lines(record, about["pixel_bits"]))


def _lines(r: dict, bits: int | None) -> list[str]:
    """What a likelihood record says, in words (``bits``: the run's 8-bit images, if any)."""
    if "latent_nll_nats" in r:
        return [f"latent NLL {r['latent_nll_nats']:.4f} nats ({r['latent_nll_nats_per_dim']:.4f} "
                f"per latent dimension, {math.prod(r['latent_shape'])} dims; latents scaled by "
                f"{r['latent_scale']:.4g}; {r['n']} points, NFE {r['nfe']}, {r['time_s']:.1f} s)",
                f"reconstruction error {r['reconstruction_mse']:.5f} mean squared per entry "
                f"(RMS {r['reconstruction_rmse_raw']:.3f} on the raw pixel scale)",
                "not image bits/dim: the decoder is not invertible, the density is over latents"]
    what = "nats of the 8-bit levels, dequantised bound" if bits else "nats"
    lines = [f"log-likelihood {r['log_likelihood']:.4f} ± {r['standard_error']:.4f} {what} "
             f"({r['n']} points, NFE {r['nfe']}, {r['time_s']:.1f} s)"]
    if bits:
        lines.append(f"{r['bits_per_dim']:.4f} bits/dim ({bits}-bit levels, uniform "
                     "dequantisation: an upper bound)")
    elif "bits_per_dim" in r:
        lines.append(f"{r['bits_per_dim']:.4f} bits/dim (continuous density, raw pixel scale)")
    if "entropy" in r:
        lines.append(f"data entropy {r['entropy']:.4f} nats: gap {r['gap']:+.4f} nats")
    return lines
