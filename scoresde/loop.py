"""The training loop's pieces: drawing a batch, one optimizer step, recording, checkpointing.

Internal to :func:`scoresde.train` (module :mod:`scoresde.training`), which resolves the options
and opens the run folder. Each piece takes the resolved options (the
:class:`~scoresde.config.TrainConfig` of ``config.json``), where this process trains
(:class:`Process`) and what it works on (:class:`TrainingState`). Every rank draws the same
global batch (data, times, noise) from one seeded generator and trains on its own slice;
DistributedDataParallel averages the gradients and rank 0 writes the checkpoints, so a run
under ``torchrun`` equals one process up to float summation order, and a resumed run continues
bit-identically.

On a GPU the loop does not wait for the device each step: the loss, the gradient norm and
whether either was non-finite are kept on the device and read only where a record is written
(every ``log_every`` steps and at the end), before a checkpoint or a sample grid, and every step
for a ``callback``. A non-finite loss or gradient norm stops the run at the next read, naming
the step where it first appeared; no checkpoint is ever written from the weights after it.

SIGINT (Ctrl-C) and SIGTERM (what a scheduler or ``torchrun`` sends before it kills) stop the
loop cleanly (:class:`Interrupts`): at the end of the step it is on, the loop writes that step's
checkpoint and raises :class:`TrainingInterrupted`, so a resumed run goes on bit-identically.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel

from .cascade import training_condition
from .checks import trusted_values
from .config import TrainConfig
from .data import Dataset
from .embeddings import drop_conditions
from .hardware import (autocast, channels_last, clip_norm, compile_errors, compile_model,
                       grad_scaler, micro_batches, scaler_skipped)
from .images import StepBatches
from .interrupts import Interrupts, TrainingInterrupted
from .latent import autoencoder_loss
from .losses import classifier_loss, dsm_loss, sample_time
from .phema import PowerEMA
from .progress import Progress
from .runs import (CHECKPOINT, append_metrics, build_model, sample_grid_path, save_checkpoint,
                   save_ema_snapshot)
from .sde import SDE
from .snapshots import write_snapshot

__all__ = ["LOSSES", "Process", "TrainingState", "build_parts", "run_loop", "fork_rng"]

# What a run learns, with its loss: the score (a ``ScoreModel``), a noisy classifier (a
# ``NoiseClassifier``) or an autoencoder (for latent diffusion, the bare network);
# :func:`scoresde.runs.build_model` wraps the network accordingly.
LOSSES = {"score": dsm_loss, "classifier": classifier_loss, "autoencoder": autoencoder_loss}


@dataclass(frozen=True)
class Process:
    """Where this process trains: its rank among ``world``, its device, the run folder."""

    rank: int
    world: int
    device: torch.device
    run_dir: str

    def share(self, batch_size: int) -> slice:
        """This rank's slice of a global batch."""
        b = batch_size // self.world
        return slice(self.rank * b, (self.rank + 1) * b)


@dataclass(frozen=True)
class TrainingState:
    """What the loop works on, built once: only the tensors inside them change."""

    model: nn.Module  # the ScoreModel or NoiseClassifier
    net: nn.Module  # the model, inside DistributedDataParallel with several processes
    ema: AveragedModel
    opt: torch.optim.Optimizer
    gen: torch.Generator  # the one source of data, times, noise and label dropout
    sde: SDE
    dataset: Dataset
    loss_fn: Callable
    scaler: torch.amp.GradScaler | None  # fp16's gradient scaler
    forward: nn.Module  # ``net``, compiled with compile=True
    # Pixel data: this rank's share of each step's images, a function of the seed and the step
    # (the shared generator draws the rest); None for other data (drawn from the generator).
    batches: StepBatches | None = None
    # The power-function EMAs of ``ema_profiles`` (scoresde.phema), None without them.
    power_ema: PowerEMA | None = None
    # The tensors each step updates, listed once (a module walk per step costs a millisecond
    # on a small network): the model's parameters, and the EMA's tensors beside the model's.
    params: list = field(init=False, repr=False)
    ema_pairs: tuple = field(init=False, repr=False)

    def __post_init__(self):
        def tensors(module):
            return [v.detach() for v in itertools.chain(module.parameters(), module.buffers())]

        object.__setattr__(self, "params", list(self.model.parameters()))
        object.__setattr__(self, "ema_pairs", (tensors(self.ema.module), tensors(self.model)))


