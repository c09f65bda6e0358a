"""Training loop: weighted DSM with Adam(W), warmup, clipping, EMA, checkpoints, resume and DDP.

``train`` runs unchanged in one process or under ``torchrun --nproc_per_node=N``: every rank draws
the same global batch (data, times, noise) from the same seeded generator and trains on its own
slice, DistributedDataParallel averages the gradients, and rank 0 writes the run folder. The
result therefore equals one process with the same global batch, up to float summation order.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Callable

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel

from .checkpoint import (CHECKPOINT, append_metrics, load_checkpoint, read_config,
                         save_checkpoint, truncate_metrics, write_config)
from .data import get_dataset
from .labels import NULL_LABEL
from .losses import (T_SAMPLINGS, WEIGHTINGS, check_log_snr_share, classifier_loss, dsm_loss,
                     sample_time)
from .models import NoiseClassifier, ScoreModel, build_net
from .sde import SDE, get_sde
from .utils import resolve_device

__all__ = ["train", "train_classifier", "load_run", "OBJECTIVES"]

# What a run learns: the score (``ScoreModel``) or a noisy classifier (``NoiseClassifier``).
OBJECTIVES = ("score", "classifier")


def _objective(name: str):
    """``(wrapper, loss)`` of an objective: the module around the network and its loss."""
    return (ScoreModel, dsm_loss) if name == "score" else (NoiseClassifier, classifier_loss)

# Options that may change between a run and its resumption; all others must match config.json.
_MAY_CHANGE = {"steps", "progress", "checkpoint_every", "log_every", "device", "resume", "run_dir"}
# Default points per step when train(batch_size=None): vectors (tuned on the 2D toys) and images.
VECTOR_BATCH, IMAGE_BATCH = 1024, 128
# Tuned on the 2D toys (benchmarks/train_toys.py, BENCHMARKS.md "Training") with train()'s
# defaults of 1500 steps of batch 1024: about a minute on one thread of a loaded 2-core CPU.
_MLP_DEFAULTS = {"hidden": 128, "depth": 3, "time_dim": 64, "time_features": "fourier",
                 "time_scale": 4.0}


def _net_config(net, net_params, dataset, conditional, objective) -> dict:
    if net == "auto":
        net = "unet" if dataset.is_image else "mlp"
    params = dict(_MLP_DEFAULTS) if net == "mlp" else {}
    params.update(net_params or {})
    params.update(event_shape=list(dataset.event_shape),
                  num_classes=dataset.num_classes if conditional else 0)
    if objective == "classifier":  # the same family, ending in class logits
        net = net if net.endswith("_classifier") else f"{net}_classifier"
        params["num_classes"] = dataset.num_classes
    return build_net({"name": net, **params}).config()


def _resolve(kw: dict, dataset) -> dict:
    """Check the keywords and turn them into the JSON-able config of the run."""
    if kw["weighting"] not in WEIGHTINGS or kw["t_sampling"] not in T_SAMPLINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS} and t_sampling one of "
                         f"{T_SAMPLINGS}; got {kw['weighting']!r} and {kw['t_sampling']!r}")
    for key in ("steps", "batch_size", "checkpoint_every", "log_every"):
        if not (isinstance(kw[key], int) and kw[key] >= 1):
            raise ValueError(f"{key} must be an integer >= 1, got {kw[key]!r}")
    if not (kw["lr"] > 0 and 0 <= kw["ema_decay"] < 1 and kw["warmup"] >= 0):
        raise ValueError("need lr > 0, 0 <= ema_decay < 1 and warmup >= 0")
    if kw["optimizer"] not in ("adam", "adamw") or kw["lr_decay"] not in ("cosine", "none"):
        raise ValueError("optimizer must be 'adam' or 'adamw' and lr_decay 'cosine' or 'none'")
    if kw["objective"] not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got "
                         f"{kw['objective']!r}")
    if (kw["conditional"] or kw["objective"] == "classifier") and not dataset.num_classes:
        raise ValueError(f"conditional training needs labels; data {dataset.name!r} has none")
    check_log_snr_share(kw["log_snr_share"], kw["weighting"])
    if not (isinstance(kw["label_dropout"], (int, float)) and 0 <= kw["label_dropout"] < 1):
        raise ValueError(f"label_dropout must be a number in [0, 1), got {kw['label_dropout']!r}")
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


def _lr_at(step: int, config: dict) -> float:
    """Linear warmup over ``warmup`` steps, then constant or cosine decay to 0 at ``steps``."""
    lr, warmup, steps = config["lr"], config["warmup"], config["steps"]
    if step < warmup:
        return lr * (step + 1) / warmup
    if config["lr_decay"] == "cosine":
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


class _Progress:
    """A dependency-free progress line on stderr: step, loss and steps per second."""

    def __init__(self, total: int, start: int, enabled: bool):
        self.total, self.start, self.enabled = total, start, enabled
        self.t0 = self.last = time.perf_counter()

    def update(self, step: int, loss: float, force: bool = False) -> None:
        now = time.perf_counter()
        if not self.enabled or (now - self.last < 0.25 and not force):
            return
        self.last = now
        rate = (step - self.start) / max(now - self.t0, 1e-9)
        eta = (self.total - step) / max(rate, 1e-9)
        sys.stderr.write(f"\rstep {step}/{self.total} | loss {loss:.4f} | {rate:.1f} steps/s | "
                         f"eta {eta:.0f}s ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


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


def _check_resume(run_dir: str, config: dict, resume: bool, rank: int) -> bool:
    """True when resuming from a checkpoint; refuses to overwrite a run that has one."""
    has_ckpt = os.path.isfile(os.path.join(run_dir, CHECKPOINT))
    if has_ckpt and not resume:
        raise FileExistsError(f"{run_dir} already holds a run with a checkpoint; pass resume=True "
                              "to continue it or choose another folder")
    if has_ckpt:
        old = upgrade_config(read_config(run_dir), config["label_dropout"])
        diff = sorted(_differences(old, config))
        if diff:
            raise ValueError(f"cannot resume {run_dir}: options differ from its config.json: "
                             f"{', '.join(diff)}")
    elif rank == 0:
        os.makedirs(run_dir, exist_ok=True)
    return has_ckpt


def _differences(old: dict, new: dict):
    """Names of the options that differ between two configs, ``net.hidden`` style inside the
    option dicts (``net``, ``sde``), skipping those that may change on resumption."""
    for key in set(old) | set(new):
        a, b = old.get(key), new.get(key)
        if key in _MAY_CHANGE or a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            yield from (f"{key}.{k}" for k in set(a) | set(b) if a.get(k) != b.get(k))
        else:
            yield key


def upgrade_config(old: dict, label_dropout: float = 0.1) -> dict:
    """A run's ``config.json`` with the options that runs from older versions lack filled in with
    what those runs did, so that they can be resumed (``label_dropout`` fills an unconditional
    run's, which has no effect)."""
    old = dict(old)
    # Runs from before conditional training learnt scores and never dropped labels.
    old.setdefault("objective", "score")
    old.setdefault("label_dropout", 0.0 if old.get("conditional") else label_dropout)
    # Runs from before log_snr_share drew every time by the weighting's own rule.
    old.setdefault("log_snr_share", 0.0)
    if "net" in old:  # networks fill in keywords added since, with the values old runs had
        old["net"] = build_net(old["net"]).config()
    return old


def _rng_state(gen: torch.Generator) -> dict:
    state = {"data": gen.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(gen: torch.Generator, state: dict) -> None:
    gen.set_state(state["data"].cpu())
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


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
    run_dir = os.fspath(run_dir)
    rank, world, dev, owned = _dist_setup(resolve_device(device))
    try:
        return _run(kw, run_dir, rank, world, dev, callback)
    finally:
        if owned:
            dist.destroy_process_group()


def _run(kw, run_dir, rank, world, dev, callback):
    dataset = get_dataset(kw["data"])
    if kw["batch_size"] is None:
        kw["batch_size"] = IMAGE_BATCH if dataset.is_image else VECTOR_BATCH
    config = _resolve(kw, dataset)
    if config["batch_size"] % world:
        raise ValueError(f"batch_size {config['batch_size']} must divide among {world} processes")
    resuming = _check_resume(run_dir, config, kw["resume"], rank)
    state = load_checkpoint(os.path.join(run_dir, CHECKPOINT), map_location=dev) \
        if resuming else None
    if state is not None and int(state["step"]) > config["steps"]:
        raise ValueError(f"cannot resume {run_dir} with steps={config['steps']}: its checkpoint "
                         f"is at step {int(state['step'])}; pass steps >= {int(state['step'])}")
    if rank == 0:
        write_config(run_dir, config)
        if not resuming:  # records of an earlier attempt that died before its first checkpoint
            truncate_metrics(run_dir, 0)
    sde = get_sde(**config["sde"]) if not isinstance(kw["sde"], SDE) else kw["sde"]
    torch.manual_seed(config["seed"])
    wrapper, loss_fn = _objective(config["objective"])
    model = wrapper(build_net(config["net"]), sde, config["sigma_data"]).to(dev)
    ema = AveragedModel(model, multi_avg_fn=_ema_with_warmup(config["ema_decay"]),
                        use_buffers=True)
    opt_cls = torch.optim.AdamW if config["optimizer"] == "adamw" else torch.optim.Adam
    opt = opt_cls(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    gen = torch.Generator(device=dev).manual_seed(config["seed"])
    start, elapsed = 0, 0.0
    if resuming:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        _set_rng_state(gen, state["rng"])
        start, elapsed = int(state["step"]), float(state["elapsed_s"])
        if rank == 0:
            truncate_metrics(run_dir, start)
    net = DistributedDataParallel(model) if world > 1 else model

    def checkpoint(step, seconds):
        if rank == 0:
            save_checkpoint(os.path.join(run_dir, CHECKPOINT), {
                "step": step, "elapsed_s": seconds, "model": model.state_dict(),
                "ema": ema.state_dict(), "optimizer": opt.state_dict(), "rng": _rng_state(gen)})
        if world > 1:
            dist.barrier()

    bar = _Progress(config["steps"], start, kw["progress"] and rank == 0)
    t0, window, last = time.perf_counter(), [], float("nan")
    b, lo = config["batch_size"] // world, rank * (config["batch_size"] // world)
    for step in range(start, config["steps"]):
        # One global batch from the shared generator; this rank trains on its slice.
        x0, y = dataset.sample(config["batch_size"], gen)
        t = sample_time(sde, config["batch_size"], eps=config["eps"],
                        weighting=config["weighting"], t_sampling=config["t_sampling"],
                        log_snr_share=config["log_snr_share"], generator=gen, device=dev)
        z = torch.randn(x0.shape, generator=gen, device=dev)
        y = _labels(y, config, gen, dev)
        x0 = x0.to(dev)[lo:lo + b]
        y = y[lo:lo + b] if y is not None else None
        loss = loss_fn(net, sde, x0, weighting=config["weighting"], eps=config["eps"], y=y,
                       t=t[lo:lo + b], noise=z[lo:lo + b]).mean()
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, config)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            model.parameters(), config["grad_clip"] if config["grad_clip"] else math.inf)
        global_loss = loss.detach().clone()
        if world > 1:
            dist.all_reduce(global_loss)
            global_loss /= world
        if not torch.isfinite(global_loss):
            bar.close()
            raise FloatingPointError(
                f"non-finite loss ({float(global_loss)}) at step {step + 1}; stopped, the last "
                f"good checkpoint in {run_dir} is kept")
        opt.step()
        ema.update_parameters(model)
        last = float(global_loss)
        window.append(last)
        done = step + 1
        seconds = elapsed + time.perf_counter() - t0
        record = {"step": done, "loss": last, "lr": opt.param_groups[0]["lr"],
                  "grad_norm": float(grad_norm)}
        if rank == 0 and (done % config["log_every"] == 0 or done == config["steps"]):
            record.update(loss=sum(window) / len(window), elapsed_s=round(seconds, 3),
                          steps_per_sec=(done - start) / max(time.perf_counter() - t0, 1e-9))
            append_metrics(run_dir, record)
            window = []
        if callback is not None and rank == 0:
            callback(done, record)
        bar.update(done, last, force=done == config["steps"])
        if done % config["checkpoint_every"] == 0 or done == config["steps"]:
            checkpoint(done, seconds)
    bar.close()
    wall = time.perf_counter() - t0
    if start == config["steps"]:  # nothing left to do: keep the checkpoint as it is
        wall = 0.0
    return {"run_dir": run_dir, "step": config["steps"], "loss": last,
            "train_time_s": elapsed + wall, "steps_per_sec": (config["steps"] - start) / wall
            if wall > 0 else float("nan"), "resumed_from": start if resuming else None}


def _labels(y, config, gen, dev):
    """The batch's labels for the objective: none, all, or with ``label_dropout`` of them null."""
    if y is None or not (config["conditional"] or config["objective"] == "classifier"):
        return None
    y = y.to(dev)
    if config["objective"] == "score" and config["label_dropout"] > 0:
        drop = torch.rand(y.shape, generator=gen, device=dev) < config["label_dropout"]
        y = y.masked_fill(drop, NULL_LABEL)
    return y


def train_classifier(run_dir: str | os.PathLike, **kwargs) -> dict:
    """Train a noise-conditional classifier ``p(y | x_t, t)`` for classifier guidance.

    :func:`train` with ``objective="classifier"``: the same loop, options, run folder and
    resumption; the network is the classifier of the chosen family (``ClassifierMLP`` for
    vectors, ``ClassifierUNet`` for images) and the loss the cross-entropy at noisy data.
    :func:`load_run` returns the :class:`~scoresde.NoiseClassifier`.
    """
    if kwargs.pop("objective", "classifier") != "classifier":
        raise ValueError("train_classifier trains objective='classifier'; use train for scores")
    return train(run_dir, objective="classifier", **kwargs)


def load_run(run_dir: str | os.PathLike, device=None, ema: bool = True,
             sde: SDE | None = None) -> tuple[ScoreModel | NoiseClassifier, SDE, dict]:
    """Rebuild a trained model from a run folder (no code is read from the checkpoint).

    A score run gives a :class:`~scoresde.ScoreModel`, a classifier run (:func:`train_classifier`)
    a :class:`~scoresde.NoiseClassifier`.

    Args:
        run_dir: a folder written by :func:`train`.
        device: where to put the model (CPU by default).
        ema: the EMA weights (True) or the raw weights of the last step.
        sde: the SDE to use; rebuilt from ``config.json`` when None (pass your own SDE instance
            for a run trained with a custom SDE class).

    Returns:
        ``(score_model, sde, config)``: the model in eval mode with gradients switched off for
        its parameters, the SDE, and the run's config.
    """
    run_dir = os.fspath(run_dir)
    config = upgrade_config(read_config(run_dir))
    dev = resolve_device(device)
    state = load_checkpoint(os.path.join(run_dir, CHECKPOINT), map_location=dev)
    sde = sde if sde is not None else get_sde(**config["sde"])
    wrapper = _objective(config.get("objective", "score"))[0]
    model = wrapper(build_net(config["net"]), sde, config["sigma_data"])
    weights = state["model"]
    if ema:
        weights = {k.removeprefix("module."): v for k, v in state["ema"].items()
                   if k != "n_averaged"}
    model.load_state_dict(weights)
    model.to(dev).eval().requires_grad_(False)
    return model, sde, config
