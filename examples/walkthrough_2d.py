"""A 2D walkthrough: train a score model on a toy, sample it three ways, measure its likelihood.

    python examples/walkthrough_2d.py            # about a minute on two CPU cores
    python examples/walkthrough_2d.py --quick    # a few seconds, an undertrained model
"""

import argparse
import tempfile

import torch

import scoresde
from scoresde import plotting

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--toy", default="moons", choices=list(scoresde.toys.TOYS))
parser.add_argument("--quick", action="store_true")
parser.add_argument("--out", default="walkthrough_2d.png")
args = parser.parse_args()

run = tempfile.mkdtemp(prefix="scoresde-walkthrough-")
# 1. Train: denoising score matching under the VP SDE; the run folder holds config and weights.
scoresde.train(run, data=args.toy, sde="vp", steps=100 if args.quick else 3000)
model, sde, config = scoresde.load_run(run)

# 2. Sample: the reverse SDE (em), predictor-corrector (pc; in 2D a small Langevin snr), and a
#    10-step ODE solver.
samples, nfe = {}, {}
for solver, steps, options in [("em", 50 if args.quick else 500, {}),
                             ("pc", 50 if args.quick else 500, {"snr": 0.02}),
                             ("dpmpp_2m", 10, {})]:
    with torch.no_grad():
        x, info = scoresde.sample(model, sde, (2000, 2), solver=solver, steps=steps,
                                  generator=torch.Generator().manual_seed(0), **options)
    samples[solver], nfe[solver] = x, info["nfe"]
    print(f"{solver:>9}: NFE {info['nfe']}")

# 3. Likelihood of held-out points through the probability-flow ODE (exact divergence in 2D).
test = scoresde.data.get_dataset(args.toy).test[:200 if args.quick else 2000]
logp, info = scoresde.log_likelihood(model, sde, test, rtol=1e-3 if args.quick else 1e-5,
                                     atol=1e-3 if args.quick else 1e-5)
print(f"log-likelihood {logp.mean():.3f} nats (NFE {info['nfe']})")

fig = plotting.samples_figure(samples, nfe, data=test)
print("wrote", plotting.save_figure(fig, args.out))
