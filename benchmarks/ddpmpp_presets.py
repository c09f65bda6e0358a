"""The networks' sizes and the CPU time of one training step, per network preset.

For each preset of ``scoresde.models.NET_PRESETS`` (and the U-Net that ``net="auto"`` builds for
images): its parameter count, and the median wall time of one optimizer step (forward, backward,
Adam) of the denoising score-matching loss through ``ScoreModel`` on random images of the
preset's resolution, after one warm-up step. The data loading and recording of the training loop
are not timed: this is the network's share of a step.

Usage::

    PYTHONPATH=$PWD python benchmarks/ddpmpp_presets.py [--threads 2] [--batch 128] [--steps 3]
    PYTHONPATH=$PWD python benchmarks/ddpmpp_presets.py --nets ddpmpp_cifar10 --batch 8
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from scoresde import VPSDE, ScoreModel
from scoresde.losses import dsm_loss
from scoresde.models import NET_PRESETS, build_net, resolve_net
from scoresde.hardware import count_params

SHAPES = {"unet": (1, 8, 8), "ddpmpp_small8": (1, 8, 8), "ddpmpp_small16": (3, 16, 16),
          "ddpmpp_small32": (3, 32, 32), "ddpmpp_cifar10": (3, 32, 32),
          "ddpmpp_cifar10_deep": (3, 32, 32)}


def step_times(net_name: str, batch: int, steps: int) -> tuple[int, list[float]]:
    """``(parameters, seconds of each timed step)`` of the network ``net_name``."""
    shape = SHAPES[net_name]
    name, params = resolve_net(net_name)
    net = build_net({"name": name, "event_shape": list(shape), **params})
    model = ScoreModel(net, VPSDE())
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(batch, *shape, generator=gen)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = dsm_loss(model, model.sde, x0, generator=gen).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return count_params(net), times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", nargs="+", default=["unet", *(n for n in NET_PRESETS
                                                                if "small" in n)])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"| network | image | parameters | s/step (batch {args.batch}, {args.threads} threads) |")
    print("| --- | --- | ---: | ---: |")
    for net_name in args.nets:
        count, times = step_times(net_name, args.batch, args.steps)
        shape = "x".join(map(str, SHAPES[net_name]))
        print(f"| {net_name} | {shape} | {count:,} | {statistics.median(times):.3f} |")


if __name__ == "__main__":
    main()
