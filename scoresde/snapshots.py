"""Sample grids while training: a look at what the EMA weights generate, every few steps.

Internal to the training loop (``train(sample_every=N)``). The draws come from a generator
seeded with the run's seed, so the pictures of different steps show the same prior draws
carried through better and better scores; they are float32 and never touch the training's own
random streams (the loop calls this inside a fork of torch's generators).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from .sampling import sample
from .sde import SDE

__all__ = ["SNAPSHOT_SOLVER", "SNAPSHOT_STEPS", "snapshot_size", "write_snapshot"]

# A cheap solver that gives recognisable samples in few score calls (docs/benchmarks/few-step.md).
SNAPSHOT_SOLVER, SNAPSHOT_STEPS = "dpmpp_2m", 16
_IMAGES, _POINTS = 64, 1000  # how many images (an 8 x 8 grid) or 2D points


def snapshot_size(event_shape, is_image: bool) -> int:
    """How many samples a grid shows: 64 images or 1000 points in 2D.

    Raises:
        ValueError: data that is neither images nor 2D points (nothing to draw).
    """
    if is_image:
        return _IMAGES
    if tuple(event_shape) == (2,):
        return _POINTS
    raise ValueError(f"sample_every draws images or 2D points; data of shape "
                     f"{tuple(event_shape)} is neither (leave sample_every off)")


@torch.no_grad()
def write_snapshot(model: nn.Module, sde: SDE, dataset, path: str | os.PathLike, *, seed: int,
                   device: torch.device, title: str = "EMA") -> str:
    """Draw from ``model`` (the EMA's score model, in eval mode meanwhile) and write a grid of
    images or a 2D scatter to ``path`` atomically; returns the path.

    Args:
        model: a score model ``model(x, t)``.
        sde: its forward SDE.
        dataset: the run's :class:`~scoresde.data.Dataset` (shape, kind, raw scale).
        path: the image file (PNG).
        seed: seeds the draws (the same at every step).
        device: where to sample.
        title: the picture's title (the solver and its score calls are added).
    """
    from . import plotting  # matplotlib loads only when a grid is drawn

    n = snapshot_size(dataset.event_shape, dataset.is_image)
    training = model.training
    model.eval()
    try:
        gen = torch.Generator(device=device).manual_seed(seed)
        x, info = sample(model, sde, (n, *dataset.event_shape), solver=SNAPSHOT_SOLVER,
                         steps=SNAPSHOT_STEPS, generator=gen, device=device)
    finally:
        model.train(training)
    name = f"{title} · {SNAPSHOT_SOLVER}"
    figure = plotting.samples_picture(x.float().cpu(), name, info["nfe"],
                                      is_image=dataset.is_image, raw_scale=dataset.raw_scale,
                                      raw_offset=dataset.raw_offset, pixel_bits=dataset.pixel_bits)
    return plotting.save_figure(figure, path)
