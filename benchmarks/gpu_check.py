"""The GPU check: every CUDA path of scoresde, run once, in one table, against the CPU.

Each row runs one path on ``--device`` and, where a number can be compared, the same on the CPU:
training steps in fp32, bf16, fp16 with its gradient scaler, ``compile``, ``channels_last`` and
``batch_gpu`` micro-batches; the host synchronisations per training step (CUDA's sync debug
mode); sampling with per-sample seeds (a sample equal whatever batch it is drawn in); the FID
features; the likelihood; and the images per second of the paper's DDPM++ (forward and backward
at batch 128, 32x32x3). A row says ``ok``, ``DIFFERS`` (beyond the tolerance it names),
``FAILED`` (the error) or ``skipped`` (why).

    PYTHONPATH=$PWD python benchmarks/gpu_check.py --device cuda        # one GPU: < 8 min
    PYTHONPATH=$PWD python benchmarks/gpu_check.py --device cpu --quick  # the same paths, dry

``--device cpu --quick`` runs every path that the CPU has on small sizes (the test suite runs it
so that the script does not rot); fp16 and the sync count need CUDA and say so. The exit status
is 1 when a row FAILED or DIFFERS.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch

import scoresde
from scoresde import features, load_run, log_likelihood, sample, train
from scoresde.models import build_net, resolve_net
from scoresde.runs import load_checkpoint

# A small U-Net on the 8x8 digits: every path of the training step, quickly.
DIGITS = dict(data="digits", net="unet", net_params={"ch": 16, "num_res_blocks": 1,
                                                      "attn_resolutions": []},
              lr_decay="none", warmup=1, progress=False)
# Agreement with the CPU (or with the plain fp32 run): float32 kernels differ in summation order
# (and use TF32 on Ampere and later GPUs), so the first step's loss and gradient norm (the same
# weights, data and noise) agree to about 1e-3, bf16 autocast's to a few 1e-2; Adam's later
# steps amplify round-off where gradients are near zero, so the weights are shown, not judged.
# Samples and log-likelihoods of one model agree to the solver's tolerance.
STEP_TOL, BF16_TOL, SAMPLES_TOL, LIKELIHOOD_TOL, FEATURES_TOL = 2e-3, 5e-2, 1e-2, 1e-2, 1e-3


class Table:
    """The rows, printed as a Markdown table at the end."""

    def __init__(self):
        self.rows: list[tuple[str, str, float, str]] = []

    def run(self, name: str, check, *args) -> None:
        """``check(*args) -> (status, detail)``, timed; an exception is a FAILED row."""
        begin = time.perf_counter()
        try:
            status, detail = check(*args)
        except Exception as err:  # the row says what broke; the other rows still run
            status, detail = "FAILED", f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
            traceback.print_exc()
        self.rows.append((name, status, time.perf_counter() - begin, detail))
        print(f"{name}: {status} ({detail})", flush=True)

    def print(self) -> bool:
        print("\n| check | status | seconds | detail |\n| --- | --- | ---: | --- |")
        for name, status, seconds, detail in self.rows:
            print(f"| {name} | {status} | {seconds:.1f} | {detail} |")
        return all(status in ("ok", "skipped") for _, status, _, _ in self.rows)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b|`` over ``max |b|`` (0 for two zero tensors)."""
    a, b = a.double().cpu(), b.double().cpu()
    scale = float(b.abs().max())
    return float((a - b).abs().max()) / scale if scale > 0 else float((a - b).abs().max())


def _weights_gap(run_a: Path, run_b: Path) -> float:
    a, b = (load_checkpoint(r / "checkpoint.pt")["model"] for r in (run_a, run_b))
    return max(_relative(a[k], b[k]) for k in a if a[k].is_floating_point())


def _first_step(run: Path) -> tuple[float, float]:
    """The loss and gradient norm of a run's first step (before any update)."""
    with open(run / "metrics.jsonl") as f:
        record = json.loads(f.readline())
    return record["loss"], record["grad_norm"]


def _step_verdict(run: Path, reference: Path, tol: float, what: str) -> tuple[str, str]:
    """Judged on the first step's loss and gradient norm; the weights' gap after the last
    step is shown."""
    (loss, norm), (loss0, norm0) = _first_step(run), _first_step(reference)
    gap = max(abs(loss - loss0) / abs(loss0), abs(norm - norm0) / abs(norm0))
    status, detail = _verdict(gap, tol, f"first step vs {what}:")
    return status, f"{detail}; weights after {_weights_gap(run, reference):.1e}"


def _verdict(gap: float, tol: float, what: str) -> tuple[str, str]:
    return ("ok" if gap <= tol else "DIFFERS"), f"{what} {gap:.2e} (tolerance {tol:g})"


