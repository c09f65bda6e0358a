"""Cascaded diffusion: a base model at low resolution, then super-resolution (Ho et al. 2021).

A super-resolution (SR) score model of images ``(C, H, W)`` is conditioned on the low-resolution
image ``(C, H / f, W / f)``, upsampled to ``(C, H, W)`` and given to the network as extra input
channels. Conditioning augmentation (Ho et al. 2021, "Cascaded diffusion models for high
fidelity image generation", section 3; they found it crucial): in training, the low-resolution
image is corrupted with Gaussian noise of a level ``a`` drawn per sample uniformly in
``[0, cond_aug]``, and ``a`` is given to the network, so that the SR model learns to repair the
base model's mistakes instead of trusting its input; at sampling, ``a`` is one fixed level, 0
unless asked.

The condition travels as one tensor ``y`` of shape ``(B, C + 1, H, W)``: the upsampled, noised
low-resolution image, then a constant channel holding ``a`` (see :func:`low_res_condition`). A
:class:`~scoresde.UNet` built with ``cond_channels = C`` reads it.

:func:`cascade` samples end to end: the base model with any solver, then the SR model with
any solver, conditioned on the base model's samples.
"""

from __future__ import annotations

import warnings

import torch

from .checks import check_int, check_number
from .images import downsample, upsample
from .sampling import sample

__all__ = ["low_res_condition", "training_condition", "cascade"]


def low_res_condition(low: torch.Tensor, factor: int, level: torch.Tensor,
                      noise: torch.Tensor | None = None) -> torch.Tensor:
    """The SR model's condition ``y`` ``(B, C + 1, f h, f w)`` from low-resolution images.

    Args:
        low: the low-resolution images ``(B, C, h, w)``.
        factor: the upsampling factor ``f``.
        level: the augmentation level ``a`` per sample, ``(B,)``.
        noise: ``N(0, I)`` of ``low``'s shape, scaled by ``a`` and added before upsampling;
            None for none (then every ``a`` must be 0).

    Returns:
        ``[upsample(low + a noise), a]``: the channels of the image, then a constant channel of
        ``a``.
    """
    a = level.to(low.dtype).reshape(-1, 1, 1, 1)
    noisy = low if noise is None else low + a * noise
    up = upsample(noisy, factor)
    return torch.cat([up, a.expand(-1, 1, *up.shape[2:])], dim=1)


def training_condition(x0: torch.Tensor, factor: int, cond_aug: float, n: int, mine: slice,
                       generator: torch.Generator) -> torch.Tensor:
    """``y`` for this rank's training images ``x0`` ``(b, C, H, W)``: downsampled by ``factor``,
    noised at levels ``a ~ U[0, cond_aug]`` drawn for the global batch of ``n`` (with the noise)
    from ``generator``, so that every rank draws the same; see :func:`low_res_condition`."""
    dev = x0.device
    low = downsample(x0, factor)
    level = cond_aug * torch.rand((n,), generator=generator, device=dev)
    noise = torch.randn((n, *low.shape[1:]), generator=generator, device=dev)
    return low_res_condition(low, factor, level[mine], noise[mine])


def _event_shape(model) -> tuple[int, ...]:
    net = getattr(model, "net", None)
    config = net.config() if net is not None and hasattr(net, "config") else {}
    if "event_shape" not in config:
        raise ValueError(f"cannot tell the image shape of {type(model).__name__}: cascade needs "
                         "ScoreModels whose networks have config()['event_shape']")
    return tuple(config["event_shape"])


def cascade(base, base_sde, sr, sr_sde, n: int, *, solver: str = "euler", steps: int = 100,
            sr_solver: str | None = None, sr_steps: int | None = None, aug_level: float = 0.0,
            generator: torch.Generator | None = None, device=None, base_options: dict | None = None,
            sr_options: dict | None = None, **renamed) -> tuple[torch.Tensor, dict]:
    """Sample a cascade: the base model, then the SR model conditioned on its samples.

    Args:
        base, base_sde: the low-resolution score model (``(B, C, h, w)``) and its SDE.
        sr, sr_sde: the super-resolution model (a :class:`~scoresde.ScoreModel` whose network
            has ``cond_channels = C``, ``(B, C, H, W)`` with ``H / h = W / w`` an integer) and
            its SDE.
        n: number of samples.
        solver, steps: the base stage's solver and steps (any of ``SAMPLERS``).
        sr_solver, sr_steps: the SR stage's; the base stage's when None.
        aug_level: the fixed conditioning-augmentation level ``a`` of the SR stage: the base
            samples are noised by ``a N(0, I)`` and ``a`` is given to the network (0: none).
        generator: one generator for both stages (the prior draws, the solvers, the
            augmentation noise), in that order.
        device: where to sample.
        base_options, sr_options: more keywords of :func:`~scoresde.sample` per stage
            (``base_knobs``, ``sr_knobs``: their former names, still taken, with a
            ``DeprecationWarning``).

    Returns:
        ``(x, info)``: images ``(n, C, H, W)``; ``info["nfe"]`` the score calls of both stages,
        ``info["base"]`` and ``info["sr"]`` each stage's info, ``info["low_res"]`` the base
        samples ``(n, C, h, w)``.

    Raises:
        ValueError: bad counts or levels, or models that do not fit together.
    """
    for old, new in (("base_knobs", "base_options"), ("sr_knobs", "sr_options")):
        if old in renamed:
            warnings.warn(f"cascade({old}=...) is now {new}=...", DeprecationWarning,
                          stacklevel=2)
            base_options, sr_options = ((renamed.pop(old), sr_options) if new == "base_options"
                                        else (base_options, renamed.pop(old)))
    if renamed:
        raise TypeError(f"cascade() got unexpected keyword arguments {', '.join(renamed)}")
    n = check_int("n", n, 1)
    aug_level = check_number("aug_level", aug_level, 0)
    low_shape, high_shape = _event_shape(base), _event_shape(sr)
    channels = int(getattr(sr, "cond_channels", 0))
    if channels != low_shape[0] or len(low_shape) != 3 or len(high_shape) != 3:
        raise ValueError(f"the SR model takes {channels} conditioning channels and images of "
                         f"{high_shape}; the base model gives {low_shape}")
    factor = high_shape[1] // low_shape[1]
    if factor * low_shape[1] != high_shape[1] or factor * low_shape[2] != high_shape[2]:
        raise ValueError(f"the SR model's {high_shape[1:]} is not an integer multiple of the "
                         f"base model's {low_shape[1:]}")
    low, base_info = sample(base, base_sde, (n, *low_shape), solver=solver, steps=steps,
                            generator=generator, device=device, **(base_options or {}))
    noise = None
    if aug_level > 0:
        noise = torch.randn(low.shape, generator=generator, device=low.device, dtype=low.dtype)
    y = low_res_condition(low, factor, torch.full((n,), aug_level, device=low.device), noise)
    x, sr_info = sample(lambda x, t: sr(x, t, y), sr_sde, (n, *high_shape),
                        solver=sr_solver or solver, steps=sr_steps or steps, generator=generator,
                        device=device, **(sr_options or {}))
    info = {"nfe": base_info["nfe"] + sr_info["nfe"], "base": base_info, "sr": sr_info,
            "low_res": low, "factor": factor, "aug_level": aug_level}
    return x, info
