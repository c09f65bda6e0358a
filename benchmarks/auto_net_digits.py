"""U-Net against the small DDPM++ on scikit-learn's digits: the same training, held-out losses.

Each network is trained by ``scoresde.train`` on ``digits`` with the same steps, batch, seed and
the library's other defaults (what ``net="auto"`` would get), timed. Then the EMA model's
denoising score-matching loss on the held-out digits, with ``sigma2`` weighting (the training
objective) and with ``likelihood`` weighting (whose mean bounds the negative log-likelihood up
to a constant shared by both networks), over ``--draws`` fixed draws of times and noise per
image, the same draws for both networks: the difference is paired.

Usage::

    PYTHONPATH=$PWD python benchmarks/auto_net_digits.py [--steps 400] [--batch 64] \
        [--nets unet ddpmpp_small8] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time

import torch

import scoresde
from scoresde.data import get_dataset
from scoresde.losses import dsm_loss
from scoresde.hardware import count_params


def held_out_loss(model, sde, x, weighting: str, draws: int) -> torch.Tensor:
    """Per image mean loss over ``draws`` fixed draws of ``(t, noise)``, shape ``(N,)``."""
    gen = torch.Generator().manual_seed(123)
    total = torch.zeros(x.shape[0])
    with torch.no_grad():
        for _ in range(draws):
            total += dsm_loss(model, sde, x, weighting=weighting, t_sampling="uniform",
                              generator=gen)
    return total / draws


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", nargs="+", default=["unet", "ddpmpp_small8"])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--draws", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-options", default="{}", help="JSON keywords for train()")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    extra = json.loads(args.train_options)
    test = get_dataset("digits").test
    losses = {}
    for net in args.nets:
        with tempfile.TemporaryDirectory() as run:
            start = time.perf_counter()
            scoresde.train(run, data="digits", net=net, steps=args.steps,
                           batch_size=args.batch, progress=False, **extra)
            seconds = time.perf_counter() - start
            model, sde, config = scoresde.load_run(run)
        model.eval()
        count = count_params(model.net)
        losses[net] = {w: held_out_loss(model, sde, test, w, args.draws)
                       for w in ("sigma2", "likelihood")}
        print(f"{net}: {count:,} parameters, {seconds:.0f} s for {args.steps} steps; held-out "
              + ", ".join(f"{w} {v.mean():.4f}" for w, v in losses[net].items()), flush=True)
    first, *others = args.nets
    for net in others:
        for w in ("sigma2", "likelihood"):
            diff = losses[net][w] - losses[first][w]
            print(f"{net} - {first} ({w}): {diff.mean():+.4f} +- "
                  f"{diff.std() / math.sqrt(diff.numel()):.4f} (paired, {diff.numel()} images)")


if __name__ == "__main__":
    main()
