"""Few steps on a trained model: dpmpp_2m and unipc with and without the data's statistics.

Trains the demo's model (VP on 8gaussians, the training defaults), then draws 1000 points with
``dpmpp_2m`` and ``unipc`` at 10 and 15 steps, three seeds each: on the solver's default grid,
with the data's mean and covariance (``Dataset.moments``, what ``scoresde sample`` and the demo
pass), and with a scalar ``data_std``. Prints the mean exact log-density of the samples under
the data (the data's own held-out points give the reference) and the NFE.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/fewstep_trained.py   # about a minute
"""

from __future__ import annotations

import tempfile

import torch

import scoresde
from scoresde.toys import toy_log_prob


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as run:
        scoresde.train(run, data="8gaussians", progress=False)
        model, sde, _ = scoresde.load_run(run)
    data = scoresde.data.get_dataset("8gaussians")
    mean, cov = data.moments()
    log_p = toy_log_prob("8gaussians")
    print(f"held-out data: mean log p {float(log_p(data.test[:1000]).mean()):.3f}")
    ways = {"default grid": {}, "data_mean + data_cov": dict(data_mean=mean, data_cov=cov),
            "data_std": dict(data_std=float(cov.diagonal().mean().sqrt()))}
    print("| statistics | solver | steps | NFE | mean log p (3 seeds) |")
    print("| --- | --- | ---: | ---: | --- |")
    for (name, kw), solver in ((way, s) for way in ways.items() for s in ("dpmpp_2m", "unipc")):
        for steps in (10, 15):
            values = []
            for seed in range(3):
                with torch.no_grad():
                    x, info = scoresde.sample(model, sde, (1000, 2), solver=solver,
                                              steps=steps, generator=torch.Generator()
                                              .manual_seed(seed), **kw)
                values.append(float(log_p(x).mean()))
            print(f"| {name} | {solver} | {steps} | {info['nfe']} | "
                  f"{', '.join(f'{v:.3f}' for v in values)} |")


if __name__ == "__main__":
    main()
