r"""Training throughput on images: our loop against a bare PyTorch loop over the same network.

For each case (a network, an image size, a precision, compiled or not) this trains with
``scoresde.train`` and times the steps after ``--warmup`` (on the CPU through a callback, on a
GPU from the run's ``metrics.jsonl``; neither the first step, which compiles, nor the checkpoint
is counted), then runs a bare loop
over the same network (rebuilt from the run's ``config.json``), batch size, precision and
compilation: a batch of the same images, uniform times and noise, the DSM loss, backward,
gradient clipping, Adam and an EMA of the weights; nothing else. Reported: images per second of
each, and our loop's overhead, ``bare / ours - 1`` in time per image, by the wall clock and by
the process's CPU time (steadier on a machine shared with other work). Each loop runs
``--repeats`` times, alternating which goes first, each in a fresh Python process of its own
(so neither inherits the other's compiled code, allocator or cache state), and the best of
each is kept. ``--profile`` instead splits our loop's CPU time per step into its pieces.

Data: ``digits`` (scikit-learn's 8x8 digits) at resolution 8; at other resolutions ``tiled``
(the digits tiled to R x R) or ``random`` (uniform in [-1, 1]), written to a ``.npy`` of
``(N, C, R, R)`` images.

Usage::

    PYTHONPATH=$PWD python benchmarks/train_images.py                        # the table below
    PYTHONPATH=$PWD python benchmarks/train_images.py --cases digits8 --precisions fp32 bf16 \
        --compile both
    PYTHONPATH=$PWD python benchmarks/train_images.py --net ddpmpp_small32 --cases tiled32
    PYTHONPATH=$PWD python benchmarks/train_images.py --device cuda --batch 128 --steps 60 \
        --precisions fp32 bf16 fp16 --compile both --net ddpmpp_cifar10 --cases random32

``--net`` is any name ``train(net=...)`` takes (a network of ``scoresde.models.NETS`` or a named
preset), ``--net-params`` a JSON object of keywords over it.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

import scoresde
from scoresde.losses import dsm_loss
from scoresde.runs import build_model, read_config
from scoresde.hardware import autocast, compile_model

CASES = {"digits8": ("digits", 8), "tiled16": ("tiled", 16), "tiled32": ("tiled", 32),
         "random16": ("random", 16), "random32": ("random", 32)}


def image_data(kind: str, resolution: int, channels: int, folder: str) -> str:
    """``"digits"`` or the path of a ``.npy`` of ``(N, C, R, R)`` images in [-1, 1]."""
    if kind == "digits":
        return "digits"
    from sklearn.datasets import load_digits

    digits = load_digits().images[:, None] / 8 - 1  # (1797, 1, 8, 8)
    reps = math.ceil(resolution / 8)
    if kind == "tiled":
        x = np.tile(digits, (1, channels, reps, reps))[..., :resolution, :resolution]
    else:
        x = np.random.default_rng(0).uniform(-1, 1, (len(digits), channels, resolution,
                                                     resolution))
    path = os.path.join(folder, f"{kind}{resolution}.npy")
    np.save(path, x.astype(np.float32))
    return path


def _clocks() -> tuple[float, float]:
    """Wall and CPU seconds (all threads of this process)."""
    return time.perf_counter(), time.process_time()


def _rates(start, end, args) -> dict:
    """Images per wall second and per CPU second between two ``_clocks()``."""
    images = args.steps * args.batch
    return {"wall": images / (end[0] - start[0]), "cpu": images / (end[1] - start[1])}


def ours(data: str, args, precision: str, compiled: bool, folder: str) -> tuple[dict, str]:
    """Images per second of ``scoresde.train`` after the warmup steps, and its run folder.

    On the CPU both clocks are read by a callback at the first and last timed step (a
    callback costs nothing there), and the run records every ``--log-every`` steps, as a run
    does; on a GPU the wall times of the run's records are used (a callback would make the
    loop wait for the device every step), so it records every ``gcd(warmup, warmup + steps)``
    steps."""
    run = os.path.join(folder, f"run-{precision}-{compiled}")
    marks = {}
    timed = (args.warmup, args.warmup + args.steps)
    log_every = args.log_every if args.device == "cpu" else math.gcd(*timed)

    def callback(done, record):
        if done in timed:
            marks[done] = _clocks()

    scoresde.train(run, data=data, net=args.net, net_params=json.loads(args.net_params),
                   batch_size=args.batch, steps=timed[1], log_every=log_every,
                   checkpoint_every=10**9, precision=precision, compile=compiled,
                   device=args.device, progress=False, channels_last=args.channels_last,
                   batch_gpu=args.batch_gpu, callback=callback if args.device == "cpu" else None)
    if args.device == "cpu":
        return _rates(marks[timed[0]], marks[timed[1]], args), run
    records = {r["step"]: r for r in map(json.loads, open(os.path.join(run, "metrics.jsonl")))}
    first, last = (records[s]["elapsed_s"] for s in timed)
    return {"wall": args.steps * args.batch / (last - first), "cpu": math.nan}, run


def bare_step(run: str, batch: int, precision: str = "fp32", compiled: bool = False,
              device: str = "cpu", channels_last: bool = False):
    """One step of a plain loop over the run's network (rebuilt from its ``config.json``) and
    images: a batch of them, uniform times and noise, the DSM loss, backward, clipping, Adam and
    an EMA of the weights; nothing else. Returns the step, a function of no arguments."""
    config = read_config(run)
    sde = scoresde.get_sde(**config["sde"])
    dev = torch.device(device)
    torch.manual_seed(0)
    model = build_model(config, sde).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True if precision == "fp16" else None)
    scaler = torch.amp.GradScaler(dev.type) if precision == "fp16" else None
    forward = compile_model(model) if compiled else model
    shape = (batch, *config["data_shape"])
    train_x = scoresde.data.get_dataset(config["data"]).train.to(dev)  # the same images

    def step() -> None:
        x0 = train_x[torch.randint(0, len(train_x), (batch,), device=dev)]
        t = torch.rand(batch, device=dev) * (1 - 1e-5) + 1e-5
        z = torch.randn(shape, device=dev)
        with autocast(precision, dev):
            loss = dsm_loss(forward, sde, x0, t=t, noise=z).mean()
        opt.zero_grad(set_to_none=True)
        (loss if scaler is None else scaler.scale(loss)).backward()
        if scaler is not None:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if scaler is None:
            opt.step()
        else:
            scaler.step(opt)
            scaler.update()
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1e-3)

    return step


def bare(run: str, args, precision: str, compiled: bool) -> dict:
    """Images per second of a plain loop (:func:`bare_step`) over the run's network, batch and
    precision."""
    step = bare_step(run, args.batch, precision, compiled, args.device, args.channels_last)
    dev = torch.device(args.device)
    start = None
    for done in range(args.warmup + args.steps):
        if done == args.warmup:
            _sync(dev)
            start = _clocks()
        step()
    _sync(dev)
    return _rates(start, _clocks(), args)


def profile(data: str, args, precision: str, compiled: bool, folder: str) -> dict:
    """CPU milliseconds per step in each piece of our loop (``--profile``): the network's
    forward and backward, what a bare loop also does (clipping, Adam, the EMA), and what only
    ours does (drawing the batch with its stratified times, the records), after the warmup."""
    import collections
    import functools

    import scoresde.loop as loop

    spent = collections.defaultdict(float)
    counting = [False]

    def timed(name, fn):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            start = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                if counting[0]:
                    spent[name] += time.process_time() - start
        return wrapper

    pieces = {"draw batch": "_draw_batch", "forward+backward": "_accumulate", "clip": "clip_norm",
              "ema": "_update_ema", "step (all)": "_optimizer_step"}
    saved = {attr: getattr(loop, attr) for attr in pieces.values()}
    saved_record, saved_adam = loop._Recorder.record, torch.optim.Adam.step
    marks = {}

    def callback(done, record):
        if done in (args.warmup, args.warmup + args.steps):
            marks[done] = time.process_time()
            counting[0] = True

    try:
        for name, attr in pieces.items():
            setattr(loop, attr, timed(name, saved[attr]))
        loop._Recorder.record = timed("records", saved_record)
        torch.optim.Adam.step = timed("adam", saved_adam)
        scoresde.train(os.path.join(folder, f"profile-{precision}-{compiled}"), data=data, net=args.net,
                       net_params=json.loads(args.net_params), batch_size=args.batch,
                       steps=args.warmup + args.steps, precision=precision, progress=False,
                       checkpoint_every=10**9, log_every=args.warmup + args.steps,
                       compile=compiled, callback=callback)
    finally:
        for attr, fn in saved.items():
            setattr(loop, attr, fn)
        loop._Recorder.record, torch.optim.Adam.step = saved_record, saved_adam
    total = marks[args.warmup + args.steps] - marks[args.warmup]
    out = {name: 1000 * v / args.steps for name, v in spent.items()}
    out["per step (all)"] = 1000 * total / args.steps
    return out


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _in_own_process(which: str, data: str, precision: str, compiled: bool, folder: str,
                    run: str) -> dict:
    """The rates of ``ours`` or ``bare`` measured in a fresh process (``--worker``)."""
    argv = [a for a in sys.argv[1:] if a != "--in-process"]
    command = [sys.executable, os.path.abspath(__file__), *argv, "--worker", which,
               "--worker-data", data, "--worker-case", json.dumps([precision, compiled]),
               "--worker-folder", folder, "--worker-run", run]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _worker(args) -> None:
    """``--worker ours|bare``: one measurement, printed as a JSON line."""
    precision, compiled = json.loads(args.worker_case)
    if args.worker == "ours":
        rate, run = ours(args.worker_data, args, precision, compiled, args.worker_folder)
        os.replace(run, args.worker_run)
    else:
        rate = bare(args.worker_run, args, precision, compiled)
    print(json.dumps(rate))


def measure(data: str, args, precision: str, compiled: bool, folder: str):
    """Best images per second of ours and of the bare loop over ``--repeats`` runs of each,
    and the network's parameter count. The bare loop reads the network from the first run of
    ours, so ours goes first, then the order alternates."""
    rate, plain = {"wall": 0, "cpu": 0}, {"wall": 0, "cpu": 0}
    case = f"{precision}-{'compiled' if compiled else 'eager'}"
    first = os.path.join(folder, f"ours-{case}-0")
    for repeat in range(args.repeats):
        got, run = {}, os.path.join(folder, f"ours-{case}-{repeat}")
        for which in ("ours", "bare") if repeat % 2 == 0 else ("bare", "ours"):
            if args.in_process and which == "ours":
                got[which], made = ours(data, args, precision, compiled, folder)
                os.replace(made, run)
            elif args.in_process:
                got[which] = bare(first, args, precision, compiled)
            else:
                got[which] = _in_own_process(which, data, precision, compiled, folder,
                                             run if which == "ours" else first)
        rate = {k: max(rate[k], got["ours"][k]) for k in rate}
        plain = {k: max(plain[k], got["bare"][k]) for k in plain}
    return rate, plain, read_config(first)["num_params"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=["digits8", "tiled16", "tiled32"],
                        choices=list(CASES))
    parser.add_argument("--net", default="unet")
    parser.add_argument("--net-params", default="{}", help="JSON keywords over --net's")
    parser.add_argument("--channels", type=int, default=1, help="channels of tiled/random data")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"],
                        choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--compile", choices=["no", "yes", "both"], default="no")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batch-gpu", type=int, default=None)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12, help="timed steps")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    parser.add_argument("--log-every", type=int, default=100,
                        help="our loop's records (CPU; as train's default)")
    parser.add_argument("--profile", action="store_true",
                        help="CPU ms per step in each piece of our loop instead (CPU only)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--in-process", action="store_true",
                        help="run both loops in this process (faster, but the second inherits "
                             "the first's compiled code and memory state)")
    for name in ("worker", "worker-data", "worker-case", "worker-folder", "worker-run"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        return _worker(args)
    compiles = {"no": [False], "yes": [True], "both": [False, True]}[args.compile]
    if args.profile:
        for case in args.cases:
            with tempfile.TemporaryDirectory() as folder:
                data = image_data(*CASES[case], args.channels, folder)
                for precision in args.precisions:
                    for compiled in compiles:
                        ms = profile(data, args, precision, compiled, folder)
                        print(case, precision, "compiled" if compiled else "eager",
                              "CPU ms per step:",
                              ", ".join(f"{k} {v:.1f}" for k, v in ms.items()), flush=True)
        return
    print(f"torch {torch.__version__}, {args.device}, {args.threads} threads, batch "
          f"{args.batch}, {args.steps} timed steps after {args.warmup}, net {args.net} "
          f"{args.net_params}")
    print("| data | params | precision | compile | ours img/s | bare img/s | overhead (wall) "
          "| overhead (CPU time) |")
    print("| --- | ---: | --- | --- | ---: | ---: | ---: | ---: |")
    for case in args.cases:
        kind, resolution = CASES[case]
        with tempfile.TemporaryDirectory() as folder:
            data = image_data(kind, resolution, args.channels, folder)
            for precision in args.precisions:
                for compiled in compiles:
                    rate, plain, params = measure(data, args, precision, compiled, folder)
                    print(f"| {case} | {params:,} | {precision} | {'yes' if compiled else 'no'} "
                          f"| {rate['wall']:.0f} | {plain['wall']:.0f} "
                          f"| {plain['wall'] / rate['wall'] - 1:+.1%} "
                          f"| {plain['cpu'] / rate['cpu'] - 1:+.1%} |", flush=True)


if __name__ == "__main__":
    main()
