"""What a task's record says: strict JSON, and plain lines of text.

The ``scoresde`` commands print these; a notebook user gets the same words for the same record.
"""

from __future__ import annotations

import json
import math

__all__ = ["strict_json", "train_lines", "likelihood_lines", "quality_lines", "samples_lines"]


def strict_json(record: dict) -> str:
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


def train_lines(path, result: dict) -> list[str]:
    """What a :func:`~scoresde.tasks.train_run` into ``path`` did, and the command to go on."""
    step = result["step"]
    if result["resumed_from"] == step:
        done = (f"{path} is already at step {step} of {step}: nothing to train; pass --steps N "
                f"(N > {step}) to train longer")
    else:
        done = (f"trained {step} steps in {result['train_time_s']:.1f} s (loss "
                f"{result['loss']:.4f}) into {path}")
    return [done, f"next: scoresde sample --run {path}"]


def likelihood_lines(r: dict, pixel_bits: int | None = None) -> list[str]:
    """A :func:`~scoresde.tasks.run_likelihood` record in words (``pixel_bits``: the run's
    8-bit images, if any)."""
    if "latent_nll_nats" in r:
        return [f"latent NLL {r['latent_nll_nats']:.4f} nats ({r['latent_nll_nats_per_dim']:.4f} "
                f"per latent dimension, {math.prod(r['latent_shape'])} dims; latents scaled by "
                f"{r['latent_scale']:.4g}; {r['n']} points, NFE {r['nfe']}, {r['time_s']:.1f} s)",
                f"reconstruction error {r['reconstruction_mse']:.5f} mean squared per entry "
                f"(RMS {r['reconstruction_rmse_raw']:.3f} on the raw pixel scale)",
                "not image bits/dim: the decoder is not invertible, the density is over latents"]
    what = "nats of the 8-bit levels, dequantised bound" if pixel_bits else "nats"
    lines = [f"log-likelihood {r['log_likelihood']:.4f} ± {r['standard_error']:.4f} {what} "
             f"({r['n']} points, NFE {r['nfe']}, {r['time_s']:.1f} s)"]
    if pixel_bits:
        lines.append(f"{r['bits_per_dim']:.4f} bits/dim ({pixel_bits}-bit levels, uniform "
                     "dequantisation: an upper bound)")
    elif "bits_per_dim" in r:
        lines.append(f"{r['bits_per_dim']:.4f} bits/dim (continuous density, raw pixel scale)")
    if "entropy" in r:
        lines.append(f"data entropy {r['entropy']:.4f} nats: gap {r['gap']:+.4f} nats")
    return lines


def quality_lines(r: dict, samples=None, reference: str | None = None) -> list[str]:
    """A :func:`~scoresde.tasks.run_fid` record in words, or with ``samples`` (the file) and
    ``reference`` (the data's name) a :func:`~scoresde.tasks.file_fid` one."""
    scores = (f"FID {r['fid']:.4f}   KID {r['kid']:.5f} +- {r['kid_se']:.5f}   "
              f"precision {r['precision']:.4f}   recall {r['recall']:.4f}")
    if samples is None:
        return [scores, f"N {r['n']} ({r['solver']}, {r['steps']} steps, NFE {r['nfe']:g}), seed "
                        f"{r['seed']}, reference {r['reference_n']} training images, features "
                        f"{r['features']}"]
    return [scores, f"N {r['n']} images of {samples} "
                    f"({'8-bit' if r['pixels'] else 'model values'}), KID subsets from seed "
                    f"{r['seed']}, reference {r['reference_n']} training images of {reference}, "
                    f"features {r['features']}"]


def samples_lines(record: dict, result: dict) -> tuple[list[str], list[str]]:
    """``(notes, lines)`` of a :func:`~scoresde.tasks.sample_run` or
    :func:`~scoresde.tasks.sample_cascade_run` call: a note whether the file was reused or
    continued (for stderr), then what was drawn and the files written (or found)."""
    notes = []
    out, figure = record["out"], record["figure"]
    if result["reused"]:
        notes.append(f"{out} already holds these samples (the same options): nothing drawn")
    elif result["drawn"] < result["chunks"]:
        notes.append(f"continued: {result['chunks'] - result['drawn']} of {result['chunks']} "
                     f"chunks were already drawn")
    if "nfe_sr" in record:
        what = (f"cascade: {record['n']} samples, NFE {record['nfe']} ({record['nfe_base']} + "
                f"{record['nfe_sr']})")
    else:
        what = f"{record['solver'] or record.get('inverse')}: {record['n']} samples, NFE " \
               f"{record['nfe']}"
    files = f"kept {out} (it holds these samples)" if result["reused"] else f"wrote {out}"
    if figure:
        files += f" and {'wrote ' if result['reused'] else ''}{figure}"
    if record.get("images"):
        files += f"; the samples as PNGs in {record['images']}"
    return notes, [f"{what}, {record['time_s']:.2f} s", files]
