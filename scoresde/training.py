"""Training loop: weighted DSM with Adam(W), warmup, clipping, EMA, checkpoints, resume and DDP.

``train`` runs unchanged in one process or under ``torchrun --nproc_per_node=N``: every rank draws
the same global batch (data, times, noise) from the same seeded generator and trains on its own
slice, DistributedDataParallel averages the gradients, and rank 0 writes the run folder. The
result therefore equals one process with the same global batch, up to float summation order.

The loop is cut into pieces that each take the resolved options (:class:`_Options`, a frozen view
of ``config.json``) and what they work on: drawing a batch, one optimizer step, recording
(metrics, callback, progress) and checkpointing. The run folder's files and the rules for
resuming one belong to :mod:`scoresde.runs`. Training leaves the caller's random state alone: it
seeds and draws inside a fork of PyTorch's random number generators.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, fields
from typing import Callable, TextIO

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from .checks import check_choice, check_int, check_number
from .data import Dataset, get_dataset
from .labels import NULL_LABEL
from .losses import (T_SAMPLINGS, WEIGHTINGS, check_log_snr_share, classifier_loss, dsm_loss,
                     sample_time)
from .models import build_net
from .runs import (CHECKPOINT, append_metrics, build_model, resume_state, save_checkpoint,
                   truncate_metrics, write_config)
from .sde import SDE, get_sde
from .utils import resolve_device

__all__ = ["train", "train_classifier", "OBJECTIVES", "VECTOR_BATCH", "IMAGE_BATCH"]

# What a run learns, with its loss: the score (a ``ScoreModel``) or a noisy classifier (a
# ``NoiseClassifier``); :func:`scoresde.runs.build_model` wraps the network accordingly.
_LOSSES = {"score": dsm_loss, "classifier": classifier_loss}
OBJECTIVES = tuple(_LOSSES)
# Default points per step when train(batch_size=None): vectors (tuned on the 2D toys) and images.
VECTOR_BATCH, IMAGE_BATCH = 1024, 128
# On a stream that is not a terminal (a log file), a progress line at most this often.
_LINE_EVERY_S = 30.0


@dataclass(frozen=True)
class _Options:
    """The resolved options the loop reads: a frozen view of the run's ``config.json``."""

    steps: int
    batch_size: int
    lr: float
    warmup: float
    lr_decay: str
    grad_clip: float | None
    weighting: str
    eps: float
    t_sampling: str
    log_snr_share: float
    conditional: bool
    objective: str
    label_dropout: float
    log_every: int
    checkpoint_every: int

    @classmethod
    def of(cls, config: dict) -> "_Options":
        return cls(**{f.name: config[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class _Place:
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
class _Parts:
    """What the loop works on, built once: only the tensors inside them change."""

    model: nn.Module  # the ScoreModel or NoiseClassifier
    net: nn.Module  # the model, inside DistributedDataParallel with several processes
    ema: AveragedModel
    opt: torch.optim.Optimizer
    gen: torch.Generator  # the one source of data, times, noise and label dropout
    sde: SDE
    dataset: Dataset
    loss_fn: Callable


# ----- resolving the options ----------------------------------------------------------------------
def _net_config(net, net_params, dataset, conditional, objective) -> dict:
    """The full config of the run's network: the network's own defaults, ``net_params`` over them,
    the shape and classes of the data."""
    if net == "auto":
        net = "unet" if dataset.is_image else "mlp"
    params = dict(net_params or {})
    params.update(event_shape=list(dataset.event_shape),
                  num_classes=dataset.num_classes if conditional else 0)
    if objective == "classifier":  # the same family, ending in class logits
        net = net if net.endswith("_classifier") else f"{net}_classifier"
        params["num_classes"] = dataset.num_classes
    return build_net({"name": net, **params}).config()


def _check(kw: dict, dataset) -> dict:
    """The keywords after checking each; integers as plain ``int``."""
    kw = dict(kw)
    check_choice("weighting", kw["weighting"], WEIGHTINGS)
    check_choice("t_sampling", kw["t_sampling"], T_SAMPLINGS)
    check_choice("optimizer", kw["optimizer"], ("adam", "adamw"))
    check_choice("lr_decay", kw["lr_decay"], ("cosine", "none"))
    check_choice("objective", kw["objective"], OBJECTIVES)
    for key in ("steps", "batch_size", "checkpoint_every", "log_every"):
        kw[key] = check_int(key, kw[key], 1)
    kw["seed"] = check_int("seed", kw["seed"])
    check_number("lr", kw["lr"], 0, low_open=True)
    check_number("ema_decay", kw["ema_decay"], 0, 1, high_open=True)
    check_number("warmup", kw["warmup"], 0)
    check_number("weight_decay", kw["weight_decay"], 0)
    if kw["grad_clip"] is not None:
        check_number("grad_clip", kw["grad_clip"], 0)
    check_number("label_dropout", kw["label_dropout"], 0, 1, high_open=True)
    check_log_snr_share(kw["log_snr_share"], kw["weighting"])
    if (kw["conditional"] or kw["objective"] == "classifier") and not dataset.num_classes:
        raise ValueError(f"conditional training needs labels; data {dataset.name!r} has none")
    return kw


def _resolve(kw: dict, dataset) -> dict:
    """Check the keywords and turn them into the JSON-able config of the run."""
    kw = _check(kw, dataset)
    sde = kw["sde"]
    if not isinstance(sde, SDE):
        sde = get_sde(sde, **(kw["sde_params"] or {}))
    sigma_data = kw["sigma_data"] if kw["sigma_data"] is not None else dataset.std()
    config = {k: v for k, v in kw.items() if k not in ("sde_params", "net_params", "callback")}
    config.update(
        data=os.fspath(kw["data"]) if isinstance(kw["data"], (str, os.PathLike)) else dict(
            zip(("means", "covs", "weights"), _mixture_lists(kw["data"]))),
        data_shape=list(dataset.event_shape), is_image=dataset.is_image,
        num_classes=dataset.num_classes, raw_scale=dataset.raw_scale,
        raw_offset=dataset.raw_offset, sde=sde.config(), sigma_data=float(sigma_data),
        net=_net_config(kw["net"], kw["net_params"], dataset, kw["conditional"],
                        kw["objective"]),
        run_dir=os.path.abspath(kw["run_dir"]))
    return config


def _mixture_lists(mix) -> tuple[list, list, list]:
    """``(means, covs, weights)`` of a ``GaussianMixture`` (or its dict) as nested lists."""
    if isinstance(mix, dict):
        return mix["means"], mix["covs"], mix.get("weights")
    return mix.means.tolist(), mix.covs.tolist(), mix.weights.tolist()


# ----- schedules, EMA, random states, processes --------------------------------------------------
def _lr_at(step: int, opts: _Options) -> float:
    """Linear warmup over ``warmup`` steps, then constant or cosine decay to 0 at ``steps``."""
    lr, warmup, steps = opts.lr, opts.warmup, opts.steps
    if step < warmup:
        return lr * (step + 1) / warmup
    if opts.lr_decay == "cosine":
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


def _rng_state(gen: torch.Generator) -> dict:
    """The data generator's state and PyTorch's (inside train()'s fork of them)."""
    state = {"data": gen.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(gen: torch.Generator, state: dict) -> None:
    gen.set_state(state["data"].cpu())
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _fork_rng():
    """A fork of PyTorch's generators (CPU and every CUDA device): restored when it closes."""
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    return torch.random.fork_rng(devices=cuda)


def _dist_setup(device: torch.device):
    """``(rank, world, device, owned)``: joins torchrun's process group when there is one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), device, False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return dist.get_rank(), dist.get_world_size(), device, True
    return 0, 1, device, False


def train(
    run_dir: str | os.PathLike,
    *,
    data="8gaussians",
    sde: str | SDE = "vp",
    sde_params: dict | None = None,
    net: str = "auto",
    net_params: dict | None = None,
    conditional: bool = False,
    label_dropout: float = 0.1,
    objective: str = "score",
    steps: int = 1500,
    batch_size: int | None = None,
    lr: float = 5e-3,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    warmup: int = 100,
    lr_decay: str = "cosine",
    grad_clip: float | None = 1.0,
    ema_decay: float = 0.995,
    weighting: str = "sigma2",
    eps: float = 1e-5,
    t_sampling: str = "stratified",
    log_snr_share: float = 0.0,
    sigma_data: float | None = None,
    seed: int = 0,
    device: str = "cpu",
    checkpoint_every: int = 1000,
    log_every: int = 100,
    resume: bool = False,
    progress: bool = True,
    callback: Callable[[int, dict], None] | None = None,
) -> dict:
    """Train a score model into the run folder ``run_dir`` (or resume the run there).

    Each step draws a global batch of ``batch_size`` points, times and noise from one generator
    seeded with ``seed``, takes the mean :func:`~scoresde.losses.dsm_loss` and an optimizer step
    (learning rate warmed up linearly over ``warmup`` steps, then cosine-decayed to 0 at ``steps``
    unless ``lr_decay="none"``; gradients clipped to norm ``grad_clip``), then updates the EMA of
    the weights. ``config.json`` holds every resolved option (data shape, SDE and network
    configs included), ``checkpoint.pt`` the model, EMA, optimizer, step and random states
    (written every ``checkpoint_every`` steps and at the end), ``metrics.jsonl`` a record per
    ``log_every`` steps.

    Args:
        run_dir: the run folder; one that has a checkpoint is only continued with ``resume=True``.
        data: a toy name, ``"digits"``, a ``.npy``/``.npz`` path or a ``GaussianMixture``.
        sde, sde_params: an SDE name with its parameters, or an SDE instance.
        net, net_params: ``"auto"`` (MLP for vectors, U-Net for images), ``"mlp"`` or ``"unet"``
            and keyword overrides for the network.
        conditional: pass the data's labels to the network.
        label_dropout: with ``conditional``, the share of labels replaced by the null label
            (-1), so the same network also learns the unconditional score that classifier-free
            guidance needs (Ho & Salimans 2021); 0 to never drop.
        objective: ``"score"`` (a :class:`~scoresde.ScoreModel`) or ``"classifier"`` (a
            :class:`~scoresde.NoiseClassifier` of noisy data for classifier guidance, trained
            with :func:`~scoresde.losses.classifier_loss`; see :func:`train_classifier`).
        steps, batch_size: optimizer steps and points per step; ``batch_size=None`` is 1024 for
            vector data (tuned on the 2D toys, BENCHMARKS.md) and 128 for images.
        weighting, eps, t_sampling: see :func:`~scoresde.losses.dsm_loss`.
        log_snr_share: with ``weighting="sigma2"``, the share of each batch's times drawn
            uniformly in log-SNR rather than in ``t`` (see :mod:`scoresde.losses`); 0.3 with
            ``net_params={"input_features": 64}`` is the recipe for data with sharp edges such
            as checkerboard (BENCHMARKS.md).
        sigma_data: data scale for the preconditioning; the data's standard deviation if None.
        device: ``"cpu"`` or ``"cuda"``; under torchrun with CUDA each rank uses its local GPU.
        resume: continue from ``checkpoint.pt``; ``steps`` may be raised to train longer.
        progress: a progress line on stderr (rank 0 only).
        callback: ``callback(step, record)`` after every step (rank 0 only), for monitoring.

    Returns:
        ``{"run_dir", "step", "loss", "train_time_s", "steps_per_sec", "resumed_from"}``.

    Raises:
        ValueError: bad options, or options that differ from the run being resumed.
        FileExistsError: ``run_dir`` has a checkpoint and ``resume`` is False.
        FloatingPointError: the loss became NaN or infinite (the message names the step; the
            last good checkpoint is kept).
    """
    kw = dict(locals())
    rank, world, dev, owned = _dist_setup(resolve_device(device))
    try:
        return _run(kw, _Place(rank, world, dev, os.fspath(run_dir)))
    finally:
        if owned:
            dist.destroy_process_group()


def _run(kw: dict, place: _Place) -> dict:
    """Resolve the options, open the run folder, build the parts and run the loop."""
    dataset = get_dataset(kw["data"])
    if kw["batch_size"] is None:
        kw["batch_size"] = IMAGE_BATCH if dataset.is_image else VECTOR_BATCH
    config = _resolve(kw, dataset)
    if config["batch_size"] % place.world:
        raise ValueError(f"batch_size {config['batch_size']} must divide among {place.world} "
                         "processes")
    state = resume_state(place.run_dir, config, kw["resume"], place.rank, place.device)
    start = int(state["step"]) if state is not None else 0
    if place.rank == 0:
        write_config(place.run_dir, config)
        # Records after the checkpoint (or all, starting afresh) are from an attempt that died.
        truncate_metrics(place.run_dir, start)
    sde = kw["sde"] if isinstance(kw["sde"], SDE) else get_sde(**config["sde"])
    with _fork_rng():  # the caller's random state is left as it was
        parts = _build(config, sde, dataset, place, state)
        elapsed = float(state["elapsed_s"]) if state is not None else 0.0
        result = _loop(parts, _Options.of(config), place, start, elapsed, kw["callback"],
                       kw["progress"])
    return dict(result, resumed_from=start if state is not None else None)


def _build(config: dict, sde: SDE, dataset, place: _Place, state: dict | None) -> _Parts:
    """The model (initialised from ``torch.manual_seed(seed)``), its EMA, the optimizer and the
    data generator; restored from the checkpoint ``state`` when resuming."""
    torch.manual_seed(config["seed"])
    model = build_model(config, sde).to(place.device)
    ema = AveragedModel(model, multi_avg_fn=_ema_with_warmup(config["ema_decay"]),
                        use_buffers=True)
    opt_cls = torch.optim.AdamW if config["optimizer"] == "adamw" else torch.optim.Adam
    opt = opt_cls(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    gen = torch.Generator(device=place.device).manual_seed(config["seed"])
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        _set_rng_state(gen, state["rng"])
    net = DistributedDataParallel(model) if place.world > 1 else model
    return _Parts(model, net, ema, opt, gen, sde, dataset, _LOSSES[config["objective"]])


def _loop(parts: _Parts, opts: _Options, place: _Place, start: int, elapsed: float,
          callback, progress: bool) -> dict:
    """Steps ``start`` to ``opts.steps``: draw, step, record, and checkpoint now and then."""
    recorder = _Recorder(opts, place, start, elapsed, callback, progress)
    with recorder:
        for step in range(start, opts.steps):
            batch = _draw_batch(parts, opts, place)
            loss, grad_norm = _optimizer_step(parts, opts, place, step, batch)
            done = step + 1
            seconds = recorder.record(done, loss, parts.opt.param_groups[0]["lr"], grad_norm)
            if done % opts.checkpoint_every == 0 or done == opts.steps:
                _checkpoint(parts, place, done, seconds)
    wall = time.perf_counter() - recorder.t0 if start < opts.steps else 0.0
    return {"run_dir": place.run_dir, "step": opts.steps, "loss": recorder.last,
            "train_time_s": elapsed + wall,
            "steps_per_sec": (opts.steps - start) / wall if wall > 0 else float("nan")}


def _draw_batch(parts: _Parts, opts: _Options, place: _Place):
    """``(x0, y, t, noise)``: this rank's slice of one global batch drawn from the shared
    generator (so every rank draws the same), on the rank's device; ``y`` None without labels."""
    gen, dev, n = parts.gen, place.device, opts.batch_size
    x0, y = parts.dataset.sample(n, gen)
    t = sample_time(parts.sde, n, eps=opts.eps, weighting=opts.weighting,
                    t_sampling=opts.t_sampling, log_snr_share=opts.log_snr_share,
                    generator=gen, device=dev)
    z = torch.randn(x0.shape, generator=gen, device=dev)
    y = _labels(y, opts, gen, dev)
    mine = place.share(n)
    return x0.to(dev)[mine], y[mine] if y is not None else None, t[mine], z[mine]


def _labels(y, opts: _Options, gen, dev):
    """The batch's labels for the objective: none, all, or with ``label_dropout`` of them null."""
    if y is None or not (opts.conditional or opts.objective == "classifier"):
        return None
    y = y.to(dev)
    if opts.objective == "score" and opts.label_dropout > 0:
        drop = torch.rand(y.shape, generator=gen, device=dev) < opts.label_dropout
        y = y.masked_fill(drop, NULL_LABEL)
    return y


def _optimizer_step(parts: _Parts, opts: _Options, place: _Place, step: int,
                    batch) -> tuple[float, float]:
    """One step at ``step`` (from 0) on this rank's ``batch``, then the EMA update.

    Returns:
        ``(loss, grad_norm)``: the mean loss over all ranks and this rank's gradient norm.

    Raises:
        FloatingPointError: the loss is not finite (checked before the weights change).
    """
    x0, y, t, z = batch
    loss = parts.loss_fn(parts.net, parts.sde, x0, weighting=opts.weighting, eps=opts.eps, y=y,
                         t=t, noise=z).mean()
    for group in parts.opt.param_groups:
        group["lr"] = _lr_at(step, opts)
    parts.opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(parts.model.parameters(),
                                               opts.grad_clip if opts.grad_clip else math.inf)
    global_loss = loss.detach().clone()
    if place.world > 1:
        dist.all_reduce(global_loss)
        global_loss /= place.world
    if not torch.isfinite(global_loss):
        raise FloatingPointError(
            f"non-finite loss ({float(global_loss)}) at step {step + 1}; stopped, the last "
            f"good checkpoint in {place.run_dir} is kept")
    parts.opt.step()
    parts.ema.update_parameters(parts.model)
    return float(global_loss), float(grad_norm)


def _checkpoint(parts: _Parts, place: _Place, step: int, seconds: float) -> None:
    """Rank 0 writes the checkpoint at ``step``; every rank waits for it."""
    if place.rank == 0:
        save_checkpoint(os.path.join(place.run_dir, CHECKPOINT), {
            "step": step, "elapsed_s": seconds, "model": parts.model.state_dict(),
            "ema": parts.ema.state_dict(), "optimizer": parts.opt.state_dict(),
            "rng": _rng_state(parts.gen)})
    if place.world > 1:
        dist.barrier()


class _Recorder:
    """After each step (rank 0): a ``metrics.jsonl`` line every ``log_every`` steps and at the
    end (the loss averaged since the last line), the callback, and the progress display."""

    def __init__(self, opts: _Options, place: _Place, start: int, elapsed: float, callback,
                 progress: bool):
        self.opts, self.run_dir, self.lead = opts, place.run_dir, place.rank == 0
        self.start, self.elapsed, self.callback = start, elapsed, callback
        self.t0, self.window, self.last = time.perf_counter(), [], float("nan")
        self.progress = _Progress(opts.steps, start, opts.log_every, progress and self.lead)

    def __enter__(self) -> "_Recorder":
        return self

    def __exit__(self, *exc) -> None:
        self.progress.close()

    def record(self, done: int, loss: float, lr: float, grad_norm: float) -> float:
        """Record step ``done``; returns the seconds trained so far (earlier attempts too)."""
        now = time.perf_counter()
        seconds = self.elapsed + now - self.t0
        self.last = loss
        self.window.append(loss)
        record = {"step": done, "loss": loss, "lr": lr, "grad_norm": grad_norm}
        if done % self.opts.log_every == 0 or done == self.opts.steps:
            if self.lead:
                record.update(loss=sum(self.window) / len(self.window),
                              elapsed_s=round(seconds, 3),
                              steps_per_sec=(done - self.start) / max(now - self.t0, 1e-9))
                append_metrics(self.run_dir, record)
            self.window = []
        if self.callback is not None and self.lead:
            self.callback(done, record)
        self.progress.update(done, loss)
        return seconds


class _Progress:
    """Progress of the steps on stderr (or ``stream``), with the loss.

    In a terminal a tqdm bar. Elsewhere (a log file, a pipe) full lines, never a ``\\r``: one at
    a multiple of ``every`` steps when ``_LINE_EVERY_S`` seconds have passed since the last, and
    one at the last step; at most ``total / every + 1`` lines.
    """

    def __init__(self, total: int, start: int, every: int, enabled: bool,
                 stream: TextIO | None = None):
        self.stream = sys.stderr if stream is None else stream
        self.total, self.start, self.every, self.enabled = total, start, every, enabled
        isatty = getattr(self.stream, "isatty", None)
        self.tty = enabled and callable(isatty) and isatty()
        self.bar = tqdm(total=total, initial=start, file=self.stream, unit="step",
                        dynamic_ncols=True, disable=not self.tty)
        self.t0 = self.shown = time.perf_counter()

    def update(self, done: int, loss: float) -> None:
        if self.tty:
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            self.bar.update(done - self.bar.n)
            return
        now = time.perf_counter()
        due = done % self.every == 0 and now - self.shown >= _LINE_EVERY_S
        if self.enabled and (due or done == self.total):
            self.shown = now
            line = tqdm.format_meter(done, self.total, now - self.t0, initial=self.start,
                                     unit="step", postfix=f"loss={loss:.4f}",
                                     bar_format="step {n_fmt}/{total_fmt} {percentage:3.0f}% "
                                                "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")
            self.stream.write(line + "\n")
            self.stream.flush()

    def close(self) -> None:
        self.bar.close()


def train_classifier(run_dir: str | os.PathLike, **kwargs) -> dict:
    """Train a noise-conditional classifier ``p(y | x_t, t)`` for classifier guidance.

    :func:`train` with ``objective="classifier"``: the same loop, options, run folder and
    resumption; the network is the classifier of the chosen family (``ClassifierMLP`` for
    vectors, ``ClassifierUNet`` for images) and the loss the cross-entropy at noisy data.
    :func:`~scoresde.load_run` returns the :class:`~scoresde.NoiseClassifier`.
    """
    if kwargs.pop("objective", "classifier") != "classifier":
        raise ValueError("train_classifier trains objective='classifier'; use train for scores")
    return train(run_dir, objective="classifier", **kwargs)
