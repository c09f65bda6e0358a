r"""Our training step against a bare PyTorch step, in one process, in alternating blocks.

``benchmarks/train_images.py`` times whole runs, each in a process of its own; on the CPU the
difference between two processes is dominated by how glibc's malloc hands memory back to the
system (a process whose activations are unmapped after every step page-faults them in again
on the next: up to 10-15% of a small network's step, depending on the process's allocation
history, not on its code). This script removes that: it builds our loop's parts exactly as
``scoresde.train`` does (``loop.build_parts``) and a bare model, optimizer and EMA beside them
in the same process, then times blocks of steps of each in turn (ours, bare, bare, ours, ...):

- ours: ``loop._draw_batch`` (per-step images, stratified times, noise from the run's
  generator) and ``loop._optimizer_step`` (learning-rate schedule, the loss, backward, clipping,
  Adam, the EMA with its warmup);
- bare: ``train_images.bare_step``, a batch of the same images, uniform times and noise, the
  DSM loss, backward, clipping, Adam and an EMA of the weights.

Reported: milliseconds per step of each (the minimum and the median over blocks) and our
overhead ``ours / bare - 1``.

Usage::

    PYTHONPATH=$PWD python benchmarks/loop_overhead.py --net ddpmpp_small8 --compile both
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

import scoresde
import scoresde.loop as loop
from scoresde.data import run_dataset
from scoresde.runs import read_config
from train_images import bare_step  # the same bare step as the whole-run comparison


def steps(run: str, compiled: bool, batch: int):
    """``(ours, bare)``: one training step each, on the run's network, data and batch size
    (the bare one is ``train_images.py``'s)."""
    config = dict(read_config(run), steps=10**9, compile=compiled)
    sde = scoresde.get_sde(**config["sde"])
    proc = loop.Process(0, 1, torch.device("cpu"), run)
    parts = loop.build_parts(config, sde, run_dataset(config), proc, None)
    opts = scoresde.TrainConfig.from_run(config)
    counter = [0]

    def ours():
        batch_ = loop._draw_batch(parts, opts, proc)
        loop._optimizer_step(parts, opts, proc, counter[0], batch_)
        counter[0] += 1

    return ours, bare_step(run, batch, compiled=compiled)


def measure(ours, bare, blocks: int, per_block: int, warmup: int) -> dict:
    """Milliseconds per step of each, block by block, the order alternating."""
    for step in (ours, bare):
        for _ in range(warmup):
            step()
    times = {"ours": [], "bare": []}
    for block in range(blocks):
        order = (("ours", ours), ("bare", bare))
        for name, step in order if block % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            for _ in range(per_block):
                step()
            times[name].append(1000 * (time.perf_counter() - start) / per_block)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--net", default="ddpmpp_small8")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--compile", choices=["no", "yes", "both"], default="no")
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--per-block", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.net} on {args.data}, batch "
          f"{args.batch}, {args.blocks} blocks of {args.per_block} steps each")
    print("| compile | ours ms/step (min, median) | bare ms/step (min, median) | overhead (min) "
          "| overhead (median) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as folder:
        run = f"{folder}/run"  # one step, for the resolved config the parts are built from
        scoresde.train(run, data=args.data, net=args.net, batch_size=args.batch, steps=1,
                       progress=False)
        for compiled in {"no": [False], "yes": [True], "both": [False, True]}[args.compile]:
            times = measure(*steps(run, compiled, args.batch), args.blocks, args.per_block,
                            args.warmup)
            lo = {k: min(v) for k, v in times.items()}
            mid = {k: statistics.median(v) for k, v in times.items()}
            print(f"| {'yes' if compiled else 'no'} | {lo['ours']:.2f}, {mid['ours']:.2f} "
                  f"| {lo['bare']:.2f}, {mid['bare']:.2f} | {lo['ours'] / lo['bare'] - 1:+.1%} "
                  f"| {mid['ours'] / mid['bare'] - 1:+.1%} |", flush=True)


if __name__ == "__main__":
    main()