def _lr_at(step: int, opts: TrainConfig) -> float:
    """Linear warmup over ``warmup`` steps, then constant or cosine decay to 0 at ``steps``."""
    lr, warmup, steps = opts.optim.lr, opts.optim.warmup, opts.loop.steps
    if step < warmup:
        return lr * (step + 1) / warmup
    if opts.optim.lr_decay == "cosine":
        return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))
    return lr


def _ema_with_warmup(decay: float):
    """EMA update for ``AveragedModel``: decay ``min(decay, (1 + n) / (10 + n))`` after ``n``
    updates, so that short runs are not dominated by the initial weights (as in TF's EMA with
    ``num_updates``)."""

    @torch.no_grad()
    def update(ema_params, params, num_averaged):
        n = float(num_averaged)
        beta = min(decay, (1 + n) / (10 + n))
        torch._foreach_lerp_(ema_params, params, 1 - beta)

    return update


def _cuda_index(device: torch.device) -> int | None:
    """The index of a CUDA ``device`` (the current one for plain ``"cuda"``); None on others."""
    if device.type != "cuda":
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


def _rng_state(gen: torch.Generator, device: torch.device) -> dict:
    """The data generator's state and PyTorch's on the CPU and on this rank's CUDA device
    (inside train()'s fork of them)."""
    state = {"data": gen.get_state(), "torch": torch.get_rng_state()}
    index = _cuda_index(device)
    if index is not None:
        state["cuda"] = torch.cuda.get_rng_state(index)
    return state


def _set_rng_state(gen: torch.Generator, state: dict, device: torch.device) -> None:
    gen.set_state(state["data"].cpu())
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    index = _cuda_index(device)
    cuda = state.get("cuda")
    if index is not None and cuda is not None:
        if isinstance(cuda, (list, tuple)):  # older checkpoints hold every device's state
            cuda = cuda[index] if index < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda.cpu(), index)


def fork_rng(device: torch.device):
    """A fork of PyTorch's generators on the CPU and on ``device`` when it is a CUDA device:
    restored when it closes. Other GPUs are left untouched (no CUDA context is opened there)."""
    index = _cuda_index(device)
    return torch.random.fork_rng(devices=[] if index is None else [index])


def build_parts(config: dict, sde: SDE, dataset, proc: Process,
                state: dict | None) -> TrainingState:
    """The model (initialised from ``torch.manual_seed(seed)``), its EMA, the optimizer and the
    data generator; restored from the checkpoint ``state`` when resuming."""
    torch.manual_seed(config["seed"])
    model = build_model(config, sde).to(proc.device)
    if config["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    ema = AveragedModel(model, multi_avg_fn=_ema_with_warmup(config["ema_decay"]),
                        use_buffers=True)
    opt_cls = torch.optim.AdamW if config["optimizer"] == "adamw" else torch.optim.Adam
    # fp16: the fused CUDA Adam takes the scaler's inf check on the device (no host sync).
    fused = {"fused": True} if config["precision"] == "fp16" else {}
    opt = opt_cls(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"],
                  **fused)
    gen = torch.Generator(device=proc.device).manual_seed(config["seed"])
    power_ema = None
    if config["ema_profiles"]:  # the model's floating-point tensors, averaged in place
        power_ema = PowerEMA(config["ema_profiles"], {
            k: v for k, v in model.state_dict().items() if v.is_floating_point()})
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        _set_rng_state(gen, state["rng"], proc.device)
        if power_ema is not None:
            power_ema.load_state_dict(state["power_ema"])
    scaler = grad_scaler(config["precision"], proc.device,
                         state.get("scaler") if state is not None else None)
    net = DistributedDataParallel(model) if proc.world > 1 else model
    forward = compile_model(net) if config["compile"] else net
    batches = None
    if dataset.pixel_bits is not None:
        start = int(state["step"]) if state is not None else 0
        batches = StepBatches(dataset, config["seed"], start, config["steps"],
                              config["batch_size"], proc.share(config["batch_size"]),
                              device=proc.device)
    return TrainingState(model, net, ema, opt, gen, sde, dataset, LOSSES[config["objective"]],
                         scaler, forward, batches, power_ema)


