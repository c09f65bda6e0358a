"""Direct, cascaded and latent diffusion on digits: train time, NFE and sample quality.

Models (all U-Nets, ``ch=16``, VP SDE, the same steps and batch):

    direct:   an 8x8 score model.
    cascade:  a 4x4 base model (digits downsampled by 2) and a 4x4 -> 8x8 super-resolution model,
              trained with conditioning augmentation (``cond_aug``) and without (0); sampled
              with the fixed level ``aug_level`` at the second stage (0 and the given one).
    latent:   an autoencoder (``objective="autoencoder"``) and a score model on its latents
              (``latent=AE_RUN``), sampled in latent space and decoded.

Quality is judged by a logistic regression fitted on clean training digits (the judge of
``benchmarks/conditional.py``): its mean top-class probability on the samples (confidence; on
held-out digits it is the reference value printed beside), the perplexity of the predicted
classes (10 = all classes equally often), the mean pairwise distance over the held-out data's
(diversity), and the Frechet distance between Gaussians fitted to the 64 pixels of the samples
and of all 1,797 digits (pixel FD, not an FID; the floor is that of as many real digits drawn at
random).

Digits FID and KID (``scoresde.quality``): features of the shipped digits feature network
(``scoresde.features.digits_extractor``) of the same samples, against the cached statistics of the
1,617 training digits (``reference_stats``), scored by ``quality_scores``. FID is biased upward at
N = ``--n`` (500) and comparable only with FIDs at the same N; KID is unbiased (its standard error
comes from its disjoint subsets). The real-digits row draws as many digits from all 1,797 (so
about 90% of them are training digits, in the reference itself): it is the bias of FID at that N,
not a held-out floor; the last row draws them from the training digits alone.

    PYTHONPATH=$PWD python benchmarks/scaling.py --root /tmp/scaling          # ~30 min, 2 cores
    PYTHONPATH=$PWD python benchmarks/scaling.py --root /tmp/scaling --quick  # ~1 min, plumbing

Runs are kept under ``--root`` and reused (``resume=True``): a second call only samples.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

import scoresde as S
from scoresde import plotting
from scoresde.features import digits_extractor
from scoresde.metrics import check_fid_size, feature_stats, frechet_distance
from scoresde.quality import image_features, quality_scores, reference_stats

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--root", required=True)
parser.add_argument("--steps", type=int, default=2500)
parser.add_argument("--batch", type=int, default=64)
parser.add_argument("--n", type=int, default=500)
parser.add_argument("--nfe", type=int, default=20, help="score calls per sample (about)")
parser.add_argument("--cond-aug", type=float, default=0.2)
parser.add_argument("--aug-level", type=float, default=0.1)
parser.add_argument("--stages", nargs="+", default=["direct", "cascade", "latent"])
parser.add_argument("--figure", default="docs/scaling_samples.png")
parser.add_argument("--seeds", type=int, default=3, help="sampling seeds per model (mean, sd)")
parser.add_argument("--quick", action="store_true")
args = parser.parse_args()
if args.quick:
    args.steps, args.n = 20, 100  # FID needs more samples than the 64 features
torch.set_num_threads(1)

DIGITS = S.data.get_dataset("digits")
ALL = torch.cat([DIGITS.train, DIGITS.test]).reshape(-1, 64).double()
EXTRACTOR = digits_extractor()
REFERENCE = reference_stats(DIGITS, EXTRACTOR)  # the training digits' features, cached
try:
    check_fid_size(args.n, REFERENCE.mu.shape[0])
except ValueError as err:
    parser.error(f"--n: {err}")


def common(steps=None):
    return dict(data="digits", steps=steps or args.steps, batch_size=args.batch,
                net_params={"ch": 16}, progress=False, resume=True,
                log_every=max(1, args.steps // 5), checkpoint_every=args.steps)


def trained(name: str, **kw) -> float:
    """Train (or find trained) ``root/name``; its training wall time in seconds."""
    result = S.train(os.path.join(args.root, name), **{**common(), **kw})
    return float(result["train_time_s"])


def frechet(a: torch.Tensor, b: torch.Tensor) -> float:
    """The Frechet distance between Gaussians fitted to the pixels of ``a`` and ``b`` (N, 64)
    (``metrics.frechet_distance``, which takes singular covariances: the corner pixels of
    digits are almost always 0)."""
    return frechet_distance(*feature_stats(a), *feature_stats(b))


def mean_pairwise(x: torch.Tensor) -> float:
    d = torch.cdist(x, x)
    return float(d.sum() / (len(x) * (len(x) - 1)))


def build_judge():
    from sklearn.linear_model import LogisticRegression
    flat = lambda x: x.reshape(len(x), -1).numpy()  # noqa: E731
    judge = LogisticRegression(max_iter=2000).fit(flat(DIGITS.train), DIGITS.train_labels.numpy())
    return judge


JUDGE = build_judge()


def quality(x: torch.Tensor, seed: int = 0) -> dict:
    feats = image_features(EXTRACTOR, x.reshape(len(x), 1, 8, 8), DIGITS)
    digits_q = quality_scores(*feature_stats(feats), feats.float(), REFERENCE, seed=seed)
    x = x.clamp(-1, 1).reshape(len(x), -1).double()
    p = JUDGE.predict_proba(x.numpy())
    counts = np.bincount(p.argmax(1), minlength=10) / len(x)
    nz = counts[counts > 0]
    return {"confidence": float(p.max(1).mean()),
            "perplexity": float(np.exp(-(nz * np.log(nz)).sum())),
            "diversity": mean_pairwise(x.float()) / mean_pairwise(DIGITS.test.reshape(-1, 64)),
            "pixel_fd": frechet(x, ALL), "fid": digits_q["fid"], "kid": digits_q["kid"],
            "kid_se": digits_q["kid_se"]}


def gen(seed: int = 0):
    return torch.Generator().manual_seed(seed)


rows, pictures = [], {}
KEYS = ("confidence", "perplexity", "diversity", "pixel_fd", "fid")


def summary(qs: list) -> dict:
    """Mean and sd over seeds of each of ``KEYS``; KID as the mean over seeds and the standard
    error of that mean (the seeds' own standard errors combined: sqrt(sum se^2) / seeds)."""
    stats = {k: (float(np.mean([q[k] for q in qs])), float(np.std([q[k] for q in qs], ddof=1))
                 if len(qs) > 1 else float("nan")) for k in KEYS}
    stats["kid"] = (float(np.mean([q["kid"] for q in qs])),
                    float(np.sqrt(sum(q["kid_se"] ** 2 for q in qs)) / len(qs)))
    return stats


def report(name, draw, train_s):
    """Sample with ``draw(generator) -> (x, nfe)`` once per seed; mean and sd of the metrics."""
    qs, walls = [], []
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        with torch.no_grad():
            x, nfe = draw(gen(seed))
        walls.append(time.perf_counter() - t0)
        qs.append(quality(x, seed))
        if seed == 0:
            pictures[name] = x[:32]
    rows.append(dict(model=name, nfe=nfe, train_s=train_s, sample_s=float(np.median(walls)),
                     **summary(qs)))
    print(json.dumps(rows[-1]), flush=True)


steps_each = max(2, args.nfe // 2)
if "direct" in args.stages:
    t = trained("direct")
    model, sde, _ = S.load_run(os.path.join(args.root, "direct"))

    def direct(g):
        x, info = S.sample(model, sde, (args.n, 1, 8, 8), solver="dpmpp_2m", steps=args.nfe,
                           generator=g)
        return x, info["nfe"]

    report("direct 8x8", direct, t)

if "cascade" in args.stages:
    t_base = trained("base4", downsample=2)
    base, base_sde, _ = S.load_run(os.path.join(args.root, "base4"))
    for aug in (args.cond_aug, 0.0):
        name = f"sr8_aug{aug:g}"
        t_sr = trained(name, super_res=2, cond_aug=aug)
        sr, sr_sde, _ = S.load_run(os.path.join(args.root, name))
        for level in sorted({0.0, args.aug_level if aug > 0 else 0.0}):
            def two_stages(g, sr=sr, sr_sde=sr_sde, level=level):
                x, info = S.cascade(base, base_sde, sr, sr_sde, args.n, solver="dpmpp_2m",
                                    steps=steps_each, sr_steps=steps_each, aug_level=level,
                                    generator=g)
                return x, info["nfe"]

            report(f"cascade, train aug {aug:g}, sample level {level:g}", two_stages,
                   t_base + t_sr)

if "latent" in args.stages:
    t_ae = trained("ae", objective="autoencoder")
    t_lat = trained("latent", latent=os.path.join(args.root, "ae"))
    latent, _, _ = S.load_run(os.path.join(args.root, "latent"))

    def decoded(g):
        x, info = latent.sample(args.n, solver="dpmpp_2m", steps=args.nfe, generator=g)
        return x, info["nfe"]

    report("latent", decoded, t_ae + t_lat)

# the noise floor: real digits, as many as the samples, drawn at random once per seed
reals = [quality(ALL[torch.randperm(len(ALL), generator=gen(s))[:args.n]].float()
                 .reshape(-1, 1, 8, 8), s) for s in range(args.seeds)]
real = summary(reals)
print("real digits:", json.dumps(real))
# and as many training digits alone: images of the FID reference itself (its bias at this N)
trains = [quality(DIGITS.train[torch.randperm(len(DIGITS.train), generator=gen(s))[:args.n]], s)
          for s in range(args.seeds)]
train_floor = summary(trains)
print("training digits:", json.dumps(train_floor))
print(f"\nsteps {args.steps}, batch {args.batch}, N = {args.n} samples per seed, dpmpp_2m; "
      "train s: both models of a cascade (base + SR) or of a latent model (autoencoder + score)\n")
print(f"metrics: mean ± sd over {args.seeds} sampling seeds; KID: mean ± its standard error; "
      f"digits FID at N = {args.n} (biased; compare only at equal N), reference: the "
      f"{REFERENCE.n} training digits\n")


def cells(r) -> str:
    digits = {"confidence": 3, "perplexity": 2, "diversity": 3, "pixel_fd": 3, "fid": 3,
              "kid": 4}
    return " | ".join(f"{r[k][0]:.{d}f} ± {r[k][1]:.{d}f}" for k, d in digits.items())


print("| model | NFE | train s | sample s | judge confidence | class perplexity | diversity | "
      f"pixel FD | digits FID (N = {args.n}) | digits KID ± se |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for r in rows:
    print(f"| {r['model']} | {r['nfe']} | {r['train_s']:.0f} | {r['sample_s']:.1f} | {cells(r)} |")
print(f"| real digits ({args.n}) | | | | {cells(real)} |")
print(f"| training digits ({args.n}) | | | | {cells(train_floor)} |")
if pictures and args.figure:
    print("wrote", plotting.save_figure(plotting.image_grids_figure(pictures), args.figure))
