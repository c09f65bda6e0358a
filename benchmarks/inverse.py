"""Inverse problems: posterior error against score calls for every method of solve_inverse.

Exact targets (VP, exact mixture scores, GaussianMixture.condition_linear as the truth):
    two columns observed through x_1 = 0.3 (noiseless); the ring of 8 observed through
    x_1 = 2 (noiseless); the 3x3 grid observed through the average of its coordinates, 0.9,
    with noise 0.3; a 3-channel (3, 2, 2) mixture observed through its grey image
    (colorization). Error: energy distance to exact draws of the same size minus the mean of
    true-vs-true distances (the noise floor, shown with its spread), and the total variation
    between the shares of draws per posterior component (mode weights) and the exact shares
    (the shares of 200,000 exact draws: the most probable component of a draw is not always
    the one it came from, so the weights themselves are not the shares).
    NFE counts score calls; an smc call evaluates ``particles`` points per sample, and smc and
    dps take a backward pass per call, so "evals/sample" is NFE x particles.
SMC bias against particles: the weighted estimate of the upper row's weight on two columns,
    its error fitted against K on a log-log scale.
Digits: a score MLP trained briefly on scikit-learn's digits (or ``--run DIR``); inpainting of
    the lower half and 2x2 block averages with noise 0.1, every method; figure in docs/.

    PYTHONPATH=$PWD python benchmarks/inverse.py                # about 10 minutes on 2 cores
    PYTHONPATH=$PWD python benchmarks/inverse.py --quick        # about 2 minutes
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch

import scoresde as S
from scoresde import plotting
from scoresde.sampling.distances import energy_distance

ROOT = Path(__file__).resolve().parents[1]


def targets():
    base = S.GaussianMixture.random(12, k=3, seed=4, scale=1.0)
    colour = S.GaussianMixture(base.means, base.covs, base.weights, event_shape=(3, 2, 2))
    grey = S.grey_matrix((3, 2, 2))
    y_grey = (colour.sample(1, torch.Generator().manual_seed(5), dtype=torch.float64)
              .reshape(1, -1) @ grey.T)[0]
    return [
        ("two columns", S.GaussianMixture.two_columns(), torch.tensor([[1.0, 0.0]]),
         torch.tensor([0.3]), 0.0),
        ("ring", S.GaussianMixture.ring(), torch.tensor([[1.0, 0.0]]), torch.tensor([2.0]), 0.0),
        ("noisy average", S.GaussianMixture.grid(), torch.tensor([[0.5, 0.5]]),
         torch.tensor([0.9]), 0.3),
        ("colorization", colour, grey, y_grey, 0.0),
    ]


REFERENCE_DRAWS = 200_000  # exact draws that give the mode shares of the truth


def mode_shares(post, x):
    k = post.mixture.num_components
    return torch.bincount(post.modes(x), minlength=k).double() / len(x)


def settings(quick: bool):
    rows = [("replacement", s, {}) for s in (25, 100, 400)]
    rows += [("repaint", 25, dict(jump=5, resample=4)), ("repaint", 100, dict(jump=10, resample=4))]
    rows += [("dps", s, dict(step_size=z)) for s in (25, 100, 400) for z in (0.2, 1.0)]
    rows += [("smc", s, dict(particles=k)) for s in (25, 100) for k in (4, 16, 64)]
    if quick:
        rows = [r for r in rows if r[1] != 400 and r[2].get("particles") != 64]
    return rows


def exact_targets(args) -> None:
    n, sde = args.n, S.VPSDE()
    print(f"\n### Posterior error against NFE (VP, exact mixture scores, {n} draws)\n")
    print("Energy distance to exact draws minus the true-vs-true mean (floor: its mean +- sd "
          "over 10 pairs); mode TV: total variation of the shares per posterior component.\n")
    for name, mix, a, y, sd in targets():
        post = mix.condition_linear(a, y, sd)
        shape = mix.event_shape
        truth = post.sample(n, torch.Generator().manual_seed(2)).reshape(n, -1)
        null = torch.tensor([energy_distance(post.sample(n, torch.Generator().manual_seed(s))
                                             .reshape(n, -1), truth) for s in range(10, 20)])
        # The exact shares per component of the posterior's most probable component: from
        # REFERENCE_DRAWS exact draws (sd of a share <= 0.0011), not from the n truth draws.
        truth_shares = mode_shares(post, post.sample(REFERENCE_DRAWS, torch.Generator()
                                                     .manual_seed(3)).reshape(REFERENCE_DRAWS, -1))
        floor_tv = float(0.5 * (mode_shares(post, post.sample(n, torch.Generator().manual_seed(
            9)).reshape(n, -1)) - truth_shares).abs().sum())
        print(f"#### {name}: posterior weights "
              f"{', '.join(f'{w:.3f}' for w in post.weights if w > 0.005)}; floor "
              f"{float(null.mean()):.4f} +- {float(null.std()):.4f}, mode TV floor "
              f"{floor_tv:.3f}\n")
        print("| method | steps | options | NFE | evals/sample | ED - floor | mode TV | wall s |")
        print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
        for method, steps, options in settings(args.quick):
            t0 = time.perf_counter()
            x, info = S.solve_inverse(mix.score_fn(sde), sde, a, y, sd, method=method, n=n,
                                      steps=steps, event_shape=shape,
                                      generator=torch.Generator().manual_seed(1), **options)
            wall = time.perf_counter() - t0
            flat = x.reshape(n, -1)
            gap = energy_distance(flat, truth) - float(null.mean())
            tv = float(0.5 * (mode_shares(post, flat) - truth_shares).abs().sum())
            evals = info["nfe"] * options.get("particles", 1)
            kn = ", ".join(f"{k}={v}" for k, v in options.items())
            print(f"| {method} | {steps} | {kn} | {info['nfe']} | {evals} | {gap:.4f} | "
                  f"{tv:.3f} | {wall:.1f} |")
        print()


def smc_slope(args) -> None:
    mix, a, y = S.GaussianMixture.two_columns(), torch.tensor([[1.0, 0.0]]), torch.tensor([0.3])
    sde, p = S.VPSDE(), float(mix.condition_linear(a, y).weights[1])
    ks = (1, 2, 4, 8, 16, 32)
    total = 16384 if args.quick else 65536
    print(f"\n### SMC: bias of the upper row's weight against particles (two columns, 25 "
          f"steps, {total} particles in all per K, seed 3)\n")
    print("| K | groups | estimate - exact | ")
    print("| ---: | ---: | ---: |")
    errs = []
    for k in ks:
        _, info = S.solve_inverse(mix.score_fn(sde), sde, a, y, method="smc", n=total // k,
                                  steps=25, particles=k, generator=torch.Generator().manual_seed(3))
        w = info["log_weights"].exp()
        est = float((w * (info["particles"][..., 1] > 0).to(w)).sum(1).mean())
        errs.append(abs(est - p))
        sd = math.sqrt(p * (1 - p) / (total // k))
        print(f"| {k} | {total // k} | {est - p:+.4f} (sd of one draw per group {sd:.4f}) |")
    x = torch.log(torch.tensor(ks[:4], dtype=torch.float64))
    yv = torch.log(torch.tensor(errs[:4], dtype=torch.float64))
    slope = float(((x - x.mean()) * (yv - yv.mean())).sum() / ((x - x.mean()) ** 2).sum())
    print(f"\nFitted slope of log |error| against log K over K = 1..8: {slope:.2f} (from 16 on, "
          "the 25-step chain's own error, of the other sign, takes over)\n")


def digits(args, root: str) -> None:
    ds = S.data.get_dataset("digits")
    if args.run:
        run = args.run
    else:
        run = f"{root}/digits"
        t0 = time.perf_counter()
        S.train(run, data="digits", net="mlp", net_params=dict(hidden=256, depth=4),
                steps=args.train_steps, batch_size=128, progress=False,
                log_every=args.train_steps, checkpoint_every=args.train_steps)
        print(f"\n### Digits (score MLP trained {args.train_steps} steps, "
              f"{time.perf_counter() - t0:.0f} s)\n")
    model, sde, config = S.load_run(run)
    shape = tuple(config["data_shape"])
    x_true = ds.test[:4].reshape(4, *shape).double()
    d = math.prod(shape)
    known = torch.zeros(shape, dtype=torch.bool).reshape(-1)
    known[: d // 2] = True  # the upper half is seen
    blocks = torch.zeros(d // 4, d, dtype=torch.float64)
    for r in range(4):
        for c in range(4):
            for dr in range(2):
                for dc in range(2):
                    blocks[r * 4 + c, (2 * r + dr) * 8 + 2 * c + dc] = 0.25
    problems = [("upper half seen", S.mask_matrix(known), 0.0),
                ("2x2 averages, noise 0.1", blocks, 0.1)]
    methods = [("replacement", {}), ("repaint", dict(jump=10, resample=4)),
               ("dps", dict(step_size=1.0)), ("smc", dict(particles=16))]
    per = 3
    print("| problem | method | NFE | evals/sample | RMS of A x - y | RMS error to the truth | "
          "wall s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    rows = []
    gen = torch.Generator().manual_seed(0)
    for pname, a, sd in problems:
        y = x_true.reshape(4, -1) @ a.T + sd * torch.randn(4, a.shape[0], generator=gen,
                                                           dtype=torch.float64)
        seen = (y @ torch.linalg.pinv(a).T).reshape(4, *shape)
        block = [x_true, seen]
        for method, options in methods:
            t0 = time.perf_counter()
            with torch.no_grad():
                x, info = S.solve_inverse(model, sde, a, y.repeat_interleave(per, 0), sd,
                                          method=method, steps=100, event_shape=shape,
                                          generator=torch.Generator().manual_seed(1), **options)
            wall = time.perf_counter() - t0
            flat = x.reshape(len(x), -1).double()
            resid = (flat @ a.T - y.repeat_interleave(per, 0)).pow(2).mean().sqrt()
            err = (flat - x_true.reshape(4, -1).repeat_interleave(per, 0)).pow(2).mean().sqrt()
            evals = info["nfe"] * options.get("particles", 1)
            print(f"| {pname} | {method} | {info['nfe']} | {evals} | {float(resid):.3f} | "
                  f"{float(err):.3f} | {wall:.1f} |")
            block.append(x.reshape(4, per, *shape)[:, 0].double())
        rows.append(torch.stack(block, 1))  # (4, 2 + methods, *shape)
    grid = torch.cat(rows).reshape(-1, *shape).clamp(-1, 1).add(1).div(2)
    fig = plotting.image_grid_figure(
        grid.float(), "truth | seen | replacement | repaint | dps | smc",
        ncol=2 + len(methods))
    out = ROOT / "docs" / "inverse_digits.png"
    plotting.save_figure(fig, out)
    print(f"\nFigure: {out.relative_to(ROOT)}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer settings and draws")
    parser.add_argument("--run", default=None, help="a digits run to use instead of training")
    parser.add_argument("--skip-exact", action="store_true", help="only the slope and digits")
    parser.add_argument("--skip-digits", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.n = 500 if args.quick else 1000
    args.train_steps = 600 if args.quick else 2000
    if not args.skip_exact:
        exact_targets(args)
    smc_slope(args)
    if not args.skip_digits:
        with tempfile.TemporaryDirectory() as root:
            digits(args, root)


if __name__ == "__main__":
    main()