def run_loop(parts: TrainingState, opts: TrainConfig, proc: Process, *, start: int, elapsed: float,
             callback: Callable[[int, dict], None] | None, progress: bool,
             interrupts: Interrupts | None = None) -> dict:
    """Steps ``start`` to ``opts.loop.steps``: draw, step, record, and checkpoint now and then.

    SIGINT and SIGTERM (through ``interrupts``, or the loop's own when None) stop the loop at
    the end of the step they arrive in (its evaluation and sample grid included): it settles
    as before any checkpoint, records the steps since the last record (so that a resumed run's
    records still cover every step once), writes the checkpoint of that step and raises
    :class:`TrainingInterrupted`. A signal in the last step lets the run finish.
    """
    recorder = _Recorder(opts, proc, start, elapsed, callback, progress,
                         parts.scaler is not None)
    evaluator = _evaluator(parts, opts, proc)
    with contextlib.ExitStack() as stack:
        if interrupts is None:
            interrupts = stack.enter_context(Interrupts(proc.run_dir))
        stack.enter_context(interrupts.watching())
        stack.enter_context(recorder)
        steps = opts.loop.steps
        for step in range(start, steps):
            batch = _draw_batch(parts, opts, proc)
            loss, grad_norm, skipped = _optimizer_step(parts, opts, proc, step, batch)
            done = step + 1
            seconds = recorder.record(done, loss, parts.opt.param_groups[0]["lr"], grad_norm,
                                      skipped)
            stop = interrupts.due(proc) if done < steps else 0
            last = done == steps
            if stop and recorder.count:
                recorder.write(done)
            # Before the step's checkpoint: a run stopped between the two redoes the evaluation
            # on resume (records after the checkpoint are dropped), so each is written once.
            if evaluator is not None and (done % opts.eval.eval_every == 0 or last):
                recorder.settle(done)
                with fork_rng(proc.device):  # the training's random streams stay as they were
                    append_metrics(proc.run_dir, evaluator(parts.ema.module, parts.sde, done))
            every = opts.optim.ema_snapshot_every
            if parts.power_ema is not None and (done % every == 0 or last):
                recorder.settle(done)  # never a snapshot of non-finite weights
                if proc.rank == 0:
                    save_ema_snapshot(proc.run_dir, done, parts.power_ema.state_dict())
            if stop or done % opts.loop.checkpoint_every == 0 or last:
                recorder.settle(done)  # never a checkpoint of non-finite weights
                _check_weights(parts, proc, done, recorder.saved)
                _checkpoint(parts, proc, done, seconds)
                recorder.saved = done
            if opts.eval.sample_every and (done % opts.eval.sample_every == 0 or last):
                recorder.settle(done)
                _sample_grid(parts, opts, proc, done)
            if stop:
                raise TrainingInterrupted(stop, proc.run_dir, done, steps)
    wall = time.perf_counter() - recorder.t0 if start < opts.loop.steps else 0.0
    result = {"run_dir": proc.run_dir, "step": opts.loop.steps, "loss": recorder.last,
              "train_time_s": elapsed + wall,
              "steps_per_sec": (opts.loop.steps - start) / wall if wall > 0 else float("nan")}
    if parts.scaler is not None:
        result["skipped_steps"] = recorder.skipped_total
    return result


def _sample_grid(parts: TrainingState, opts: TrainConfig, proc: Process, step: int) -> None:
    """Rank 0 draws samples from the EMA weights into the run's sample folder; the training's
    random streams are left as they were (its own generator, inside a fork of torch's)."""
    if proc.rank == 0:
        with fork_rng(proc.device):
            write_snapshot(parts.ema.module, parts.sde, parts.dataset,
                           sample_grid_path(proc.run_dir, step), seed=opts.loop.seed,
                           device=proc.device, title=f"EMA at step {step}")


