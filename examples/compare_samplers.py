"""Samplers against an exact target: quality against NFE on a Gaussian mixture, with a figure.

The score is exact, so the only error is the solver's. Quality: the mean exact log-density of
the samples minus that of true samples of the same size (0 is perfect; the noise of the
difference is about 0.05 nats at 4000 points).

    python examples/compare_samplers.py [--quick] [--mixture ring|grid|narrow]
"""

import argparse

import torch

import scoresde
from scoresde import plotting

parser = argparse.ArgumentParser()
parser.add_argument("--mixture", default="ring", choices=list(scoresde.MIXTURES))
parser.add_argument("--sde", default="vp", choices=list(scoresde.SDES))
parser.add_argument("--quick", action="store_true")
parser.add_argument("--out", default="compare_samplers.png")
args = parser.parse_args()

target, sde = scoresde.get_mixture(args.mixture), scoresde.get_sde(args.sde)
n = 500 if args.quick else 4000
ref = target.log_prob(target.sample(n, torch.Generator().manual_seed(1))).mean()
plan = [("em", 100), ("pc", 100), ("ode", 1), ("euler", 20), ("heun", 10), ("dpmpp_2m", 10)]
samples, nfe, notes = {}, {}, {}
for solver, steps in plan:
    x, info = scoresde.sample(target.score_fn(sde), sde, (n, 2), solver=solver, steps=steps,
                              generator=torch.Generator().manual_seed(0))
    gap = float(target.log_prob(x).mean() - ref)
    samples[solver], nfe[solver], notes[solver] = x, info["nfe"], f"Δ {gap:+.2f}"
    print(f"{solver:>9}: NFE {info['nfe']:5d}, mean log p minus truth {gap:+.3f} nats")
fig = plotting.samples_figure(samples, nfe, data=target.sample(n), notes=notes)
print("wrote", plotting.save_figure(fig, args.out))
