"""Training: ``train()`` and ``train_classifier()``, from keywords to a trained run folder.

``train`` checks its keywords and resolves them into the run's ``config.json`` (data shape, SDE
and network configs included), asks :mod:`scoresde.runs` whether and from which checkpoint to
resume, and hands the resolved options to the loop in :mod:`scoresde.loop` (weighted DSM with
Adam(W), warmup, clipping, EMA, checkpoints). It runs unchanged in one process or under
``torchrun --nproc_per_node=N``, and leaves the caller's random state alone: it seeds and draws
inside a fork of PyTorch's random number generators. SIGINT and SIGTERM end it with the
checkpoint of the step it was on (:class:`~scoresde.loop.TrainingInterrupted`).
"""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator

import torch
import torch.distributed as dist

from .checks import OptionError, check_number
from .config import OPTIONS, SCHEMA, TrainConfig, upgrade_config
from .data import DATA_OPTIONS, get_dataset
from .images import check_factor
from .latent import latent_dataset
from .features import EXTRACTORS
from .distributed import dist_setup
from .loop import (LOSSES, Interrupts, Process, TrainingInterrupted, build_parts, fork_rng,
                   run_loop)
from .losses import check_log_snr_share, check_time_sampling
from .phema import check_sigma_rels
from .models import build_net, resolve_net
from .runs import (TRAINER_TEMPORARIES, check_run_folder, drop_ema_snapshots, has_checkpoint,
                   is_run, last_loss, learnt_unconditional, load_run, read_config,
                   resume_keywords, resume_state, truncate_metrics, write_config)
from .sde import SDE, get_sde
from .quality import check_eval
from .snapshots import snapshot_size
from .hardware import check_batch_gpu, check_precision, count_params
from .utils import FolderBusyError, folder_lock, resolve_device

__all__ = ["train", "train_classifier", "TrainingInterrupted", "OBJECTIVES", "VECTOR_BATCH",
           "IMAGE_BATCH"]

OBJECTIVES = tuple(LOSSES)  # what a run learns: a score or a noisy classifier
# Default points per step when train(batch_size=None): vectors (tuned on the 2D toys) and images.
VECTOR_BATCH, IMAGE_BATCH = 1024, 128


# ----- resolving the options ----------------------------------------------------------------------
def _build_net(net, net_params, dataset, conditional, objective, super_res=None):
    """The run's network, freshly built: its config (``config()``) holds the network's own
    defaults, ``net_params`` over them, the shape and classes of the data."""
    if objective == "autoencoder":
        if net not in ("auto", "autoencoder"):
            raise ValueError(f"objective='autoencoder' trains net='autoencoder', not {net!r}")
        if not dataset.is_image:
            raise ValueError(f"the autoencoder is for images (C, H, W); data {dataset.name!r} "
                             f"has shape {tuple(dataset.event_shape)}")
        return build_net({"name": "autoencoder", **(net_params or {}),
                          "event_shape": list(dataset.event_shape)})
    if net == "auto":
        net = "unet" if dataset.is_image else "mlp"
    net, params = resolve_net(net, net_params)
    params.update(event_shape=list(dataset.event_shape),
                  num_classes=dataset.num_classes if conditional else 0)
    if super_res:  # the upsampled low-resolution image comes in as extra channels
        params["cond_channels"] = dataset.event_shape[0]
    if conditional and dataset.embed_dim and objective == "score":
        params["embed_dim"] = dataset.embed_dim
    if objective == "classifier":  # the same family, ending in class logits
        net = net if net.endswith("_classifier") else f"{net}_classifier"
        params["num_classes"] = dataset.num_classes
    try:
        return build_net({"name": net, **params})
    except ValueError as err:
        if not dataset.is_image:
            raise
        raise ValueError(f"{err}; images of {dataset.event_shape} from data {dataset.name!r}: "
                         "choose a resolution the network takes (resolution, --resolution R)"
                         ) from None


