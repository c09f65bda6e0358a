"""Few-step sampling against k-diffusion's and diffusers' training-free solvers, on exact targets.

Every solver gets the exact score of a Gaussian mixture, so the only error is the solver's.
Targets: random 2D mixtures (``GaussianMixture.unseen(k)``, ``u<k>``, and with a very narrow
component, ``u<k>n``), and image-like mixtures: 10 full-covariance Gaussians fitted (scikit-learn,
seed 0) to 20,000 8x8 patches of scikit-learn's two sample photographs, grey (``patches64``,
D = 64) or colour (``patches192``, D = 192), pixels scaled to [-1, 1].

The peers, at 5 and 10 score calls (every call counted, the last step to sigma = 0 included):
k-diffusion's ``sample_lms`` and ``sample_dpmpp_2m`` on its Karras (rho 7) and exponential
grids over VP's noise range (sigma 152 to 0.0105) and VE's (50 to 0.01), starting from
``sigma_max z``; diffusers' ``DEISMultistepScheduler``, ``DPMSolverMultistepScheduler`` and
``UniPCMultistepScheduler`` of orders 2 and 3 with ``timestep_spacing="trailing"``, Karras or
exponential sigmas, on the DDPM schedule (linear betas 1e-4 to 0.02, epsilon prediction), given
the exact noise prediction at each of their sigmas. These are the configurations that were best
in a full sweep on ``patches64`` and ``u0``-``u6`` (also k-diffusion's euler, heun, dpm_2 and
polyexponential grid, diffusers' linspace spacing and beta sigmas, none of them ever best).
scoresde: ``gei`` and ``unipc`` with the mixture's exact mean and covariance (the statistics a
run records), VP, at 4 to 20 calls.

Judge: the energy distance between ``--n`` samples and a fresh draw of the target, averaged
over ``--reps`` prior draws (seeds 101, 102, ...); the noise level is 3 standard deviations of
that mean between two true draws (the statistic is unbiased: 0 in expectation), from 10 pairs.
A configuration reaches the target when its mean is below the level.

The peers are not dependencies of scoresde: run this in an environment of its own, e.g.

    python -m venv /tmp/peers && /tmp/peers/bin/pip install torch==2.13.0 diffusers \\
        torchdiffeq torchsde scipy click matplotlib scikit-learn tqdm pillow
    /tmp/peers/bin/pip install --no-deps k-diffusion   # torchvision is not imported
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 /tmp/peers/bin/python benchmarks/fewstep_peers.py \\
        --out fewstep_peers.jsonl --table --figure docs/fewstep_peers.png

Points already in ``--out`` are not measured again (a killed run continues).
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import itertools
import json
import math
import os
import sys
import types

import numpy as np
import torch

import scoresde
from scoresde import GaussianMixture
from scoresde.sampling.distances import energy_distance
from scoresde.sampling.grids import sigma_of_t

TARGETS = ("u0", "u0n", "u1", "u1n", "u2", "u2n", "u3", "u3n", "u4", "u4n", "u5", "u5n",
           "patches64", "patches192")
PEER_NFE = (5, 10)
OURS_NFE = (4, 5, 6, 8, 10, 15, 20)
KD = [f"kd {solver} {grid} {sde}" for solver, grid, sde in itertools.product(
    ("lms", "dpmpp_2m"), ("karras", "exponential"), ("vp", "ve"))]
DF = [f"df {family}{order} {grid}" for family, order, grid in itertools.product(
    ("deis", "dpmpp", "unipc"), (2, 3), ("trailing", "karras", "exponential"))]
OURS = ("gei", "unipc")


# ----- targets -------------------------------------------------------------------------------
def patch_mixture(colour: bool, k: int = 10, n: int = 20000, size: int = 8,
                  seed: int = 0) -> GaussianMixture:
    """A k-component full-covariance mixture fitted to n random size x size patches."""
    from sklearn.datasets import load_sample_images
    from sklearn.mixture import GaussianMixture as Fit

    images = [im.astype(np.float64) / 127.5 - 1 for im in load_sample_images().images]
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        im = images[i % len(images)]
        r, c = rng.integers(0, im.shape[0] - size), rng.integers(0, im.shape[1] - size)
        patch = im[r:r + size, c:c + size]
        rows.append(patch.reshape(-1) if colour else patch.mean(-1).reshape(-1))
    fit = Fit(k, covariance_type="full", reg_covar=1e-4, random_state=seed, max_iter=200)
    fit.fit(np.stack(rows))
    return GaussianMixture(torch.tensor(fit.means_), torch.tensor(fit.covariances_),
                           torch.tensor(fit.weights_))


def target(name: str) -> GaussianMixture:
    if name.startswith("patches"):
        return patch_mixture(colour=name == "patches192")
    return GaussianMixture.unseen(int(name[1:].rstrip("n")), narrow=name.endswith("n"))


def sigma_denoiser(mix: GaussianMixture):
    """``D(y, sigma) = y + sigma^2 grad log p_sigma(y)`` for ``y = x0 + sigma z`` (float64)."""

    def denoise(y: torch.Tensor, sigma: float) -> torch.Tensor:
        one = torch.ones(y.shape[0], dtype=torch.float64)
        return y + sigma**2 * mix._score(y.to(torch.float64), one, sigma * one)

    return denoise


# ----- the peers -----------------------------------------------------------------------------
def _k_diffusion():
    """k_diffusion.sampling alone: the package's __init__ imports torchvision (for training
    code), which does not import beside the CPU build of torch."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        sys.modules.setdefault(name, module)
    package = types.ModuleType("k_diffusion")
    package.__path__ = list(importlib.util.find_spec("k_diffusion").submodule_search_locations)
    sys.modules["k_diffusion"] = package
    from k_diffusion import sampling
    return sampling


