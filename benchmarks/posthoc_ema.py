"""Post-hoc EMA: a run's metric against the EMA's relative length, against its classic EMA.

Trains one run with power-function EMA profiles (``--profiles``, snapshots every
``--snapshot-every`` steps) and otherwise the library's defaults for the data (or takes a run
already trained with ``--run``), then :func:`scoresde.tasks.sweep_ema`: each length of
``--sweep`` reconstructed from the snapshots and measured by ``--metric`` (FID of ``--n``
samples with the ``fid`` command's defaults, or the held-out log-likelihood of ``--n``
points), and the classic EMA measured the same way. Prints the table (the best marked), the
gain of the best length over the classic EMA, and one JSON line; draws the curve.

Usage::

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/posthoc_ema.py --data 8gaussians \
        --metric likelihood --n 2000 --figure ema_8gaussians.png
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/posthoc_ema.py --data digits \
        --metric fid --n 2000 --figure ema_digits.png [--seed 1] [--keep runs/ema-digits]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

import scoresde
from scoresde.tasks.ema import parse_sweep, sweep_ema


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="8gaussians")
    parser.add_argument("--run", default=None, help="a run trained with ema_profiles")
    parser.add_argument("--keep", default=None, help="train into this folder and keep it")
    parser.add_argument("--steps", type=int, default=None, help="[default: the library's]")
    parser.add_argument("--profiles", default="0.05,0.1")
    parser.add_argument("--snapshot-every", type=int, default=None)
    parser.add_argument("--sweep", default="0.02:0.30:12")
    parser.add_argument("--metric", default="likelihood", choices=["fid", "likelihood"])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--figure", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        run, train_s = args.run, None
        if run is None:
            run = args.keep or os.path.join(tmp, "run")
            options = {"steps": args.steps} if args.steps else {}
            start = time.perf_counter()
            scoresde.train(run, data=args.data, progress=False,
                           ema_profiles=[float(s) for s in args.profiles.split(",")],
                           ema_snapshot_every=args.snapshot_every, **options)
            train_s = time.perf_counter() - start
        start = time.perf_counter()
        result = sweep_ema(run, parse_sweep(args.sweep), metric=args.metric, n=args.n,
                           seed=args.seed, progress=False, figure=args.figure,
                           say=lambda line: print(line, flush=True))
        sweep_s = time.perf_counter() - start
    key = result["key"]
    better = 1 if key == "log_likelihood" else -1
    classic, best = result["classic"][key], result["best"][key]
    print(f"{'sigma_rel':>10}  {key:>14}  kernel error")
    for row in result["rows"]:
        mark = "  <- best" if row["sigma_rel"] == result["best"]["sigma_rel"] else ""
        print(f"{row['sigma_rel']:>10.4g}  {row[key]:>14.4f}  {row['kernel_error']:.2%}{mark}")
    print(f"{'classic':>10}  {classic:>14.4f}")
    print(f"best sigma_rel {result['best']['sigma_rel']:.4g}: {key} {best:.4f} against the "
          f"classic EMA's {classic:.4f} (gain {better * (best - classic):+.4f})")
    extra = ("standard_error",) if key == "log_likelihood" else ("kid", "kid_se")
    print(json.dumps({"data": args.data, "metric": args.metric, "n": args.n, "key": key,
                      "rows": [{"sigma_rel": r["sigma_rel"], key: r[key],
                                "kernel_error": r["kernel_error"],
                                **{k: r["record"].get(k) for k in extra}}
                               for r in result["rows"]],
                      "classic": {k: result["classic"]["record"].get(k) for k in (key, *extra)},
                      "best": result["best"], "train_s": train_s, "sweep_s": sweep_s}))


if __name__ == "__main__":
    main()
