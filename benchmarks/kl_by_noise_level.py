r"""Where a trained 2D model's likelihood gap comes from, by noise level.

Trains a model on a toy whose diffused score is known exactly at every time (8gaussians: a
Gaussian mixture; checkerboard: 8 uniform squares, whose diffused density is a sum of products
of normal CDF differences), then computes the held-out KL ``mean(log p_data - log p_model)``
through the probability-flow ODE (exact divergence) with the score replaced by the exact one
on one side of a log-SNR cut ``c``:

- ``model_below_cut``: the model's score where log-SNR < c (large noise), the exact score
  above, so the KL measures only the model's errors at large noise;
- ``model_above_cut``: the exact score where log-SNR < c, the model's above (small noise).

With the exact score everywhere the KL is ~0 (printed first, a check of the method), so the
two columns split the model's gap between noise levels.

Usage::

    PYTHONPATH=$PWD python benchmarks/kl_by_noise_level.py --toy checkerboard \
        [--train-options JSON] [--test-points 2000] [--cuts 2 5 8]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile

import torch
from torch.special import log_ndtr

import scoresde
from scoresde import data, toys

# Lower-left corners of checkerboard's 8 squares of side 2 (scoresde.toys' layout).
_CORNERS = torch.tensor([[i, j] for i in range(-2, 2) for j in range(-2, 2) if (i + j) % 2 == 0],
                        dtype=torch.float64) * 2


def _log_normal_mass(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``log(Phi(hi) - Phi(lo))`` for ``hi > lo``, stable in both tails."""
    flip = lo > 0  # Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi): keep the arguments non-positive
    lo, hi = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
    a, b = log_ndtr(hi), log_ndtr(lo)
    return a + torch.log1p(-torch.exp(b - a))


def checkerboard_score(sde):
    """The exact score of checkerboard diffused by ``sde``: ``score(x, t)``, differentiable."""

    def score(x, t):
        t = sde.check_time(t, x)
        m, s = (v[:, None, None] for v in sde.marginal_coeffs(t))
        with torch.enable_grad():
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
            lo = (m * _CORNERS - xg[:, None]) / s
            hi = (m * (_CORNERS + 2) - xg[:, None]) / s
            logp = torch.logsumexp(_log_normal_mass(lo, hi).sum(-1), 1)
            return torch.autograd.grad(logp.sum(), xg, create_graph=x.requires_grad)[0]

    return score


EXACT = {"8gaussians": lambda sde: toys.EIGHT_GAUSSIANS.score_fn(sde),
         "checkerboard": checkerboard_score}


def split(model, exact, sde, cut: float, exact_above: bool):
    """A score that is ``exact`` on one side of log-SNR ``cut`` and ``model`` on the other."""
    t_cut = float(sde.t_from_log_snr(torch.tensor(cut, dtype=torch.float64)))

    def score(x, t):
        t = sde.check_time(t, x)
        small_noise = bool((t < t_cut).all())  # the ODE calls with one time per batch
        return exact(x, t) if small_noise == exact_above else model(x, t)

    return score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toy", choices=sorted(EXACT), default="checkerboard")
    parser.add_argument("--test-points", type=int, default=2000)
    parser.add_argument("--cuts", type=float, nargs="+", default=[2.0, 5.0, 8.0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-options", default="{}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as run_dir:
        scoresde.train(run_dir, data=args.toy, progress=False, **json.loads(args.train_options))
        model, sde, config = scoresde.load_run(run_dir)
    model.double()
    exact = EXACT[args.toy](sde)
    x = data.get_dataset(args.toy, test_size=args.test_points).test.double()
    log_p = toys.toy_log_prob(args.toy)(x).double()

    def kl(score):
        logq, _ = scoresde.log_likelihood(score, sde, x, eps=config["eps"], divergence="exact",
                                          rtol=1e-4, atol=1e-4)
        diff = log_p - logq
        return round(float(diff.mean()), 4), round(float(diff.std()) / math.sqrt(len(x)), 4)

    print(json.dumps({"toy": args.toy, "options": args.train_options, "exact": kl(exact),
                      "model": kl(model)}), flush=True)
    for cut in args.cuts:
        print(json.dumps({"cut": cut,
                          "model_below_cut": kl(split(model, exact, sde, cut, True)),
                          "model_above_cut": kl(split(model, exact, sde, cut, False))}),
              flush=True)


if __name__ == "__main__":
    main()