def _evaluator(parts: TrainingState, opts: TrainConfig, proc: Process):
    """Rank 0's FID/KID of the EMA weights (``eval_every``), or None."""
    if not opts.eval.eval_every or proc.rank != 0:
        return None
    from .quality import TrainingEvaluator

    label = "all" if opts.network.conditional and parts.dataset.num_classes else None  # every class
    return TrainingEvaluator(parts.dataset, features=opts.eval.eval_features, n=opts.eval.eval_n,
                             seed=opts.loop.seed, device=proc.device, label=label)


def _draw_batch(parts: TrainingState, opts: TrainConfig, proc: Process):
    """``(x0, y, t, noise)``: this rank's slice of one global batch drawn from the shared
    generator (so every rank draws the same), on the rank's device; ``y`` None without labels.

    Pixel data come from ``parts.batches`` (already this rank's share); every other draw is
    from the shared generator, in the same order either way."""
    n = opts.optim.batch_size
    gen, dev, mine = parts.gen, proc.device, proc.share(n)
    if parts.batches is None:
        x0, y = parts.dataset.sample(n, gen)
        x0, y = x0[mine], None if y is None else y[mine]
    else:
        x0, y = next(parts.batches)
    t = sample_time(parts.sde, n, eps=opts.loss.eps, weighting=opts.loss.weighting,
                    t_sampling=opts.loss.t_sampling, log_snr_share=opts.loss.log_snr_share,
                    time_sampling=opts.loss.time_sampling, time_loc=opts.loss.time_loc,
                    time_scale=opts.loss.time_scale,
                    generator=gen, device=dev)
    z = torch.randn((n, *parts.dataset.event_shape), generator=gen, device=dev)
    x0 = x0.to(dev)
    if opts.network.super_res:  # the condition is the low-resolution image, augmented
        y = training_condition(x0, opts.network.super_res, opts.network.cond_aug, n, mine, gen)
    else:
        y = _labels(y, n, mine, opts, gen, dev)
    return x0, y, t[mine], z[mine]


def _labels(y, n: int, mine: slice, opts: TrainConfig, gen, dev):
    """This rank's labels ``y`` for the objective: none, all, or with ``label_dropout`` of them
    null (drawn for the whole batch of ``n``, so that every rank draws the same)."""
    if y is None or not (opts.network.conditional or opts.network.objective == "classifier"):
        return None
    y = y.to(dev)
    if opts.network.objective == "score" and opts.network.label_dropout > 0:
        drop = torch.rand((n,), generator=gen, device=dev)[mine] < opts.network.label_dropout
        y = drop_conditions(y, drop)
    return y


def _optimizer_step(parts: TrainingState, opts: TrainConfig, proc: Process, step: int, batch):
    """One step at ``step`` (from 0) on this rank's ``batch``, then the EMA update.

    Returns:
        ``(loss, grad_norm, skipped)``, tensors on the device (nothing waits for them): the
        mean loss over all ranks, this rank's gradient norm, and with fp16 whether the
        gradient scaler skipped the step (inf/NaN gradients; None without a scaler).
    """
    for group in parts.opt.param_groups:
        group["lr"] = _lr_at(step, opts)
    parts.opt.zero_grad(set_to_none=True)
    loss = _accumulate(parts, opts, proc, batch)
    scaler = parts.scaler
    if scaler is not None:
        scaler.unscale_(parts.opt)
    grad_norm = clip_norm(parts.params, opts.optim.grad_clip)
    if proc.world > 1:
        dist.all_reduce(loss)
        loss /= proc.world
    skipped = None
    if scaler is None:
        parts.opt.step()
    else:
        scale = scaler._scale.clone()  # noqa: SLF001 (compared on the device after the update)
        scaler.step(parts.opt)
        scaler.update()
        skipped = scaler_skipped(scaler, scale)
    _update_ema(parts.ema, *parts.ema_pairs)
    if parts.power_ema is not None:
        parts.power_ema.update(step + 1)
    return loss, grad_norm, skipped


