"""Train the digits feature network that ``scoresde.features.digits_extractor`` loads.

A fixed seed, the digits' own training split (``get_dataset("digits").train``, the split every
run uses; the held-out digits are never seen), Adam, 40 epochs of 64; the features scaled to
unit root-mean-square on the training digits. It writes the state dict to
``scoresde/weights/digits_features.pt`` (or ``--out``) and prints the held-out accuracy. With one
thread on one platform the file is the same each time; elsewhere it may differ by float
round-off, so a digits FID is comparable between machines when they use the same file (its
digest keys the reference cache).

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python tools/train_digits_features.py
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from scoresde.data import get_dataset
from scoresde.features import DIGITS_WEIGHTS, DigitsFeatures, to_extractor_range
from scoresde.utils import write_atomically


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DIGITS_WEIGHTS))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = get_dataset("digits")
    scale = dict(raw_scale=data.raw_scale, raw_offset=data.raw_offset, pixel_bits=None)
    x, y = to_extractor_range(data.train, **scale), data.train_labels
    x_test, y_test = to_extractor_range(data.test, **scale), data.test_labels
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    net = DigitsFeatures()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(args.epochs):
        net.train()
        for idx in torch.randperm(x.shape[0], generator=gen).split(64):
            opt.zero_grad()
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        # Features of unit root-mean-square on the training digits (KID's cubic kernel then has
        # numbers of order one); the ReLU commutes with the scale and the head undoes it, so
        # the logits are unchanged.
        rms = float(net.features(x).pow(2).mean().sqrt())
        linear = net.body[-2]
        linear.weight /= rms
        linear.bias /= rms
        net.head.weight *= rms
        accuracy = float((net(x_test).argmax(1) == y_test).float().mean())
        train_accuracy = float((net(x).argmax(1) == y).float().mean())
    state = {k: v.clone() for k, v in net.state_dict().items()}
    write_atomically(args.out, lambda f: torch.save(state, f))
    print(f"wrote {args.out}: held-out accuracy {accuracy:.4f} ({len(y_test)} digits), "
          f"train {train_accuracy:.4f}")


if __name__ == "__main__":
    main()
