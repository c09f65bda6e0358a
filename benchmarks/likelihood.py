"""Per-sample log-likelihood error and wall time: scoresde.log_likelihood against the reference.

The reference protocol is score_sde's: one Rademacher probe for the divergence of the whole
probability-flow drift, RK45 at rtol = atol = 1e-5, the whole batch solved as one scipy system
(so scipy's RMS error norm runs over the batch). It is written here, not in the library.

Every method gets the mixture's exact density at T as its prior, so the error measured is that of
the ODE and the divergence alone, against the exact ``log p_eps`` of the mixture.

    PYTHONPATH=$PWD python benchmarks/likelihood.py [--n 1000] [--seed 0] [--repeats 3]
        [--no-hutchinson] [--sdes vp subvp ve rf]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from scoresde import GaussianMixture, get_sde, log_likelihood
from scoresde.scipy_ode import solve_ode
from scoresde.utils import append_dims, batch_sum

EPS = 1e-5


def reference_log_likelihood(score_fn, sde, x, prior_logp, generator):
    """score_sde's protocol: one Rademacher probe of the full drift, one solve for the batch."""
    batch, dim = x.shape[0], x[0].numel()
    probe = (2 * torch.randint(0, 2, x.shape, generator=generator) - 1).to(x.dtype)
    calls = [0]

    def rhs(t, y):
        x_t = y[:, :dim].reshape(x.shape)
        tb = torch.full((batch,), min(t, sde.T), dtype=x.dtype)
        with torch.enable_grad():
            x_in = x_t.detach().requires_grad_(True)
            calls[0] += 1
            drift, diffusion = sde.sde(x_in, tb)
            drift = drift - append_dims(0.5 * diffusion**2, x.ndim) * score_fn(x_in, tb)
            (vjp,) = torch.autograd.grad(drift, x_in, probe)
        div = batch_sum(vjp * probe)
        return torch.cat([drift.detach().reshape(batch, dim), div[:, None]], dim=1)

    y0 = torch.cat([x.reshape(batch, dim), x.new_zeros(batch, 1)], dim=1)
    y1, _ = solve_ode(rhs, y0, EPS, sde.T, method="RK45", rtol=1e-5, atol=1e-5)
    return prior_logp(y1[:, :dim].reshape(x.shape)) + y1[:, dim], calls[0]


def methods():
    """(label, function(score_fn, sde, x, prior, generator) -> (logp, nfe))."""
    def ours(**kw):
        def run(score_fn, sde, x, prior, gen):
            logp, info = log_likelihood(score_fn, sde, x, prior_logp=prior, generator=gen, **kw)
            return logp, info["nfe"]
        return run

    return [
        ("reference (1 Rademacher probe, batch RMS, 1e-5)", reference_log_likelihood),
        ("exact, per-sample 1e-5 (default)", ours(divergence="exact")),
        ("exact, per-sample 1e-4", ours(divergence="exact", rtol=1e-4, atol=1e-4)),
        ("exact, per-sample 1e-3", ours(divergence="exact", rtol=1e-3, atol=1e-3)),
        ("exact, batch RMS 1e-5", ours(divergence="exact", error_norm="batch")),
        ("exact, batch RMS 1e-4", ours(divergence="exact", error_norm="batch", rtol=1e-4,
                                       atol=1e-4)),
        ("hutchinson 1 probe, per-sample 1e-5", ours(divergence="hutchinson", probes=1)),
        ("hutchinson 4 probes, per-sample 1e-5", ours(divergence="hutchinson", probes=4)),
        ("hutchinson 16 probes, per-sample 1e-5", ours(divergence="hutchinson", probes=16)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="test points per mixture")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs per row; the minimum wall time is reported")
    parser.add_argument("--no-hutchinson", action="store_true", help="skip the Hutchinson rows")
    parser.add_argument("--sdes", nargs="+", default=["vp", "subvp", "ve"],
                        help="names of scoresde.SDES")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small tensors: a second thread only contends on a loaded machine
    print("| mixture | SDE | method | NFE | min wall s | RMSE nats | max err nats |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for mix_name in ("ring", "narrow"):
        mixture = getattr(GaussianMixture, mix_name)()
        gen = torch.Generator().manual_seed(args.seed)
        x = mixture.sample(args.n, generator=gen, dtype=torch.float64)
        for sde_name in args.sdes:
            sde = get_sde(sde_name)
            exact = mixture.marginal_log_prob(x, EPS, sde)

            def prior(z, sde=sde, mixture=mixture):
                return mixture.marginal_log_prob(z, sde.T, sde)

            for label, run in methods():
                if args.no_hutchinson and label.startswith("hutchinson"):
                    continue
                walls = []
                for _ in range(max(args.repeats, 1)):  # same seed: same result, min time
                    gen = torch.Generator().manual_seed(args.seed + 1)
                    start = time.perf_counter()
                    logp, nfe = run(mixture.score_fn(sde), sde, x, prior, gen)
                    walls.append(time.perf_counter() - start)
                wall = min(walls)
                err = logp - exact
                rmse = math.sqrt(float(err.pow(2).mean()))
                print(f"| {mix_name} | {sde_name} | {label} | {nfe} | {wall:.2f} | {rmse:.2e} | "
                      f"{float(err.abs().max()):.2e} |", flush=True)


if __name__ == "__main__":
    main()
