"""What per-sample seeds cost: noise draws, and whole samplers, against one batch generator.

Noise: ``steps x 2`` draws of shape ``(B, D)`` (a predictor's and a corrector's per step) from
one ``torch.Generator``, from :class:`PerSampleGenerator` with its default buffer and from
:class:`PerSampleGenerator` with ``chunk=1`` (one generator call per sample and draw, no
buffer). Samplers: ``em``, ``pc`` (reverse diffusion + ALD) and ``torchsde`` on the exact
score of the 2D ring, ``generator=`` against ``seeds=``.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/seeds.py           # about 2 minutes
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/seeds.py --quick   # 100 steps

Measured on a shared 2-core CPU, 1000 steps (seconds):

    noise       B=64 D=2   B=1000 D=2   B=64 D=784
    generator      0.016        0.047        0.740
    seeds          0.026        0.066        1.220
    chunk=1        0.581       10.132        1.413

    sampler     generator   seeds   (B=64)   generator   seeds   (B=1000)
    em              0.681   0.715                1.843   1.688
    pc (ald)        1.067   1.150                3.178   3.482
    torchsde        1.218   1.036                2.261   1.981

Adaptive torchsde (one Brownian interval per sample; not in this script): 0.38 s against
3.21 s at B=64, 0.55 s against 9.06 s at B=256 (100 first steps, rtol = atol = 1e-2).
"""

from __future__ import annotations

import argparse
import time

import torch

from scoresde import GaussianMixture, VPSDE
from scoresde.sampling import PerSampleGenerator, sample
from scoresde.sampling.common import randn


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def noise_costs(steps: int, cases) -> None:
    print(f"noise: {steps} steps x 2 draws of (B, D), seconds")
    print(f"{'B':>6} {'D':>6} {'generator':>10} {'seeds':>10} {'seeds chunk=1':>14}")
    for b, d in cases:
        sources = [torch.Generator().manual_seed(0), PerSampleGenerator(range(b)),
                   PerSampleGenerator(range(b), chunk=1)]
        times = [_timed(lambda: [randn((b, d), g) for _ in range(2 * steps)]) for g in sources]
        print(f"{b:>6} {d:>6} " + " ".join(f"{t:>10.3f}" for t in times[:2])
              + f" {times[2]:>14.3f}")


def sampler_costs(steps: int, batches) -> None:
    sde, target = VPSDE(), GaussianMixture.ring()
    score = target.score_fn(sde)
    runs = [("em", {}), ("pc", {"corrector": "ald"}), ("torchsde", {})]
    print(f"samplers: {steps} steps on the 2D ring, seconds")
    print(f"{'solver':>9} {'B':>6} {'generator':>10} {'seeds':>10} {'ratio':>6}")
    for solver, options in runs:
        for b in batches:
            one = _timed(lambda: sample(score, sde, (b, 2), solver=solver, steps=steps,
                                        generator=torch.Generator().manual_seed(0), **options))
            per = _timed(lambda: sample(score, sde, (b, 2), solver=solver, steps=steps,
                                        seeds=range(b), **options))
            print(f"{solver:>9} {b:>6} {one:>10.3f} {per:>10.3f} {per / one:>6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    steps = 100 if args.quick else 1000
    noise_costs(steps, [(64, 2), (1000, 2), (64, 784)])
    sampler_costs(steps, (64, 1000))


if __name__ == "__main__":
    main()