def k_diffusion_sample(denoise, z, config: str, nfe: int, ranges):
    """k-diffusion's sampler with ``nfe`` calls (its last step, to sigma = 0, included)."""
    kd = _k_diffusion()
    _, solver, grid, sde = config.split()
    sigma_max, sigma_min = ranges[sde]
    build = kd.get_sigmas_karras if grid == "karras" else kd.get_sigmas_exponential
    sigmas = build(nfe, sigma_min, sigma_max, device="cpu").to(torch.float64)
    calls = [0]

    def model(x, sigma):
        calls[0] += 1
        return denoise(x, float(sigma.reshape(-1)[0]))

    x = getattr(kd, f"sample_{solver}")(model, z * sigmas[0], sigmas, disable=True)
    return x, calls[0]


def diffusers_sample(denoise, z, config: str, nfe: int):
    """A diffusers multistep scheduler on the DDPM schedule, given the exact noise."""
    import diffusers

    _, name, grid = config.split()
    family, order = name[:-1], int(name[-1])
    cls = {"deis": "DEISMultistepScheduler", "dpmpp": "DPMSolverMultistepScheduler",
           "unipc": "UniPCMultistepScheduler"}[family]
    kw = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
              solver_order=order, prediction_type="epsilon")
    if grid == "trailing":
        kw["timestep_spacing"] = "trailing"
    else:
        kw[f"use_{grid}_sigmas"] = True
    scheduler = getattr(diffusers, cls)(**kw)
    scheduler.set_timesteps(nfe)
    x = z.to(torch.float64) * scheduler.init_noise_sigma
    sigmas = scheduler.sigmas.to(torch.float64)
    for i, t in enumerate(scheduler.timesteps):
        sigma = float(sigmas[i])
        y = x * math.sqrt(1 + sigma**2)  # x = y / sqrt(1 + sigma^2) on the DDPM path
        eps = (y - denoise(y, sigma)) / sigma
        x = scheduler.step(eps, t, x).prev_sample
    return x * math.sqrt(1 + float(sigmas[-1]) ** 2), len(scheduler.timesteps)


def ours_sample(mix, z, method: str, nfe: int, seed: int):
    sde = scoresde.VPSDE()
    mean, cov = mix.moments()
    x, info = scoresde.sample(mix.score_fn(sde), sde, (len(z), mix.dim), solver=method,
                              steps=nfe, dtype=torch.float64, data_mean=mean, data_cov=cov,
                              generator=torch.Generator().manual_seed(seed))
    return x, info["nfe"]


# ----- the judge and the loop ----------------------------------------------------------------
def judge(mix, n: int, reps: int) -> dict:
    gen = torch.Generator().manual_seed(100)
    refs = [mix.sample(n, generator=gen, dtype=torch.float64) for _ in range(reps)]
    null = torch.tensor([energy_distance(mix.sample(n, generator=gen, dtype=torch.float64),
                                         mix.sample(n, generator=gen, dtype=torch.float64))
                         for _ in range(10)])
    zs = [torch.randn(n, mix.dim, generator=torch.Generator().manual_seed(101 + r),
                      dtype=torch.float64) for r in range(reps)]
    return dict(refs=refs, zs=zs, level=3 * float(null.std()) / math.sqrt(reps))


def measure(mix, j: dict, method: str, nfe: int, ranges) -> tuple[float, int]:
    denoise, dists, calls = sigma_denoiser(mix), [], 0
    for r, (z, ref) in enumerate(zip(j["zs"], j["refs"])):
        if method.startswith("kd "):
            x, calls = k_diffusion_sample(denoise, z, method, nfe, ranges)
        elif method.startswith("df "):
            x, calls = diffusers_sample(denoise, z, method, nfe)
        else:
            x, calls = ours_sample(mix, z, method, nfe, seed=101 + r)
        x = x.reshape(len(x), -1)
        dists.append(energy_distance(x, ref) if torch.isfinite(x).all() else math.inf)
    return sum(dists) / len(dists), calls


