"""Quality against NFE, wall time and loop overhead of every sampler, with exact mixture scores.

For each SDE (vp, subvp, ve) and target (the ring, and ``narrow`` with a std-0.01 component),
every solver runs at several step counts; each setting draws R independent samples of N points
and reports the energy distance to a fresh true draw of N points: its mean and sd over the R
draws, against the same statistic between two true draws (the noise level). A setting
"reaches the target" when its mean is below the true-vs-true mean + 3 sd / sqrt(R).

Overhead: the sampler's wall time over the time of the same number of score calls alone (on a
batch of the same shape), minus 1.

    PYTHONPATH=$PWD python benchmarks/samplers.py            # full, about 10 minutes
    PYTHONPATH=$PWD python benchmarks/samplers.py --quick    # a smoke run, about a minute
    PYTHONPATH=$PWD python benchmarks/samplers.py --overhead # loop overhead only, ~3 minutes
    PYTHONPATH=$PWD python benchmarks/samplers.py --fewstep  # windowed few-step grids, ~2 min
    PYTHONPATH=$PWD python benchmarks/samplers.py --pc       # pc's correctors at 1000 steps, ~8 min
    PYTHONPATH=$PWD python benchmarks/samplers.py --defaults # NFE to the target: defaults with
                                                             # the data's statistics vs window
    PYTHONPATH=$PWD python benchmarks/samplers.py --defaults --unseen 10 --no-baselines
    PYTHONPATH=$PWD python benchmarks/samplers.py --recheck u2/subvp u9n/subvp  # R = 8
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time

import torch

from scoresde import GaussianMixture, get_sde
from scoresde.sampling import sample
from scoresde.sampling.distances import energy_distance


def settings(quick: bool):
    """(label, solver, steps, options) to run; NFE is counted, not taken from here."""
    few = [(f"{s}/{g}", s, n, {"grid": g}) for s in ("dpmpp_2m", "heun", "euler")
           for g in ("edm", "log_snr") for n in ((4, 9) if quick else (4, 6, 9, 14, 24, 49))
           if not (s == "heun" and n > 24)]
    few = [(lab, s, n // 2 if s == "heun" else n, k) for lab, s, n, k in few]
    few += windowed(quick)
    slow = [("em", "em", n, {}) for n in ((100,) if quick else (100, 300))]
    slow += [("pc", "pc", n, {}) for n in ((50,) if quick else (100, 300))]
    slow += [("pc ancestral", "pc", n, {"predictor": "ancestral", "corrector": "none"})
             for n in ((50,) if quick else (100, 300))]
    slow += [("ode RK45", "ode", 1, {"rtol": r, "atol": r}) for r in ((1e-3,) if quick
                                                                       else (1e-3, 1e-5))]
    slow += [(f"torchsde {m}", "torchsde", n, {"method": m})
             for m, ns in (("euler", (100, 300)), ("srk", (30,)), ("reversible_heun", (300,)))
             for n in (ns[:1] if quick else ns)]
    return few + slow


WINDOW = {"sigma_max": 5.0, "sigma_min": 0.01}


def windowed(quick: bool):
    """Few-step solvers on grids inside the sigma window [0.01, 5] (one jump step at each end)."""
    return [(f"{s}/{g} window", s, n // 2 if s == "heun" else n, {"grid": g, **WINDOW})
            for s, g in (("dpmpp_2m", "log_snr"), ("dpmpp_2m", "edm"), ("heun", "log_snr"))
            for n in ((5, 9) if quick else (5, 7, 9, 14)) if s != "heun" or n // 2 >= 3]


def score_alone_time(score_fn, shape, sde, calls):
    """Seconds for ``calls`` score calls on a batch of ``shape`` at mid times."""
    x, t = torch.randn(shape), torch.full((shape[0],), 0.5 * sde.T)
    score_fn(x, t)
    start = time.perf_counter()
    for _ in range(calls):
        score_fn(x, t)
    return time.perf_counter() - start


def run(quick: bool, fewstep: bool = False) -> list[dict]:
    n, reps = (1000, 2) if quick and not fewstep else (2000, 5)
    rows = []
    for target in ("ring", "narrow"):
        mix = GaussianMixture.ring() if target == "ring" else GaussianMixture.narrow()
        gen = torch.Generator().manual_seed(1)
        null = [energy_distance(mix.sample(n, generator=gen), mix.sample(n, generator=gen))
                for _ in range(20)]
        level = statistics.mean(null) + 3 * statistics.stdev(null) / reps**0.5
        for sde_name in ("vp", "subvp", "ve"):
            sde = get_sde(sde_name)
            score_fn = mix.score_fn(sde)
            for label, solver, steps, options in (windowed(False) if fewstep else settings(quick)):
                stats, secs = [], []
                for r in range(reps):
                    g = torch.Generator().manual_seed(100 + r)
                    start = time.perf_counter()
                    x, info = sample(score_fn, sde, (n, 2), solver=solver, steps=steps,
                                     generator=g, **options)
                    secs.append(time.perf_counter() - start)
                    stats.append(energy_distance(x, mix.sample(n, generator=gen)))
                alone = score_alone_time(score_fn, (n, 2), sde, info["nfe"])
                wall = statistics.median(secs)
                rows.append(dict(target=target, sde=sde_name, label=label, steps=steps,
                                 nfe=info["nfe"], mean=statistics.mean(stats),
                                 sd=statistics.stdev(stats), level=level, wall=wall,
                                 overhead=wall / alone - 1, ok=statistics.mean(stats) < level))
                print(_fmt(rows[-1]), flush=True)
    return rows


def recorded_calls(score_fn, run):
    """The ``(x, t)`` of every score call ``run(score_fn)`` makes, cloned."""
    calls = []

    def recording(x, t):
        calls.append((x.clone(), t.clone()))
        return score_fn(x, t)

    run(recording)
    return calls


OVERHEAD_SETTINGS = (  # (label, solver, steps, options): about 500 score calls each
    ("em", "em", 500, {}), ("pc", "pc", 500, {}),
    ("pc ancestral", "pc", 500, {"predictor": "ancestral", "corrector": "none"}),
    *((f"torchsde {m}", "torchsde", 50 if m == "srk" else 500, {"method": m})
      for m in ("euler", "milstein", "srk", "reversible_heun")),
    ("dpmpp_2m", "dpmpp_2m", 500, {}))


def overhead(repeats: int = 7) -> None:
    """Loop overhead: the sampler's time over the time of its own score calls replayed alone.

    The baseline replays the exact inputs the sampler gave the score (the exact mixture score's
    cost depends on them a little), and each repeat times the sampler and the replay back to
    back, so a load spike on the shared machine hits both; min of ``repeats`` of each. Every
    setting makes about 500 score calls (torchsde's srk: 10 a step, so 50 steps).
    """
    mix, sde = GaussianMixture.ring(), get_sde("vp")
    score_fn, shape = mix.score_fn(sde), (2000, 2)
    print(f"\nLoop overhead ({shape[0]} points, 500 steps (srk 50), vp, ring, min of {repeats}):")
    print("| solver | NFE | sampler s | its score calls replayed s | overhead | "
          "loop with a free score s | loop / score calls |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, solver, steps, options in OVERHEAD_SETTINGS:
        def run(fn):
            return sample(fn, sde, shape, solver=solver, steps=steps,
                          generator=torch.Generator().manual_seed(0), **options)

        calls = recorded_calls(score_fn, run)
        free_out = calls[0][0].clone()  # a score that costs nothing: the loop's own time

        def free(x, t):
            return free_out

        wall, alone, loop = [], [], []
        for _ in range(repeats):
            start = time.perf_counter()
            run(score_fn)
            wall.append(time.perf_counter() - start)
            start = time.perf_counter()
            for x, t in calls:
                score_fn(x, t)
            alone.append(time.perf_counter() - start)
            start = time.perf_counter()
            run(free)
            loop.append(time.perf_counter() - start)
        print(f"| {label} | {len(calls)} | {min(wall):.2f} | {min(alone):.2f} | "
              f"{100 * (min(wall) / min(alone) - 1):+.1f}% | {min(loop):.3f} | "
              f"{100 * min(loop) / min(alone):.1f}% |", flush=True)


PC_TARGETS = {"ring": GaussianMixture.ring, "narrow": GaussianMixture.narrow,
              **{f"unseen({k})": (lambda k=k: GaussianMixture.unseen(k, narrow=True))
                 for k in range(3)}}


def pc_correctors(n: int = 1000, reps: int = 3) -> None:
    """``pc`` at its defaults (1000 steps, snr 0.16) with the paper's batch-averaged Langevin step
    and with the default one, on mixtures with narrow components.

    Each setting draws ``reps`` samples of ``n`` points; per draw, the energy distance to a fresh
    true draw and the mean exact ``log p`` of the samples minus that of the true draw, in units
    of its standard error (sd of ``log p`` over the two draws, / sqrt(n)); true draws give
    ``N(0, 1)`` there. Reached: energy distance within the noise level and mean |z| < 3.
    """
    print(f"\n| target | sde | corrector | energy dist. mean | noise level | "
          f"Δ mean log p ({reps} draws) | Δ / se | reached |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for target, make in PC_TARGETS.items():
        mix, gen = make(), torch.Generator().manual_seed(1)
        null = [energy_distance(mix.sample(n, generator=gen), mix.sample(n, generator=gen))
                for _ in range(20)]
        level = statistics.mean(null) + 3 * statistics.stdev(null) / reps**0.5
        for sde_name in ("vp", "subvp", "ve"):
            sde = get_sde(sde_name)
            for corrector in ("langevin_batch", "langevin"):
                eds, deltas, zs = [], [], []
                for r in range(reps):
                    x, _ = sample(mix.score_fn(sde), sde, (n, 2), solver="pc", steps=1000,
                                  corrector=corrector, generator=torch.Generator().manual_seed(r))
                    ref = mix.sample(n, generator=gen)
                    lp, lq = mix.log_prob(x), mix.log_prob(ref)
                    eds.append(energy_distance(x, ref))
                    deltas.append(float(lp.mean() - lq.mean()))
                    zs.append(deltas[-1] / float((lp.var() / n + lq.var() / n) ** 0.5))
                ok = statistics.mean(eds) < level and statistics.mean(map(abs, zs)) < 3
                print(f"| {target} | {sde_name} | {corrector} | {statistics.mean(eds):.1e} | "
                      f"{level:.1e} | {' '.join(f'{d:+.2f}' for d in deltas)} | "
                      f"{' '.join(f'{z:+.1f}' for z in zs)} | {'yes' if ok else 'no'} |",
                      flush=True)


def _moments(mix):
    """The mixture's exact mean (D,) and covariance (D, D), as a user's data statistics."""
    return mix.moments()


def defaults_nfe(n: int = 2000, reps: int = 3, seeds=range(4), baselines: bool = True) -> None:
    """Fewest NFE (of 6, 8, 10, 12, 15, 20) reaching the target, per SDE and mixture: dpmpp_2m
    on today's default grid and on the tuned window (``baselines``), and the few-step defaults
    from the data's mean and covariance (``data_cov``) or mean and std (``data_std``) with
    dpmpp_2m and unipc."""
    ways = {"edm (no stats)": ("dpmpp_2m", {}, 1),
            "tuned window": ("dpmpp_2m", dict(grid="log_snr", **WINDOW), 1)} if baselines else {}
    for solver in ("dpmpp_2m", "unipc"):
        ways[f"{solver}, data_cov"] = (solver, "cov", 0)
        ways[f"{solver}, data_std"] = (solver, "std", 0)
    print(f"\nNFE to reach the target, R = {reps} draws of {n}:")
    print("| mixture | sde | " + " | ".join(ways) + " |")
    print("|" + " --- |" * (2 + len(ways)))
    mixes = [("ring", GaussianMixture.ring()), ("narrow", GaussianMixture.narrow())]
    mixes += [(f"unseen({s}{', narrow' if nar else ''})", GaussianMixture.unseen(s, narrow=nar))
              for s in seeds for nar in (False, True)]
    for name, mix in mixes:
        gen = torch.Generator().manual_seed(1)
        null = [energy_distance(mix.sample(n, generator=gen), mix.sample(n, generator=gen))
                for _ in range(20)]
        level = statistics.mean(null) + 3 * statistics.stdev(null) / reps**0.5
        mean, cov = _moments(mix)
        stats = {"cov": dict(data_mean=mean, data_cov=cov),
                 "std": dict(data_mean=mean, data_std=float(cov.diagonal().mean().sqrt()))}
        for sde_name in ("vp", "subvp", "ve"):
            sde = get_sde(sde_name)
            cells = [_fewest(mix, sde, n, reps, gen, level, solver,
                             stats[kw] if isinstance(kw, str) else kw, shift)
                     for solver, kw, shift in ways.values()]
            print(f"| {name} | {sde_name} | " + " | ".join(cells) + " |", flush=True)


def _fewest(mix, sde, n, reps, gen, level, solver, options, shift):
    """The fewest NFE of the ladder whose mean energy distance is below ``level``, or '> 20'."""
    for nfe in (6, 8, 10, 12, 15, 20):
        stats = [energy_distance(sample(mix.score_fn(sde), sde, (n, 2), solver=solver,
                                        steps=nfe - shift, generator=torch.Generator()
                                        .manual_seed(100 + r), **options)[0],
                                 mix.sample(n, generator=gen)) for r in range(reps)]
        if statistics.mean(stats) < level:
            return str(nfe)
    return "> 20"


def _mixture(code: str):
    """``ring``, ``narrow``, ``u<k>`` (``unseen(k)``) or ``u<k>n`` (``unseen(k, narrow=True)``)."""
    if code in ("ring", "narrow"):
        return getattr(GaussianMixture, code)()
    return GaussianMixture.unseen(int(code[1:].rstrip("n")), narrow=code.endswith("n"))


def recheck(cases, n: int = 2000, reps: int = 8) -> None:
    """Cells that missed at R = 3, redrawn: unipc at 10 calls with the data's mean and
    covariance and the adaptive ODE (RK45, 1e-5) on prior seeds 200.., fresh references, the
    level from 30 true-vs-true pairs; mean energy distance over the level (< 1: reached)."""
    print(f"\n| mixture | sde | unipc, 10 NFE | ode RK45 1e-5 |  (R = {reps} draws of {n})")
    print("| --- | --- | --- | --- |")
    for case in cases:
        code, sde_name = case.split("/")
        mix, sde, gen = _mixture(code), get_sde(sde_name), torch.Generator().manual_seed(11)
        null = [energy_distance(mix.sample(n, generator=gen), mix.sample(n, generator=gen))
                for _ in range(30)]
        level = statistics.mean(null) + 3 * statistics.stdev(null) / reps**0.5
        mean, cov = _moments(mix)
        cells = []
        for solver, steps, kw in (("unipc", 10, dict(data_mean=mean, data_cov=cov)),
                                  ("ode", 1, dict(rtol=1e-5, atol=1e-5))):
            eds = []
            for r in range(reps):
                x, info = sample(mix.score_fn(sde), sde, (n, 2), solver=solver, steps=steps,
                                 generator=torch.Generator().manual_seed(200 + r), **kw)
                eds.append(energy_distance(x, mix.sample(n, generator=gen)))
            cells.append(f"{statistics.mean(eds) / level:.2f} ({info['nfe']} NFE)")
        print(f"| {code} | {sde_name} | " + " | ".join(cells) + " |", flush=True)


def _fmt(r: dict) -> str:
    return (f"| {r['target']} | {r['sde']} | {r['label']} | {r['steps']} | {r['nfe']} | "
            f"{r['mean']:.1e} ± {r['sd']:.1e} | {r['level']:.1e} | {'yes' if r['ok'] else 'no'} | "
            f"{r['wall']:.2f} | {100 * r['overhead']:+.0f}% |")


def summary(rows: list[dict]) -> None:
    print("\nFewest NFE reaching the target, per target and SDE:")
    for target in ("ring", "narrow"):
        for sde_name in ("vp", "subvp", "ve"):
            ok = [r for r in rows if r["target"] == target and r["sde"] == sde_name and r["ok"]]
            best = min(ok, key=lambda r: r["nfe"], default=None)
            print(f"- {target} / {sde_name}: " + (f"{best['nfe']} NFE ({best['label']})"
                                                 if best else "none reached it"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer settings and draws")
    parser.add_argument("--fewstep", action="store_true",
                        help="only the few-step solvers on the sigma window, full draws")
    parser.add_argument("--overhead", action="store_true", help="only the loop-overhead table")
    parser.add_argument("--pc", action="store_true",
                        help="only pc's batch-averaged against its default Langevin step")
    parser.add_argument("--defaults", action="store_true",
                        help="only NFE to the target: few-step defaults against the window")
    parser.add_argument("--unseen", type=int, default=4, metavar="K",
                        help="with --defaults: the mixtures unseen(0 .. K-1), both kinds")
    parser.add_argument("--recheck", nargs="+", metavar="MIX/SDE",
                        help="only redraw cells (ring, narrow, u<k>, u<k>n; vp, subvp, ve)")
    parser.add_argument("--no-baselines", action="store_true",
                        help="with --defaults: only the columns with the data's statistics")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.overhead:
        return overhead()
    if args.pc:
        return pc_correctors()
    if args.recheck:
        return recheck(args.recheck)
    if args.defaults:
        return defaults_nfe(seeds=range(args.unseen), baselines=not args.no_baselines)
    print(f"# {datetime.date.today()}, torch {torch.__version__}, 1 thread")
    print("| target | sde | solver | steps | NFE | energy dist. mean ± sd | noise level | "
          "reached | wall s | loop overhead |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    summary(run(args.quick, args.fewstep))


if __name__ == "__main__":
    main()