@torch.no_grad()
def _update_ema(ema: AveragedModel, averaged: list, current: list) -> None:
    """``ema.update_parameters(model)`` without its host syncs on a GPU (it sends its update
    count, a CPU tensor, to the device each step, and the warmup reads it back): the same
    arithmetic with the count read on the CPU, on the EMA's and the model's tensors
    (parameters, then buffers: :attr:`TrainingState.ema_pairs`)."""
    n = int(ema.n_averaged)  # a CPU buffer (AveragedModel's default)
    if n == 0:
        torch._foreach_copy_(averaged, current)
    else:
        ema.multi_avg_fn(averaged, current, n)
    ema.n_averaged += 1


def _accumulate(parts: TrainingState, opts: TrainConfig, proc: Process, batch) -> torch.Tensor:
    """Gradients of this rank's mean loss over ``batch``, added up over micro-batches of at
    most ``batch_gpu`` samples (DDP averages them across ranks after the last); returns the
    mean loss (detached, on the device)."""
    if opts.loop.channels_last:
        batch = channels_last(batch)
    n, total = batch[0].shape[0], None
    pieces = micro_batches(batch, opts.loop.batch_gpu)
    for i, (x0, y, t, z) in enumerate(pieces):
        last = i == len(pieces) - 1
        quiet = parts.net.no_sync() if proc.world > 1 and not last else contextlib.nullcontext()
        with quiet, compile_errors(opts.loop.compile):
            with autocast(opts.loop.precision, proc.device), trusted_values():
                loss = parts.loss_fn(parts.forward, parts.sde, x0, weighting=opts.loss.weighting,
                                     eps=opts.loss.eps, y=y, t=t, noise=z).sum() / n
            (loss if parts.scaler is None else parts.scaler.scale(loss)).backward()
        total = loss.detach() if total is None else total + loss.detach()
    return total


def _check_weights(parts: TrainingState, proc: Process, step: int, saved: int | None) -> None:
    """Raise ``FloatingPointError`` if a weight is not finite (before writing a checkpoint:
    finite losses and gradients keep them finite, but a callback may change them); ``saved``
    is the step of the last checkpoint, None if there is none."""
    finite = [p.detach().isfinite().all() for p in parts.model.parameters()]
    if not bool(torch.stack(finite).all()):
        raise FloatingPointError(f"non-finite weights at step {step}; stopped: "
                                 f"{_kept(proc.run_dir, saved)}")


def _kept(run_dir: str, saved: int | None) -> str:
    """What a stop leaves in ``run_dir``: the checkpoint of step ``saved``, or none."""
    if saved is None:
        return f"no checkpoint had been written to {run_dir} yet, so nothing is kept"
    return f"the checkpoint of step {saved} in {run_dir} is kept"


def _checkpoint(parts: TrainingState, proc: Process, step: int, seconds: float) -> None:
    """Rank 0 writes the checkpoint at ``step``; every rank waits for it."""
    if proc.rank == 0:
        save_checkpoint(os.path.join(proc.run_dir, CHECKPOINT), {
            "step": step, "elapsed_s": seconds, "model": parts.model.state_dict(),
            "ema": parts.ema.state_dict(), "optimizer": parts.opt.state_dict(),
            "rng": _rng_state(parts.gen, proc.device),
            **({"power_ema": parts.power_ema.state_dict()} if parts.power_ema is not None
               else {}),
            **({"scaler": parts.scaler.state_dict()} if parts.scaler is not None else {})})
    if proc.world > 1:
        dist.barrier()


