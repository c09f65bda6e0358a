"""Conditional generation: guidance weight against class accuracy and diversity; imputation gaps.

Digits: a conditional score MLP on the 64 pixels (labels dropped 10% of the time) and a noisy
classifier are trained on scikit-learn's digits; a logistic regression trained on clean digits
judges samples drawn with classifier-free guidance (weight w) and classifier guidance (scale).
Diversity is the mean pairwise distance between samples of one class, over the same for held-out
digits of that class (1 = as diverse as the data).

2D mixtures: the classes are the components, so accuracy is judged by the exact posterior and
the gap to the exact conditional by the Kolmogorov-Smirnov distance to draws from it (beside the
distance between two exact draws of the same size, the noise floor). Rows: a model trained for a
few seconds and the exact conditional score, both with guidance; imputation of one coordinate
given the other by the replacement method, against ``GaussianMixture.condition``.

    PYTHONPATH=$PWD python benchmarks/conditional.py            # about 10 minutes on 2 cores
    PYTHONPATH=$PWD python benchmarks/conditional.py --quick    # about 2 minutes
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

import scoresde as S

WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0)


def ks(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().sort().values, b.double().sort().values
    grid = torch.cat([a, b])
    return float((torch.searchsorted(a, grid, right=True) / len(a)
                  - torch.searchsorted(b, grid, right=True) / len(b)).abs().max())


def mean_pairwise(x: torch.Tensor) -> float:
    d = torch.cdist(x, x)
    n = len(x)
    return float(d.sum() / (n * (n - 1)))


def digits(args, root: str) -> None:
    from sklearn.linear_model import LogisticRegression
    ds = S.data.get_dataset("digits")
    flat = lambda x: x.reshape(len(x), -1).numpy()  # noqa: E731
    judge = LogisticRegression(max_iter=2000).fit(flat(ds.train), ds.train_labels.numpy())
    test_acc = judge.score(flat(ds.test), ds.test_labels.numpy())
    data_div = np.mean([mean_pairwise(ds.test[ds.test_labels == k].reshape(-1, 64))
                        for k in range(10)])
    kw = dict(data="digits", net="mlp", net_params=dict(hidden=256, depth=4), steps=args.steps,
              batch_size=128, progress=False, log_every=args.steps, checkpoint_every=args.steps)
    t0 = time.perf_counter()
    S.train(f"{root}/digits", conditional=True, **kw)
    t_score = time.perf_counter() - t0
    t0 = time.perf_counter()
    S.train_classifier(f"{root}/digits_clf", **kw)
    t_clf = time.perf_counter() - t0
    model, sde, _ = S.load_run(f"{root}/digits")
    clf, _, _ = S.load_run(f"{root}/digits_clf")
    print(f"\n### Digits ({args.steps} training steps: score model {t_score:.0f} s, classifier "
          f"{t_clf:.0f} s; judge: logistic regression, {test_acc:.3f} on held-out digits)\n")
    print(f"{args.per_class} samples per class, dpmpp_2m with {args.steps_sample} steps; "
          "diversity = within-class mean pairwise distance / the held-out data's "
          f"({data_div:.2f}).\n")
    print("| guidance | weight | judge accuracy | diversity | wall s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    y = torch.arange(10).repeat_interleave(args.per_class)
    rows = [("classifier-free", w, S.classifier_free_guidance(model, y, w)) for w in WEIGHTS]
    rows += [("classifier", sc, S.classifier_guidance(lambda x, t: model(x, t), clf, y, sc))
             for sc in (1.0, 4.0)]
    for name, w, score in rows:
        t0 = time.perf_counter()
        x, _ = S.sample(score, sde, (len(y), 1, 8, 8), solver="dpmpp_2m",
                        steps=args.steps_sample, generator=torch.Generator().manual_seed(0))
        wall = time.perf_counter() - t0
        x = x.clamp(-1, 1)
        acc = float((judge.predict(flat(x)) == y.numpy()).mean())
        div = np.mean([mean_pairwise(x[y == k].reshape(-1, 64)) for k in range(10)]) / data_div
        print(f"| {name} | {w:g} | {acc:.3f} | {div:.2f} | {wall:.1f} |")
    if args.out:  # the last row's samples, (10 * per_class, 1, 8, 8), classes in order
        np.save(args.out, x.numpy())


def mixtures_guidance(args, root: str) -> None:
    mix = S.GaussianMixture([[-1.0, 0.0], [1.0, 0.0]], [torch.eye(2).tolist()] * 2)
    n = args.n
    t0 = time.perf_counter()
    S.train(f"{root}/mix", data=mix, conditional=True, steps=400, batch_size=256,
            net_params=dict(hidden=64, depth=2), progress=False, log_every=400,
            checkpoint_every=400)
    t_train = time.perf_counter() - t0
    model, sde, _ = S.load_run(f"{root}/mix")
    y = torch.arange(n) % 2
    truth = torch.cat([mix.component(k).sample(n // 2, torch.Generator().manual_seed(7 + k))
                       for k in range(2)])
    again = torch.cat([mix.component(k).sample(n // 2, torch.Generator().manual_seed(9 + k))
                       for k in range(2)])
    floor = ks(again[:, 0], truth[:, 0])
    print(f"\n### Two overlapping classes, N((-1, 0), I) and N((1, 0), I) (VP; trained model: "
          f"400 steps, {t_train:.1f} s)\n")
    print(f"{n} samples, half per class, euler 25 steps. Accuracy: share on the requested "
          "class's side (exact posterior argmax; Phi(1) = 0.841 for exact class draws). Gap: KS "
          "of the first coordinate to exact class-conditional draws, sorted by class "
          f"(noise floor, exact vs exact: {floor:.3f}).\n")
    print("| score | w | accuracy | KS gap |")
    print("| --- | ---: | ---: | ---: |")
    exact = mix.conditional_score_fn(sde)
    for name, fn, nc in (("trained", model, None), ("exact", exact, 2)):
        for w in WEIGHTS:
            x, _ = S.sample(S.classifier_free_guidance(fn, y, w, num_classes=nc), sde, (n, 2),
                            solver="euler", steps=25, generator=torch.Generator().manual_seed(0))
            acc = float(((x[:, 0] > 0).long() == y).float().mean())
            x_sorted = torch.cat([x[y == k] for k in range(2)])
            print(f"| {name} | {w:g} | {acc:.3f} | {ks(x_sorted[:, 0], truth[:, 0]):.3f} |")


def imputation(args) -> None:
    eye = torch.eye(2)
    cases = [
        ("grid 3x3 (product)", S.GaussianMixture.grid(), 1.45),
        ("ring of 8", S.GaussianMixture.ring(), 2.0),
        ("two columns, offset rows", S.GaussianMixture([[-1.5, -2.0], [1.5, 2.0]],
                                                       [(0.5 * eye).tolist()] * 2), 0.3),
        ("two correlated", S.GaussianMixture([[-2.0, 0.0], [2.0, 1.0]],
                                             [[[1, 0.8], [0.8, 1]], [[1, -0.5], [-0.5, 1]]],
                                             [0.4, 0.6]), 0.5),
    ]
    solvers = [("pc", 100), ("em", 200), ("euler", 50), ("heun", 25)]
    if not args.quick:
        solvers.insert(1, ("pc", 500))
    n = args.n
    print(f"\n### Imputation of x_2 given x_1 (VP, {n} draws; KS to exact conditional draws; "
          "the noise floor is the KS between two exact draws)\n")
    print("| mixture | x_1 | floor | " + " | ".join(f"{s} {k}" for s, k in solvers) + " |")
    print("| --- | ---: | ---: | " + " | ".join("---:" for _ in solvers) + " |")
    sde = S.VPSDE()
    known = torch.tensor([True, False])
    for name, mix, v in cases:
        vv = torch.tensor([v, 0.0])
        cond = mix.condition(known, vv)
        truth = cond.sample(n, torch.Generator().manual_seed(2))[:, 0]
        floor = ks(cond.sample(n, torch.Generator().manual_seed(3))[:, 0], truth)
        cells = []
        for solver, steps in solvers:
            x, _ = S.impute(mix.score_fn(sde), sde, vv.expand(n, 2).clone(), known,
                            solver=solver, steps=steps, generator=torch.Generator().manual_seed(1))
            cells.append(f"{ks(x[:, 1], truth):.3f}")
        print(f"| {name} | {v:g} | {floor:.3f} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and samples")
    parser.add_argument("--out", default=None, help="save the last digits samples (.npy)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.steps = 600 if args.quick else 4000
    args.per_class = 20 if args.quick else 50
    args.steps_sample = 20 if args.quick else 40
    args.n = 1000 if args.quick else 4000
    with tempfile.TemporaryDirectory() as root:
        mixtures_guidance(args, root)
        imputation(args)
        digits(args, root)


if __name__ == "__main__":
    main()
