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

from .checks import check_choice, check_int, check_number
from .data import DATA_OPTIONS, get_dataset
from .images import check_factor
from .latent import latent_dataset
from .loop import (LOSSES, Interrupts, Options, Process, TrainingInterrupted, build_parts,
                   dist_setup, fork_rng, run_loop)
from .losses import T_SAMPLINGS, WEIGHTINGS, check_log_snr_share
from .models import build_net, resolve_net
from .runs import (TRAINER_TEMPORARIES, check_run_folder, last_loss, learnt_unconditional,
                   load_run, read_config, resume_state, truncate_metrics, write_config)
from .sde import SDE, get_sde
from .quality import check_eval
from .snapshots import snapshot_size
from .hardware import PRECISIONS, check_batch_gpu, check_precision, count_params
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
    _check_objective(kw)
    _check_scale(kw, dataset)
    _check_super_res(kw, dataset)
    if kw["objective"] == "classifier" and not dataset.num_classes:
        raise ValueError(f"a classifier needs class labels; data {dataset.name!r} has none")
    if kw["conditional"] and not (dataset.num_classes or dataset.embed_dim):
        raise ValueError(f"conditional training needs labels or embeddings; data "
                         f"{dataset.name!r} has none")
    return kw


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
    kw["downsample"] = check_int("downsample", kw["downsample"], 1)
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
    check_choice("precision", kw["precision"], PRECISIONS)
    kw["batch_gpu"] = check_batch_gpu(kw["batch_gpu"])
    for key in ("compile", "channels_last"):
        if not isinstance(kw[key], bool):
            raise TypeError(f"{key} must be True or False, got {kw[key]!r}")
    if kw["channels_last"] and len(dataset.event_shape) != 3:
        raise ValueError(f"channels_last is for images (C, H, W); data {dataset.name!r} has "
                         f"shape {tuple(dataset.event_shape)}")
    if kw["sample_every"] is not None:
        kw["sample_every"] = check_int("sample_every", kw["sample_every"], 1)
        snapshot_size(dataset.event_shape, dataset.is_image)
    if kw["eval_every"] is not None:
        kw["eval_every"] = check_int("eval_every", kw["eval_every"], 1)
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
    sigma_data = kw["sigma_data"] if kw["sigma_data"] is not None else dataset.std()
    network = _build_net(kw["net"], kw["net_params"], dataset, kw["conditional"],
                         kw["objective"], kw["super_res"])
    config = {k: v for k, v in kw.items() if k not in ("sde_params", "net_params", "callback")}
    config.update(
        data=os.fspath(kw["data"]) if isinstance(kw["data"], (str, os.PathLike)) else dict(
            zip(("means", "covs", "weights"), _mixture_lists(kw["data"]))),
        data_shape=list(dataset.event_shape), is_image=dataset.is_image,
        num_classes=dataset.num_classes, embed_dim=dataset.embed_dim, raw_scale=dataset.raw_scale,
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
    *,
    data="8gaussians",
    channels: int | None = None,
    resolution: int | None = None,
    flip: bool = False,
    pixels: bool | None = None,
    downsample: int = 1,
    super_res: int | None = None,
    cond_aug: float = 0.2,
    sde: str | SDE = "vp",
    sde_params: dict | None = None,
    net: str = "auto",
    net_params: dict | None = None,
    conditional: bool = False,
    label_dropout: float = 0.1,
    objective: str = "score",
    latent: str | os.PathLike | None = None,
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
    precision: str = "fp32",
    batch_gpu: int | None = None,
    compile: bool = False,
    channels_last: bool = False,
    sample_every: int | None = None,
    eval_every: int | None = None,
    eval_n: int = 1000,
    eval_features: str = "digits",
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
        run_dir: the run folder; one that has a checkpoint is only continued with ``resume=True``;
            with ``resume=True`` a folder that is absent or has no checkpoint yet starts afresh
            (what a job that a scheduler may kill and requeue wants: always ``resume=True``).
        data: a toy name, ``"digits"``, a ``.npy``/``.npz`` path (uint8 arrays of rank 3 or 4
            are 8-bit images), a folder of image files (one subfolder per class for labels) or
            a ``GaussianMixture``; see :func:`~scoresde.get_dataset`.
        channels, resolution: image folders: convert to 1, 3 or 4 channels; resize the
            shorter side and centre-crop to ``resolution x resolution`` (see
            :func:`~scoresde.get_dataset`).
        flip: 8-bit images: mirror each training image left to right with probability 1/2,
            drawn with the run's seed, so a resumed run draws the same.
        pixels: ``.npy``/``.npz`` data: None reads a uint8 array of rank 3 or 4 as 8-bit
            images; False as stored values (what runs of versions before image support did,
            which their upgraded config records: pass ``pixels=False`` to resume one).
        downsample: image sets held as values (digits, float arrays): train at ``1 /
            downsample`` of the resolution (block means), e.g. the 4x4 base of a cascade.
        super_res: train a super-resolution model (:mod:`scoresde.cascade`): the score of the
            images given the images downsampled by this factor, upsampled, as extra input
            channels of a U-Net (``cond_channels``); None for an ordinary model.
        cond_aug: with ``super_res``, conditioning augmentation (Ho et al. 2021): each training
            sample's low-resolution image is noised by ``a N(0, I)`` with ``a ~ U[0,
            cond_aug]``, and ``a`` is given to the network; 0 for none. Recorded as 0 without
            ``super_res``.
        sde, sde_params: an SDE name with its parameters, or an SDE instance.
        net, net_params: ``"auto"`` (MLP for vectors, U-Net for images), a network of
            ``models.NETS`` (``"mlp"``, ``"unet"``, ``"ddpmpp"``) or a preset of
            ``models.NET_PRESETS`` (``"ddpmpp_cifar10"``, ``"ddpmpp_small8"``, ...), and keyword
            overrides for the network (over the preset's).
        conditional: pass the data's labels to the network: class labels, or embeddings (an
            ``.npz`` whose ``y`` holds floats of shape ``(N, E)``; the network then projects
            them and learns a null embedding, see :mod:`scoresde.embeddings`).
        label_dropout: with ``conditional``, the share of labels replaced by the null label
            (-1; embeddings: the learnt null embedding), so the same network also learns the
            unconditional score that classifier-free guidance needs (Ho & Salimans 2021); 0 to
            never drop.
        objective: ``"score"`` (a :class:`~scoresde.ScoreModel`), ``"classifier"`` (a
            :class:`~scoresde.NoiseClassifier` of noisy data for classifier guidance, trained
            with :func:`~scoresde.losses.classifier_loss`; see :func:`train_classifier`) or
            ``"autoencoder"`` (a :class:`~scoresde.models.ConvAutoencoder` of images, trained
            with :func:`~scoresde.latent.autoencoder_loss`, for ``latent``; ``net_params`` are
            its keywords).
        latent: an autoencoder run: train the score model on its latents of its data (``data``
            and the data options are the autoencoder run's, recorded as such), scaled to unit
            variance; the scale is recorded as ``latent_scale``. :func:`~scoresde.load_run`
            then gives a :class:`~scoresde.latent.LatentDiffusion` (see :mod:`scoresde.latent`).
        steps, batch_size: optimizer steps and points per step; ``batch_size=None`` is 1024 for
            vector data (tuned on the 2D toys, docs/benchmarks/training.md) and 128 for images.
        weighting, eps, t_sampling: see :func:`~scoresde.losses.dsm_loss`.
        log_snr_share: with ``weighting="sigma2"``, the share of each batch's times drawn
            uniformly in log-SNR rather than in ``t`` (see :mod:`scoresde.losses`); 0.3 with
            ``net_params={"input_features": 64}`` is the recipe for data with sharp edges such
            as checkerboard (docs/benchmarks/training.md).
        sigma_data: data scale for the preconditioning; the data's standard deviation if None.
        device: ``"cpu"`` or ``"cuda"``; under torchrun with CUDA each rank uses its local GPU.
        precision: ``"fp32"``; ``"bf16"`` (autocast, CPU and CUDA); ``"fp16"`` (autocast with a
            gradient scaler, CUDA only: a step whose gradients overflow is skipped and counted
            as ``skipped_steps`` in the records, not stopped). Weights, optimizer and EMA stay
            float32, and so do sampling and likelihoods of the trained run.
        batch_gpu: the most samples per forward pass (EDM's name): each process's share of the
            batch is cut into micro-batches whose gradients are added up before the step, so
            the result equals the whole batch's up to float round-off; None: the whole share.
            It may change on resume (so may ``compile``, ``channels_last``, ``sample_every``).
        compile: run the model through ``torch.compile``; a platform that cannot compile stops
            at the first step with a ``RuntimeError`` saying so (no silent fallback).
        channels_last: images in ``torch.channels_last`` memory format (faster convolutions on
            recent GPUs).
        sample_every: every this many steps (and at the end), draw a seeded grid of images or a
            2D scatter from the EMA weights into ``run_dir/samples/step_NNNNNN.png`` (rank 0).
        eval_every, eval_n, eval_features: every ``eval_every`` steps (and at the end), record
            FID, KID, precision and recall of ``eval_n`` samples of the EMA weights in
            ``metrics.jsonl`` (rank 0; :class:`scoresde.quality.TrainingEvaluator`: the same
            seed each time, the solver and steps of the sample grids), with features from
            ``eval_features`` (``"digits"`` or a TorchScript file, see
            :func:`scoresde.features.get_extractor`). FID of ``eval_n`` samples is comparable
            only with FID of as many. The draws leave the training's random streams alone, and
            all three may change on resume. Score runs only, without ``super_res`` or
            ``latent`` (their samples need a condition or a decoder).
        resume: continue from ``checkpoint.pt``; ``steps`` may be raised to train longer.
        progress: a progress line on stderr (rank 0 only), after the network's parameter
            count.
        callback: ``callback(step, record)`` after every step (rank 0 only), for monitoring; it
            makes the loop read the loss from the device every step (a GPU waits for it).

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
    kw = dict(locals())
    with Interrupts(run_dir) as interrupts:  # from here, a signal stops cleanly
        rank, world, dev, owned = dist_setup(resolve_device(device))
        try:
            with fork_rng(dev):  # every draw, seeded or not, leaves the caller's RNG alone
                return _run(kw, Process(rank, world, dev, os.fspath(run_dir)), interrupts)
        finally:
            if owned:
                dist.destroy_process_group()


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
        # Records after the checkpoint (or all, starting afresh) are from an attempt that died.
        truncate_metrics(proc.run_dir, start)
        if kw["progress"]:
            print(f"network {config['net']['name']}: {config['num_params']:,} parameters",
                  file=sys.stderr)
    sde = kw["sde"] if isinstance(kw["sde"], SDE) else get_sde(**config["sde"])
    parts = build_parts(config, sde, dataset, proc, state)
    elapsed = float(state["elapsed_s"]) if state is not None else 0.0
    try:
        result = run_loop(parts, Options.of(config), proc, start=start, elapsed=elapsed,
                          callback=kw["callback"], progress=kw["progress"],
                          interrupts=interrupts)
    finally:
        if parts.batches is not None:
            parts.batches.close()  # the DataLoader workers of a streamed folder
    if start >= config["steps"]:  # nothing trained: the loss the run last recorded
        result["loss"] = last_loss(proc.run_dir)
    return dict(result, resumed_from=start if state is not None else None)


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