class _Recorder:
    """After each step: a ``metrics.jsonl`` line every ``log_every`` steps and at the end (the
    loss averaged since the last line; rank 0), the callback (rank 0), the progress display.

    The step's loss and gradient norm are added up on the device and read (a host sync) only
    at a record, for a callback, and in :meth:`settle`; the first step whose loss or gradient
    norm was not finite is kept on the device too, so the error names it. ``saved`` is the
    step of the run's last checkpoint (None before the first), which the errors name."""

    def __init__(self, opts: TrainConfig, proc: Process, start: int, elapsed: float, callback,
                 progress: bool, scaled: bool = False):
        self.opts, self.run_dir, self.lead = opts, proc.run_dir, proc.rank == 0
        self.start, self.elapsed, self.callback = start, elapsed, callback
        self.scaled, self.device = scaled, proc.device
        self.t0, self.last, self.skipped_total = time.perf_counter(), float("nan"), 0
        self.saved = start if start > 0 else None  # a run resumes from a checkpoint
        self.latest = (None, None)  # the last step's learning rate and gradient norm
        self._reset()
        self.first_bad = torch.zeros(2, dtype=torch.long, device=proc.device)  # loss, grad
        # Lines by time at whatever step, with the loss of the last record, and the last step.
        self.progress = Progress(opts.loop.steps, unit="step", desc="", initial=start,
                                 enabled=progress and self.lead, last=True)

    def _reset(self) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.skipped = torch.zeros((), dtype=torch.long, device=self.device)
        self.count = 0

    def __enter__(self) -> "_Recorder":
        return self

    def __exit__(self, *exc) -> None:
        self.progress.close(finished=exc[0] is None)

    def record(self, done: int, loss: torch.Tensor, lr: float, grad_norm: torch.Tensor,
               skipped: torch.Tensor | None) -> float:
        """Record step ``done``; returns the seconds trained so far (earlier attempts too)."""
        self.loss_sum += loss
        self.count += 1
        bad = ~torch.isfinite(torch.stack([loss.float(), grad_norm.float()]))
        if skipped is not None:  # inf/NaN gradients are the scaler's: it skips those steps
            self.skipped += skipped
            bad[1] = False
        self.first_bad = torch.where(bad & (self.first_bad == 0), done, self.first_bad)
        self.latest = (lr, grad_norm)
        log = done % self.opts.loop.log_every == 0 or done == self.opts.loop.steps
        record = None
        if log:
            record = self.write(done)
        elif self.callback is not None and self.lead:
            record = {"step": done, "loss": float(loss), "lr": lr, "grad_norm": float(grad_norm)}
        seconds = self.elapsed + time.perf_counter() - self.t0
        if self.callback is not None and self.lead:
            self.callback(done, record)
        self.progress.set(done, f"loss={record['loss']:.4f}" if log else None)
        return seconds

    def write(self, done: int) -> dict:
        """The record of the steps since the last one, up to ``done``: their mean loss, the
        learning rate and gradient norm of step ``done``; rank 0 appends it to
        ``metrics.jsonl``. Settles first."""
        self.settle(done)
        lr, grad_norm = self.latest
        record = {"step": done, "loss": float(self.loss_sum) / self.count, "lr": lr,
                  "grad_norm": float(grad_norm)}
        self.last = record["loss"]
        if self.scaled:
            record["skipped_steps"] = int(self.skipped)
            self.skipped_total += record["skipped_steps"]
        if self.lead:
            now = time.perf_counter()
            record.update(elapsed_s=round(self.elapsed + now - self.t0, 3),
                          steps_per_sec=(done - self.start) / max(now - self.t0, 1e-9))
            append_metrics(self.run_dir, record)
        self._reset()
        return record

    def settle(self, done: int) -> None:
        """Wait for the device and stop if a step up to ``done`` had a non-finite loss or
        gradient norm (the same on every rank: the loss is averaged over ranks first).

        Raises:
            FloatingPointError: naming the first such step and the checkpoint kept, if any.
        """
        first = dict(zip(("loss", "gradient norm"), self.first_bad.tolist()))
        bad = {what: step for what, step in first.items() if step}
        if not bad:
            return
        what = min(bad, key=bad.get)
        step = bad[what]
        raise FloatingPointError(
            f"non-finite {what} at step {step}; stopped at step {done}: "
            f"{_kept(self.run_dir, self.saved)}; a lower learning rate may help")
