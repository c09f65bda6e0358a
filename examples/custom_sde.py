"""Your own SDE in every sampler: an Ornstein-Uhlenbeck process, with the exact mixture score.

A subclass states f(t), g(t) and (m(t), s(t)); every sampler asks only for those, so it runs
with each of them. The exact score of a Gaussian mixture diffused by this SDE makes the check
exact: each sampler's samples are scored by the target's true log-density.

    python examples/custom_sde.py [--quick]
"""

import argparse

import torch

import scoresde


class OrnsteinUhlenbeck(scoresde.SDE):
    """dx = -x dt + sqrt(2) dw on [0, 5]: m(t) = e^-t, s(t)^2 = 1 - e^-2t."""

    name = "ou"

    def __init__(self):
        super().__init__(T=5.0)

    def drift_coeff(self, t):
        return torch.full_like(t, -1.0)

    def diffusion_coeff(self, t):
        return torch.full_like(t, 2 ** 0.5)

    def marginal_coeffs(self, t):
        return torch.exp(-t), torch.sqrt(-torch.expm1(-2 * t))


parser = argparse.ArgumentParser()
parser.add_argument("--quick", action="store_true")
args = parser.parse_args()

sde = OrnsteinUhlenbeck()
target = scoresde.GaussianMixture.ring()
score = target.score_fn(sde)
n = 500 if args.quick else 5000
truth = target.log_prob(target.sample(n, torch.Generator().manual_seed(1))).mean()
print(f"target: mean log p of its own samples {truth:.3f}")
for solver in scoresde.SAMPLERS:
    steps = 20 if solver in ("euler", "heun", "dpmpp_2m") else (100 if args.quick else 1000)
    steps = 10 if solver == "gei" else steps  # it needs the data's statistics, below
    stats = dict(zip(("data_mean", "data_cov"), target.moments())) if solver == "gei" else {}
    x, info = scoresde.sample(score, sde, (n, 2), solver=solver, steps=steps,
                              generator=torch.Generator().manual_seed(0), **stats)
    print(f"{solver:>9}: NFE {info['nfe']:5d}, mean log p {target.log_prob(x).mean():.3f}")