def _check(kw: dict, dataset) -> dict:
    """The keywords after checking each; integers as plain ``int``."""
    kw = dict(kw, **TrainConfig.of(**{k: kw[k] for k in OPTIONS}).check().options())
    check_log_snr_share(kw["log_snr_share"], kw["weighting"])
    _check_objective(kw)
    _check_power_ema(kw)
    _check_scale(kw, dataset)
    _check_super_res(kw, dataset)
    if kw["objective"] == "classifier" and not dataset.num_classes:
        raise ValueError(f"a classifier needs class labels; data {dataset.name!r} has none")
    if kw["conditional"] and not (dataset.num_classes or dataset.embed_dim):
        raise ValueError(f"conditional training needs labels or embeddings; data "
                         f"{dataset.name!r} has none")
    return kw


def _check_power_ema(kw: dict) -> None:
    """The power-function EMA profiles as a list of floats (None for none), and how often
    their snapshots are written (a twentieth of the steps when not given)."""
    profiles = kw["ema_profiles"]
    profiles = check_sigma_rels("ema_profiles", profiles) if profiles is not None else []
    kw["ema_profiles"] = profiles or None
    if not profiles:
        if kw["ema_snapshot_every"] is not None:
            raise ValueError("ema_snapshot_every writes snapshots of the ema_profiles; give "
                             "ema_profiles too")
    elif kw["ema_snapshot_every"] is None:
        kw["ema_snapshot_every"] = max(1, kw["steps"] // 20)


def _check_objective(kw: dict) -> None:
    """What an autoencoder run or a latent run cannot do."""
    if kw["objective"] == "autoencoder":
        for key in ("conditional", "sample_every", "super_res", "latent"):
            if kw[key]:
                raise ValueError(f"objective='autoencoder' trains an autoencoder only; "
                                 f"{key}={kw[key]!r} is not supported with it")
    elif kw["latent"] is not None and (kw["super_res"] or kw["downsample"] != 1
                                       or kw["sample_every"]):
        raise ValueError("latent runs take no super_res, downsample or sample_every")


def _check_super_res(kw: dict, dataset) -> None:
    """A super-resolution run: the factor divides the images; an unconditional score."""
    if kw["super_res"] is None:
        kw["cond_aug"] = 0.0  # not used: recorded as what it does
        return
    kw["super_res"] = check_factor("super_res", kw["super_res"], dataset.event_shape)
    kw["cond_aug"] = check_number("cond_aug", kw["cond_aug"], 0)
    for key, bad in (("conditional", kw["conditional"]), ("sample_every", kw["sample_every"]),
                     ("objective", kw["objective"] != "score")):
        if bad:
            raise ValueError(f"super_res trains a score conditioned on the low-resolution image "
                             f"only; {key}={kw[key]!r} is not supported with it")


def _check_scale(kw: dict, dataset) -> None:
    """The options of how training runs: precision, micro-batches, compile, sample grids."""
    kw["batch_gpu"] = check_batch_gpu(kw["batch_gpu"])
    if kw["channels_last"] and len(dataset.event_shape) != 3:
        raise ValueError(f"channels_last is for images (C, H, W); data {dataset.name!r} has "
                         f"shape {tuple(dataset.event_shape)}")
    if kw["sample_every"] is not None:
        snapshot_size(dataset.event_shape, dataset.is_image)
    if kw["eval_every"] is not None:
        # FID of a score of the images themselves (each class in turn for class labels; the
        # null embedding, learnt from dropped embeddings, for embedding conditioning)
        for key, bad in (("objective", kw["objective"] != "score"),
                         ("super_res", kw["super_res"]), ("latent", kw["latent"])):
            if bad:
                raise ValueError(f"eval_every measures FID of a score model's image samples; "
                                 f"{key}={kw[key]!r} is not supported with it")
        if dataset.embed_dim and not learnt_unconditional(kw):
            raise ValueError("eval_every samples an embedding-conditioned model with its null "
                             "embedding, which label_dropout=0 never trains; set label_dropout")
        kw["eval_n"] = check_eval(dataset, kw["eval_features"], kw["eval_n"])


def _resolve(kw: dict, dataset) -> dict:
    """Check the keywords and turn them into the JSON-able config of the run."""
    kw = _check(kw, dataset)
    sde = kw["sde"]
    if not isinstance(sde, SDE):
        sde = get_sde(sde, **(kw["sde_params"] or {}))
    check_time_sampling(kw["time_sampling"], kw["time_loc"], kw["time_scale"],
                        weighting=kw["weighting"], log_snr_share=kw["log_snr_share"], T=sde.T)
    sigma_data = kw["sigma_data"] if kw["sigma_data"] is not None else dataset.std()
    network = _build_net(kw["net"], kw["net_params"], dataset, kw["conditional"],
                         kw["objective"], kw["super_res"])
    config = {"schema": SCHEMA}
    config.update((k, v) for k, v in kw.items() if k not in ("sde_params", "net_params",
                                                              "callback"))
    config.update(
        data=os.fspath(kw["data"]) if isinstance(kw["data"], (str, os.PathLike)) else dict(
            zip(("means", "covs", "weights"), _mixture_lists(kw["data"]))),
        data_shape=list(dataset.event_shape), is_image=dataset.is_image,
        num_classes=dataset.num_classes, class_names=list(dataset.class_names),
        embed_dim=dataset.embed_dim, raw_scale=dataset.raw_scale,
        raw_offset=dataset.raw_offset, pixel_bits=dataset.pixel_bits, sde=sde.config(),
        sigma_data=float(sigma_data), net=network.config(), num_params=count_params(network),
        run_dir=os.path.abspath(kw["run_dir"]))
    if isinstance(kw["data"], (str, os.PathLike)) and os.path.exists(kw["data"]):
        config["data_path"] = os.path.abspath(kw["data"])  # where it is, wherever one works
    return config


def _mixture_lists(mix) -> tuple[list, list, list]:
    """``(means, covs, weights)`` of a ``GaussianMixture`` (or its dict) as nested lists."""
    if isinstance(mix, dict):
        return mix["means"], mix["covs"], mix.get("weights")
    return mix.means.tolist(), mix.covs.tolist(), mix.weights.tolist()


def train(
    run_dir: str | os.PathLike,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    device: str = "cpu",
    progress: bool = True,
    callback: Callable[[int, dict], None] | None = None,
    **options,
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
        run_dir: the run folder; one that has a checkpoint is only continued with ``resume=True``;
            with ``resume=True`` a folder that is absent or has no checkpoint yet starts afresh
            (what a job that a scheduler may kill and requeue wants: always ``resume=True``).
        config: a :class:`~scoresde.config.TrainConfig`; ``options`` change single options of
            it. None: the defaults, with ``options``.
        resume: continue from ``checkpoint.pt``. The options given here (the keywords, or every
            option of a ``config``) must match the run's, except those of
            :data:`~scoresde.runs.MAY_CHANGE` (``steps`` may be raised to train longer); the
            options not given are the run's own, whatever the defaults are now. A network or
            SDE given by the name the run has keeps its parameters; ``net_params`` and
            ``sde_params`` change single ones (which must then match too).
        device: ``"cpu"`` or ``"cuda"``; under torchrun with CUDA each rank uses its local GPU.
        progress: a progress line on stderr (rank 0 only), after the network's parameter
            count.
        callback: ``callback(step, record)`` after every step (rank 0 only), for monitoring; it
            makes the loop read the loss from the device every step (a GPU waits for it).
        **options: the training options by name (``steps=5000``, ``lr=1e-3``, ``data="moons"``,
            ``net_params={"hidden": 256}``), each documented in its group of
            :mod:`scoresde.config`: the data (:class:`~scoresde.config.DataOptions`), the
            network (:class:`~scoresde.config.NetworkOptions`), the SDE and the loss
            (:class:`~scoresde.config.LossOptions`), the optimiser
            (:class:`~scoresde.config.OptimOptions`), the loop
            (:class:`~scoresde.config.LoopOptions`) and the evaluation while training
            (:class:`~scoresde.config.EvalOptions`). An unknown name is a ``TypeError``.

    Returns:
        ``{"run_dir", "step", "loss", "train_time_s", "steps_per_sec", "resumed_from"}``
        (and ``"skipped_steps"`` with fp16). ``loss`` is the mean loss of the last record; a
        run resumed at its total trains no step, and gives its last record's.

    Raises:
        ValueError: bad options, or options that differ from the run being resumed.
        FileExistsError: ``run_dir`` has a checkpoint and ``resume`` is False.
        FolderBusyError: another process is training into ``run_dir`` (a ``RuntimeError``; the
            message names it). The lock dies with its holder, so a killed run does not block.
        FloatingPointError: the loss or the gradient norm became NaN or infinite (the message
            names the step; the run stops at the next record, checkpoint or sample grid, and
            the last good checkpoint is kept).
        RuntimeError: ``compile=True`` on a platform where ``torch.compile`` fails.
        TrainingInterrupted: SIGINT (Ctrl-C) or SIGTERM (a scheduler's or ``torchrun``'s
            request to stop) arrived; a ``KeyboardInterrupt``, for SIGTERM too. During a step,
            training stops at the end of it (its evaluation and sample grid included), writes
            its record and checkpoint and raises with ``step`` set: ``resume=True`` then goes
            on bit-identically. A further SIGTERM is ignored until that checkpoint is written,
            so a scheduler's stop always saves; Ctrl-C pressed again stops at once with a
            plain ``KeyboardInterrupt``, as SIGKILL does, leaving the previous checkpoint. A
            signal before the first step raises at once with ``step=None`` (nothing trained,
            nothing saved); one in the last step lets the run finish. The
            handlers are taken in the main thread only, for the call, and put back as they
            were. Under ``torchrun`` every rank stops at the same step, a step after the
            signal: the ranks agree on it with one ``all_reduce`` of one integer per step
            (one process has no such cost).
    """
    given = (config or TrainConfig()).replace(**options)
    named = set(OPTIONS) if config is not None else set(options)
    with Interrupts(run_dir) as interrupts:  # from here, a signal stops cleanly
        rank, world, dev, owned = dist_setup(resolve_device(device))
        try:
            with fork_rng(dev):  # every draw, seeded or not, leaves the caller's RNG alone
                kw = dict(run_dir=run_dir, **_options(run_dir, given, named, resume),
                          resume=resume, device=device, progress=progress, callback=callback)
                return _run(kw, Process(rank, world, dev, os.fspath(run_dir)), interrupts)
        finally:
            if owned:
                dist.destroy_process_group()


def _options(run_dir, given: TrainConfig, named: set, resume: bool) -> dict:
    """The run's options by name: those ``given``; resuming a run that has a checkpoint, those
    not ``named`` by the caller are the run's own (see :func:`~scoresde.runs.resume_keywords`).
    """
    if not (resume and has_checkpoint(run_dir) and is_run(run_dir)):
        return given.options()
    kept = resume_keywords(upgrade_config(read_config(run_dir)), given.options(), named)
    features = str(kept["eval_features"])
    if kept["eval_every"] and "eval_features" not in named and features not in EXTRACTORS:
        raise OptionError("eval_features", (
            f"the run measures FID with the TorchScript file {features!r}, which runs code; a "
            f"file named only in a run's config is never loaded: give it again as the "
            f"evaluation's features to trust it, or 'digits'"))
    return kept


@contextmanager
def _one_writer(proc: Process) -> Iterator[None]:
    """Rank 0 holds the run folder's writer lock for the whole run; under ``torchrun`` every rank
    learns whether it got it, so that a second job stops on all its ranks at once."""
    error = None
    with ExitStack() as stack:
        if proc.rank == 0:
            try:
                stack.enter_context(folder_lock(proc.run_dir, TRAINER_TEMPORARIES))
            except FolderBusyError as err:
                error = err
        if proc.world > 1:
            held = torch.tensor([error is None], dtype=torch.int32, device=proc.device)
            dist.broadcast(held, 0)
            if not held.item() and error is None:
                error = FolderBusyError(f"{proc.run_dir} is being written by another process")
        if error is not None:
            raise error
        yield


def _run(kw: dict, proc: Process, interrupts: Interrupts) -> dict:
    """Resolve the options, take the run folder, build the parts and run the loop."""
    scale = None
    if kw["latent"] is not None:  # the autoencoder's data, encoded
        dataset, scale = _latents(kw)
    else:
        dataset = get_dataset(kw["data"], **{k: kw[k] for k in DATA_OPTIONS})
    if kw["batch_size"] is None:
        kw["batch_size"] = IMAGE_BATCH if dataset.is_image else VECTOR_BATCH
    config = _resolve(kw, dataset)
    config["latent_scale"] = scale
    check_precision(config["precision"], proc.device)
    if config["batch_size"] % proc.world:
        raise ValueError(f"batch_size {config['batch_size']} must divide among {proc.world} "
                         "processes")
    if proc.rank == 0:  # before the lock file is made: a folder of the user's is left as it was
        check_run_folder(proc.run_dir, kw["data"])
    with _one_writer(proc):
        return _train_locked(kw, config, dataset, proc, interrupts)


def _latents(kw: dict):
    """The latents of the autoencoder run ``kw["latent"]`` (its data and data options, which
    ``kw`` then records) and their scale: see :func:`scoresde.latent.latent_dataset`."""
    kw["latent"] = os.path.abspath(os.fspath(kw["latent"]))
    objective = read_config(kw["latent"]).get("objective", "score")
    if objective != "autoencoder":
        raise ValueError(f"latent={kw['latent']!r} must be an autoencoder run (train one with "
                         f"objective='autoencoder'), not a {objective!r} run")
    autoencoder, _, ae_config = load_run(kw["latent"])
    kw["data"] = ae_config["data"]
    kw.update({k: ae_config[k] for k in DATA_OPTIONS if k in ae_config})
    dataset = get_dataset(kw["data"], **{k: kw[k] for k in DATA_OPTIONS})
    return latent_dataset(dataset, autoencoder)


def _train_locked(kw: dict, config: dict, dataset, proc: Process,
                  interrupts: Interrupts) -> dict:
    """Continue or start the run in its folder, whose writer lock this process holds."""
    state = resume_state(proc.run_dir, config, kw["resume"], proc.rank, proc.device)
    start = int(state["step"]) if state is not None else 0
    if proc.rank == 0:
        write_config(proc.run_dir, config)
        # Records and EMA snapshots after the checkpoint (or all, starting afresh) are from an
        # attempt that died.
        truncate_metrics(proc.run_dir, start)
        drop_ema_snapshots(proc.run_dir, start)
        if kw["progress"]:
            print(dataset.summary(), file=sys.stderr)
            print(f"network {config['net']['name']}: {config['num_params']:,} parameters",
                  file=sys.stderr)
    sde = kw["sde"] if isinstance(kw["sde"], SDE) else get_sde(**config["sde"])
    parts = build_parts(config, sde, dataset, proc, state)
    elapsed = float(state["elapsed_s"]) if state is not None else 0.0
    try:
        result = run_loop(parts, TrainConfig.from_run(config), proc, start=start, elapsed=elapsed,
                          callback=kw["callback"], progress=kw["progress"],
                          interrupts=interrupts)
    finally:
        if parts.batches is not None:
            parts.batches.close()  # the DataLoader workers of a streamed folder
    if start >= config["steps"]:  # nothing trained: the loss the run last recorded
        result["loss"] = last_loss(proc.run_dir)
    return dict(result, resumed_from=start if state is not None else None)


def train_classifier(run_dir: str | os.PathLike, config: TrainConfig | None = None,
                     **kwargs) -> dict:
    """Train a noise-conditional classifier ``p(y | x_t, t)`` for classifier guidance.

    :func:`train` with ``objective="classifier"``: the same loop, options, run folder and
    resumption; the network is the classifier of the chosen family (``ClassifierMLP`` for
    vectors, ``ClassifierUNet`` for images) and the loss the cross-entropy at noisy data.
    :func:`~scoresde.load_run` returns the :class:`~scoresde.NoiseClassifier`.
    """
    if kwargs.pop("objective", "classifier") != "classifier":
        raise ValueError("train_classifier trains objective='classifier'; use train for scores")
    return train(run_dir, config, objective="classifier", **kwargs)