def run(targets, out: str, n: int, reps: int) -> None:
    done = set()
    if os.path.exists(out):
        with open(out) as f:
            done = {(r["target"], r["method"], r["nfe"]) for r in map(json.loads, f)}
    vp = scoresde.VPSDE()
    ranges = {"vp": tuple(sigma_of_t(vp, torch.tensor([1.0, 1e-3], dtype=torch.float64))
                          .tolist()), "ve": (50.0, 0.01)}
    for name in targets:
        todo = [(m, k) for m in KD + DF for k in PEER_NFE] + [(m, k) for m in OURS
                                                             for k in OURS_NFE]
        todo = [(m, k) for m, k in todo if (name, m, k) not in done]
        if not todo:
            continue
        mix = target(name)
        j = judge(mix, n, reps)
        for method, nfe in todo:
            dist, calls = measure(mix, j, method, nfe, ranges)
            record = dict(target=name, method=method, nfe=nfe, calls=calls, energy=dist,
                          level=j["level"], n=n, reps=reps)
            with open(out, "a") as f:
                f.write(json.dumps(record) + "\n")
            print(name, method, nfe, f"{dist:.2e} (level {j['level']:.2e})", flush=True)


def table(out: str) -> None:
    with open(out) as f:
        records = [json.loads(line) for line in f]
    by = {(r["target"], r["method"], r["nfe"]): r for r in records}
    targets = list(dict.fromkeys(r["target"] for r in records))
    print("| target | level | best peer, 10 calls | best peer, 5 calls | gei, 5 | gei, 10 "
          "| unipc, 5 | unipc, 10 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    met = []
    for name in targets:
        level = next(r["level"] for r in records if r["target"] == name)

        def best(nfe):
            rows = [r for (t, m, k), r in by.items() if t == name and k == nfe and m[:3] in
                    ("kd ", "df ")]
            r = min(rows, key=lambda r: r["energy"])
            return f"{r['energy']:.1e} ({r['method'][3:]})", r["energy"]

        def cell(method, nfe):
            r = by.get((name, method, nfe))
            if r is None:
                return "-", math.inf
            mark = "" if r["energy"] <= level else " (not reached)"
            return f"{r['energy']:.1e}{mark}", r["energy"]

        p10, p5 = best(10), best(5)
        g5, g10 = cell("gei", 5), cell("gei", 10)
        met.append((name, g5[1] <= max(p10[1], level), g10[1] <= level))
        print(f"| {name} | {level:.1e} | {p10[0]} | {p5[0]} | {g5[0]} | {g10[0]} | "
              f"{cell('unipc', 5)[0]} | {cell('unipc', 10)[0]} |")
    print(f"\ngei at 5 calls as close as the best peer at 10 (or below the level): "
          f"{sum(m[1] for m in met)} of {len(met)}; gei at 10 below the level: "
          f"{sum(m[2] for m in met)} of {len(met)}")
    for name, five, ten in met:
        if not (five and ten):
            print(f"  not met: {name} ({'5 calls' if not five else ''}"
                  f"{', ' if not five and not ten else ''}{'10 calls' if not ten else ''})")


KEY = "energy distance / level (0.1 and below drawn at 0.1)"


def figure(out: str, path: str, targets) -> None:
    from scoresde import plotting

    with open(out) as f:
        records = [json.loads(line) for line in f]
    points = []
    for name in targets:
        mine = [r for r in records if r["target"] == name]
        for nfe in sorted({r["nfe"] for r in mine}):
            rows = [r for r in mine if r["nfe"] == nfe]
            for label, keep in (("best peer", lambda m: m[:3] in ("kd ", "df ")),
                                ("gei", lambda m: m == "gei"), ("unipc", lambda m: m == "unipc")):
                chosen = [r for r in rows if keep(r["method"])]
                if chosen:
                    r = min(chosen, key=lambda r: r["energy"])
                    points.append(dict(point=dict(sde=name, solver=label, n=r["n"]), nfe=nfe,
                                       **{KEY: max(r["energy"] / r["level"], 0.1)}))
    fig = plotting.quality_figure(points, floor=1.0, metric=KEY, floor_label="noise level")
    print("wrote", plotting.save_figure(fig, path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="*", default=list(TARGETS))
    parser.add_argument("--out", default="fewstep_peers.jsonl")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--table", action="store_true", help="print the table of --out")
    parser.add_argument("--figure", help="draw energy / level against calls to this PNG")
    parser.add_argument("--figure-targets", nargs="*", default=["u2", "u4n", "patches64",
                                                                "patches192"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    run(args.targets, args.out, args.n, args.reps)
    if args.table:
        table(args.out)
    if args.figure:
        figure(args.out, args.figure, args.figure_targets)


if __name__ == "__main__":
    main()
