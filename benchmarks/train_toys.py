r"""Train a score model on each 2D toy and measure its held-out log-likelihood against the entropy.

For each toy: ``scoresde.train`` with the library's defaults (what ``scoresde train`` uses) on the
CPU, timed; then ``scoresde.log_likelihood`` of the EMA model through the probability-flow ODE
with the exact divergence on ``--test-points`` held-out points. Reported per toy:

- ``nll``: mean held-out negative log-likelihood in nats, with its standard error;
- ``H``: the toy's differential entropy (``scoresde.toys.toy_entropy``), the floor of ``nll``;
- ``gap = nll - H``;
- ``kl``: ``mean(log p_data(x) - log p_model(x))`` over the same points with the exact data
  density, a paired estimate of the same gap with a much smaller standard error.

Usage::

    PYTHONPATH=$PWD python benchmarks/train_toys.py [--toys 8gaussians moons] [--threads 1]
    PYTHONPATH=$PWD python benchmarks/train_toys.py --toys checkerboard --test-points 2000 \
        --rtol 1e-4 --train-options '{"steps": 4500}'
    PYTHONPATH=$PWD python benchmarks/train_toys.py --toys 8gaussians moons --train-only  # time

``--rtol 1e-4`` needs about half the score evaluations of the default 1e-5 (8gaussians: 1112
against 2276 for 10,000 points); tuning runs used 2000 test points, for which the standard error
of ``kl`` is ~0.005 nats.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time

import torch

import scoresde
from scoresde import data, toys

BARS = {"8gaussians": 0.03, "swissroll": 0.03, "moons": 0.03, "checkerboard": 0.05}


def evaluate(model, sde, x, chunk: int, rtol: float, eps: float) -> tuple[torch.Tensor, int]:
    """Held-out log-likelihoods ``(N,)`` in chunks, and the total number of score evaluations."""
    logps, nfe = [], 0
    for part in x.split(chunk):
        logp, info = scoresde.log_likelihood(model, sde, part.double(), eps=eps,
                                             divergence="exact", rtol=rtol, atol=rtol)
        logps.append(logp.to(torch.float64))
        nfe += int(info["nfe"])
    return torch.cat(logps), nfe


def run_toy(name: str, args) -> dict:
    options = json.loads(args.train_options)
    with tempfile.TemporaryDirectory() as run_dir:
        start = time.perf_counter()
        result = scoresde.train(run_dir, data=name, seed=args.seed, progress=False, **options)
        train_s = time.perf_counter() - start
        model, sde, config = scoresde.load_run(run_dir)
    row = {"toy": name, "steps": config["steps"], "batch": config["batch_size"],
           "train_s": round(train_s, 1), "steps_per_s": round(result["steps_per_sec"], 1)}
    if args.train_only:
        return row
    model.double()
    test = data.get_dataset(name, test_size=args.test_points).test
    start = time.perf_counter()
    logp, nfe = evaluate(model, sde, test, args.chunk, args.rtol, config["eps"])
    eval_s = time.perf_counter() - start
    entropy = toys.toy_entropy(name)
    nll = -float(logp.mean())
    row.update(nll=round(nll, 4), nll_se=round(float(logp.std()) / math.sqrt(len(logp)), 4),
               H=None if entropy is None else round(entropy, 4),
               gap=None if entropy is None else round(nll - entropy, 4),
               eval_s=round(eval_s, 1), nfe=nfe)
    log_prob = toys.toy_log_prob(name)
    if log_prob is not None:
        diff = log_prob(test).to(torch.float64) - logp
        row["kl"] = round(float(diff.mean()), 4)
        row["kl_se"] = round(float(diff.std()) / math.sqrt(len(diff)), 4)
    if name in BARS:
        row["bar"] = BARS[name]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toys", nargs="+", default=list(BARS))
    parser.add_argument("--test-points", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rtol", type=float, default=1e-5, help="ODE rtol = atol")
    parser.add_argument("--chunk", type=int, default=2500, help="points per likelihood solve")
    parser.add_argument("--train-only", action="store_true",
                        help="time the training and skip the likelihood evaluation")
    parser.add_argument("--train-options", default="{}",
                        help="JSON keywords for scoresde.train over its defaults")
    args = parser.parse_args()
    if not hasattr(scoresde, "log_likelihood"):
        raise SystemExit("scoresde.log_likelihood is missing: this benchmark needs the likelihood "
                         "module (issue 3) merged")
    torch.set_num_threads(args.threads)
    for name in args.toys:
        print(json.dumps(run_toy(name, args)), flush=True)


if __name__ == "__main__":
    main()
