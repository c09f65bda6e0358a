"""Digits FID and KID against the number of score calls, for every solver on each SDE's run.

Each run folder is a digits model trained with the defaults (``scoresde train --data digits
--sde S``). For each solver and each score-call budget the script draws ``--n`` samples (seed 0,
chunks of 500) and scores them with the shipped digits feature network against the cached
statistics of the training digits (:func:`scoresde.quality.sample_quality`). The data's own
floor is the held-out digits (180) against the same reference. One JSON line per point is
appended to ``--out`` as it is measured (points already there are skipped, so a killed run
continues); ``--figure`` draws FID against NFE from that file.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/fid_nfe.py \\
        --runs vp=runs/digits-vp subvp=runs/digits-subvp ve=runs/digits-ve \\
        --nfe 10 20 40 --ode-tol 1e-2 1e-3 --out fid_nfe.jsonl --figure docs/fid_nfe.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from scoresde import load_run
from scoresde.data import get_dataset
from scoresde.features import digits_extractor
from scoresde.metrics import feature_stats, frechet_distance
from scoresde.quality import image_features, quality_scores, reference_stats, sample_quality

SOLVERS = ("em", "pc", "ode", "euler", "heun", "dpmpp_2m", "unipc", "torchsde")
CALLS_PER_STEP = {"pc": 2, "heun": 2}  # score calls per step; one for the others
ENDS_AT_DATA = ("gei",)  # no denoising call after the last step


def _points(solver: str, budgets, tolerances) -> list[dict]:
    """The sampler options of each budget: steps for fixed-step solvers; ode chooses its own
    steps, so its budget is a tolerance (rtol = atol)."""
    if solver == "ode":
        return [{"steps": 1, "rtol": tol, "atol": tol} for tol in tolerances]
    if solver in ENDS_AT_DATA:  # its last call ends the path: steps = calls
        return [{"steps": b} for b in budgets]
    return [{"steps": max(1, round(b / CALLS_PER_STEP.get(solver, 1)) - 1)} for b in budgets]


def _records(path: str) -> list[dict]:
    """The points measured so far; a line cut short by a kill is left out (measured again)."""
    if not os.path.isfile(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def _append(path: str, record: dict) -> None:
    """One JSON line at the end of ``path``, on a line of its own after a cut one."""
    cut = False
    if os.path.isfile(path) and os.path.getsize(path) > 0:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            cut = f.read(1) != b"\n"
    with open(path, "a") as f:
        f.write(("\n" if cut else "") + json.dumps(record) + "\n")


def _done(path: str) -> set:
    return {json.dumps(r["point"], sort_keys=True) for r in _records(path)}


def floor(dataset, extractor, reference, subsets: int = 5) -> dict:
    """FID, KID, precision and recall of the held-out digits against the training digits, and
    the FID of as many training digits (the mean over ``subsets`` random subsets): the bias of
    FID at that N for images the feature network was trained on."""
    feats = image_features(extractor, dataset.test, dataset)
    n = feats.shape[0]
    train = image_features(extractor, dataset.train, dataset)
    gen = torch.Generator().manual_seed(0)
    same_n = [frechet_distance(*feature_stats(train[torch.randperm(train.shape[0],
                                                                   generator=gen)[:n]]),
                               reference.mu, reference.sigma) for _ in range(subsets)]
    return dict(quality_scores(*feature_stats(feats), feats.float(), reference), n=n,
                train_subset_fid=sum(same_n) / subsets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=[], metavar="SDE=DIR")
    parser.add_argument("--solvers", nargs="+", default=list(SOLVERS))
    parser.add_argument("--nfe", nargs="+", type=int, default=[10, 20, 40])
    parser.add_argument("--ode-tol", nargs="+", type=float, default=[1e-2, 1e-3])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--out", default="fid_nfe.jsonl")
    parser.add_argument("--figure", default=None)
    parser.add_argument("--no-data-statistics", action="store_true",
                        help="few-step solvers run their default grid from the prior, without "
                             "the training digits' mean and covariance")
    parser.add_argument("--figure-n", type=int, default=10_000,
                        help="the sample count of the points drawn (FID is comparable at one N)")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dataset, extractor = get_dataset("digits"), digits_extractor()
    reference = reference_stats(dataset, extractor)
    done = _done(args.out)
    base = floor(dataset, extractor, reference)
    print(json.dumps({"floor": base}), file=sys.stderr)
    for item in args.runs:
        sde_name, run = item.split("=", 1)
        model, sde, _ = load_run(run)
        for solver in args.solvers:
            for options in _points(solver, args.nfe, args.ode_tol):
                point = dict(sde=sde_name, solver=solver, n=args.n, **options)
                if args.no_data_statistics:
                    point["data_statistics"] = False
                if json.dumps(point, sort_keys=True) in done:
                    continue
                extra = {k: v for k, v in options.items() if k != "steps"}
                result = sample_quality(model, sde, dataset, extractor, n=args.n, solver=solver,
                                        steps=options["steps"], seed=0, reference=reference,
                                        data_statistics=not args.no_data_statistics, **extra)
                record = dict(point=point, floor=base, **result)
                _append(args.out, record)
                print(f"{sde_name} {solver} {options}: NFE {result['nfe']:.0f} FID "
                      f"{result['fid']:.3f} KID {result['kid']:.4f} +- {result['kid_se']:.4f} "
                      f"({result['time_s']:.0f} s)", flush=True)
    if args.figure:
        from scoresde import plotting

        records = [r for r in _records(args.out) if r["point"]["n"] == args.figure_n
                   and r["point"].get("data_statistics", True)]
        figure = plotting.quality_figure(records, floor=base["fid"],
                                         floor_label=f"held-out digits, N = {base['n']}")
        plotting.save_figure(figure, args.figure)
        print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