class Checks:
    """The checks on ``device``, with the CPU's results for comparison."""

    def __init__(self, device: str, quick: bool, root: Path):
        self.device, self.quick, self.root = torch.device(device), quick, root
        self.cuda = self.device.type == "cuda"
        self.steps = 3 if quick else 20
        self.batch = 16 if quick else 128
        self._runs: dict[str, Path] = {}

    def _train(self, name: str, device: str, **options) -> Path:
        run = self.root / name
        train(run, steps=self.steps, batch_size=self.batch, checkpoint_every=self.steps,
              log_every=1, device=device, **{**DIGITS, **options})
        return run

    def plain_run(self, device: str) -> Path:
        """The fp32 run on ``device`` (trained once)."""
        if device not in self._runs:
            self._runs[device] = self._train(f"fp32-{device.replace(':', '')}", device)
        return self._runs[device]

    def cpu_run(self) -> Path:
        return self.plain_run("cpu")

    def fp32(self):
        return _step_verdict(self.plain_run(str(self.device)), self.cpu_run(), STEP_TOL, "CPU")

    def precision(self, precision: str):
        if precision == "fp16" and not self.cuda:
            return "skipped", "fp16 needs CUDA"
        run = self._train(precision, str(self.device), precision=precision)
        weights = load_checkpoint(run / "checkpoint.pt")["model"].values()
        if not all(torch.isfinite(v).all() for v in weights if v.is_floating_point()):
            return "FAILED", "non-finite weights"
        return _step_verdict(run, self.cpu_run(), BF16_TOL if precision == "bf16" else STEP_TOL,
                             "CPU fp32")

    def layout(self, option: str, value):
        run = self._train(option, str(self.device), **{option: value})
        return _step_verdict(run, self.plain_run(str(self.device)), STEP_TOL,
                             f"without {option}")

    def sync_count(self):
        if not self.cuda:
            return "skipped", "needs CUDA (torch.cuda.set_sync_debug_mode)"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                self._train("sync", str(self.device), log_every=10**6)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
        return "ok", f"{len(syncs)} host syncs in {self.steps} steps (setup and saving included)"

    def seeds(self):
        model, sde, _ = load_run(self.cpu_run(), device=self.device)
        seeds = list(range(8))
        full, _ = sample(model, sde, (8, 1, 8, 8), solver="euler", steps=5, seeds=seeds,
                         device=self.device)
        part, _ = sample(model, sde, (3, 1, 8, 8), solver="euler", steps=5, seeds=seeds[5:],
                         device=self.device)
        batch_gap = _relative(part, full[5:])  # the network's round-off may see the batch
        if batch_gap > 1e-5:
            return "DIFFERS", f"sample i in another batch: {batch_gap:.2e} (tolerance 1e-05)"
        cpu_model, _, _ = load_run(self.cpu_run())
        on_cpu, _ = sample(cpu_model, sde, (8, 1, 8, 8), solver="euler", steps=5, seeds=seeds)
        return _verdict(_relative(full, on_cpu), SAMPLES_TOL,
                        f"across batches {batch_gap:.1e}; samples vs CPU:")

    def fid_features(self):
        images = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 255
        extractor = features.get_extractor("digits")
        on_cpu = features.extract_features(extractor, images)
        here = features.extract_features(extractor.to(self.device), images.to(self.device))
        return _verdict(_relative(here, on_cpu), FEATURES_TOL, "features vs CPU:")

    def likelihood(self):
        model, sde, _ = load_run(self.cpu_run(), device=self.device)
        x = scoresde.data.get_dataset("digits").test[:2 if self.quick else 8]
        tol = 1e-2 if self.quick else 1e-4
        options = dict(rtol=tol, atol=tol, generator=torch.Generator(self.device.type))
        here, _ = log_likelihood(model, sde, x.to(self.device), **options)
        cpu_model, _, _ = load_run(self.cpu_run())
        on_cpu, _ = log_likelihood(cpu_model, sde, x, **dict(options,
                                                              generator=torch.Generator()))
        gap = float((here.double().cpu() - on_cpu.double()).abs().max()) / x[0].numel()
        return _verdict(gap, LIKELIHOOD_TOL, "nats per dimension vs CPU:")

    def ddpmpp_speed(self):
        name, batch, size = ("ddpmpp_small8", 8, 8) if self.quick else ("ddpmpp_cifar10", 128,
                                                                         32)
        _, params = resolve_net(name, None)
        net = build_net({"name": "ddpmpp", **params, "event_shape": [3, size, size]})
        net = net.to(self.device)
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        x = torch.randn(batch, 3, size, size, device=self.device)
        noise = torch.rand(batch, device=self.device)
        steps = 2 if self.quick else 20

        def step():
            opt.zero_grad(set_to_none=True)
            net(x, noise).square().mean().backward()
            opt.step()

        step()  # warm-up (kernel selection)
        if self.cuda:
            torch.cuda.synchronize()
        begin = time.perf_counter()
        for _ in range(steps):
            step()
        if self.cuda:
            torch.cuda.synchronize()
        rate = batch * steps / (time.perf_counter() - begin)
        return "ok", f"{name} at batch {batch}: {rate:,.0f} images/s (forward and backward)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes (the dry run)")
    parser.add_argument("--skip", nargs="*", default=[], metavar="CHECK",
                        help="checks to leave out: fp32 bf16 fp16 compile channels_last "
                             "batch_gpu syncs seeds features likelihood ddpmpp")
    args = parser.parse_args()
    device = scoresde.resolve_device(args.device)
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    table = Table()
    with tempfile.TemporaryDirectory() as root:
        checks = Checks(str(device), args.quick, Path(root))
        rows = {"fp32": (checks.fp32,), "bf16": (checks.precision, "bf16"),
                "fp16": (checks.precision, "fp16"), "compile": (checks.layout, "compile", True),
                "channels_last": (checks.layout, "channels_last", True),
                "batch_gpu": (checks.layout, "batch_gpu", 4), "syncs": (checks.sync_count,),
                "seeds": (checks.seeds,), "features": (checks.fid_features,),
                "likelihood": (checks.likelihood,), "ddpmpp": (checks.ddpmpp_speed,)}
        for name, (check, *options) in rows.items():
            if name in args.skip:
                table.rows.append((name, "skipped", 0.0, "--skip"))
            else:
                table.run(name, check, *options)
    return 0 if table.print() else 1


if __name__ == "__main__":
    raise SystemExit(main())
