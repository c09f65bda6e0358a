"""Sample quality of a trained model: reference statistics (cached) and FID, KID, precision/recall.

:func:`~scoresde.reference.reference_stats` (module :mod:`scoresde.reference`) computes the
features of a data set's training images once per data set, resolution and extractor and caches
them (the mean and covariance, and the features of a fixed subset for KID and precision/recall).

:func:`sample_quality` draws ``n`` samples from a model in chunks (chunk ``k`` from
:func:`~scoresde.sample_files.chunk_generator`, as ``scoresde sample`` draws them), turns each
chunk into features at once and keeps only running moments and at most
:data:`KEEP_FEATURES` features, so memory does not grow with ``n``. FID is biased upward at
small ``n`` and comparable only between equal ``n`` (:data:`FID_N`, 10,000, is the smallest
the CLI calls comparable; 50,000 is the papers'); KID is unbiased.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from .checks import check_int
from .data import Dataset
from .distributed import Ranks, joined
from .features import FEATURE_BATCH, extract_features, extractor_digest
from .labels import chunk_labels
from .metrics import KID_MIN_SUBSETS, check_fid_size, frechet_distance, kid, precision_recall
from .reference import (CACHE_ENV, KEEP_FEATURES, REFERENCE_MAX, Reference, _Moments,
                        cache_dir, image_features, reference_stats)
from .snapshots import SNAPSHOT_SOLVER, SNAPSHOT_STEPS
from .utils import resolve_device

FID_N = 10_000  # below this many samples the CLI warns that FID is biased
# The solver and steps of run_quality (and scoresde fid) when none is given: a few-step solver
# with the data's statistics comes near the ODE's FID on the digits at about 10 score calls
# (docs/benchmarks/sample-quality.md); pc at 1000 steps (2000 calls) would take about 3 hours
# for 10,000 digits on two CPU cores by the pc timings there (224 s at 39 calls).
FID_SOLVER, FID_STEPS = "dpmpp_2m", 10

__all__ = ["CACHE_ENV", "REFERENCE_MAX", "KEEP_FEATURES", "FID_N", "Reference", "cache_dir",
           "reference_stats", "image_features", "chunk_labels", "sample_quality",
           "samples_quality", "file_quality", "run_images", "quality_scores", "run_quality",
           "FID_SOLVER", "FID_STEPS",
           "EVAL_SOLVER", "EVAL_STEPS", "check_eval", "TrainingEvaluator"]

def quality_scores(mu: np.ndarray, sigma: np.ndarray, features: torch.Tensor,
                   reference: Reference, *, seed: int = 0, k: int = 3,
                   kid_estimator: str = "all_pairs") -> dict:
    """FID, KID (mean and standard error, :func:`~scoresde.metrics.kid`'s ``kid_estimator``),
    precision and recall of samples' statistics and kept features against a
    :class:`Reference`; KID's subsets (with ``"subsets"``) and the precision/recall subsets
    are drawn from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    kid_mean, kid_se = kid(features, reference.features, estimator=kid_estimator, generator=gen)
    if kid_estimator == "all_pairs":  # the shuffles "subsets" draws, so that precision and
        torch.randperm(len(features), generator=gen)  # recall draw the same subsets either way
        torch.randperm(len(reference.features), generator=gen)
    precision, recall = precision_recall(reference.features, features, k=k, generator=gen)
    return {"fid": frechet_distance(mu, sigma, reference.mu, reference.sigma), "kid": kid_mean,
            "kid_se": kid_se, "precision": precision, "recall": recall}


def _data_statistics(model, dataset: Dataset, solver: str, steps: int, options: dict) -> dict:
    """What ``scoresde sample`` gives a few-step solver (``Dataset.sampling_statistics``, with
    the model's ``sigma_data`` as the run's), when the solver uses them."""
    from .sampling.fewstep import uses_data_stats

    if not uses_data_stats(solver, steps, *(options.get(k) for k in ("grid", "sigma_max",
                                                                        "sigma_min"))):
        return {}
    return dataset.sampling_statistics(getattr(model, "sigma_data", None))


def _check_count(n: int, reference: Reference) -> int:
    """``n``, if FID (more samples than features) and KID (its subsets) can be measured on it."""
    check_fid_size(n, reference.mu.shape[0])
    if n < 2 * KID_MIN_SUBSETS:
        raise ValueError(f"KID needs at least {2 * KID_MIN_SUBSETS} samples, got n={n}")
    return n


def _check_condition(model, label, guidance: float) -> int:
    """Check ``label`` and ``guidance`` against ``model``; return its number of classes."""
    if guidance != 0 and label is None:
        raise ValueError("guidance needs label (the classes to guide towards)")
    embed_dim = getattr(model, "embed_dim", 0) or 0
    if label is not None and embed_dim:
        raise ValueError(f"label={label!r} is a class; this model is conditioned on embeddings "
                         f"(embed_dim {embed_dim}), which FID samples with its null embedding: "
                         "give label=None")
    num_classes = getattr(model, "num_classes", 0) or 0
    chunk_labels(label, 0, 1, num_classes)
    return num_classes


@torch.no_grad()
def sample_quality(model, sde, dataset: Dataset, extractor, *, n: int, solver: str,
                   steps: int, seed: int = 0, batch_size: int = 500, device="cpu",
                   reference: Reference | None = None, progress=None,
                   data_statistics: bool = True, label=None, guidance: float = 0.0,
                   ranks: Ranks | None = None, **sample_options) -> dict:
    """FID, KID, precision and recall of ``n`` samples of ``model`` (a score function) against
    ``dataset``'s reference statistics.

    Chunk ``k`` of ``batch_size`` samples is drawn with
    :func:`~scoresde.sample_files.chunk_generator` ``(seed, k)``, so the samples equal those of
    ``scoresde sample --seed SEED --batch-size B`` (with ``--label``/``--guidance`` for a
    class-conditional model); only features are kept (bounded memory). A module ``model`` is
    used in eval mode and its mode put back. A latent model (one with ``decode`` and
    ``latent_shape``, :class:`~scoresde.latent.LatentDiffusion`) samples latents, which are
    decoded into images before their features are taken.

    Args:
        model: a score function ``model(x, t)`` (``model(x, t, y)`` with ``label``), or a latent
            model; dataset: the data set of its images.
        extractor: a feature extractor; n: samples (more than the features' width).
        solver, steps, sample_options: as for :func:`~scoresde.sample`.
        seed: the samples' seed, also KID's subsets'. device: where to sample.
        reference: precomputed reference statistics (else :func:`reference_stats`, cached).
        progress: ``progress(done, n)`` as the sampling starts (``done`` 0) and after each
            chunk, or None.
        data_statistics: give a few-step solver the training data's mean and covariance, as
            ``scoresde sample`` does (see :func:`scoresde.sampling.fewstep.uses_data_stats`);
            never for a latent model (the images' statistics are not its latents').
        label: None, an integer class or ``"all"`` (:func:`chunk_labels`): the class labels of
            a class-conditional model's samples. guidance: the classifier-free guidance weight
            (:func:`~scoresde.guidance.classifier_free_guidance`) with ``label``.
        ranks: the processes of a ``torchrun`` job (:class:`~scoresde.distributed.Ranks`):
            each samples every ``world``-th chunk and takes its features, rank 0 adds them up
            in the order of the chunks (the scores equal one process's), every rank returns
            the scores; ``progress`` counts this rank's share.

    Returns:
        ``{"fid", "kid", "kid_se", "precision", "recall", "n", "nfe", "seed", "solver",
        "steps", "time_s", "reference_n", "label", "guidance"}``.
    """
    from .sample_files import sample_chunk

    n, batch_size = check_int("n", n, low=2), check_int("batch_size", batch_size, low=1)
    reference = reference if reference is not None else reference_stats(dataset, extractor)
    _check_count(n, reference)  # before any sample is drawn
    num_classes = _check_condition(model, label, guidance)  # before any sample is drawn
    latent = hasattr(model, "decode") and hasattr(model, "latent_shape")
    shape = tuple(model.latent_shape) if latent else tuple(dataset.event_shape)
    moments = _Moments(KEEP_FEATURES)
    dev = torch.device(device)
    modules = [m for m in ((model.score, model.autoencoder) if latent else (model,))
               if isinstance(m, torch.nn.Module)]
    modes = [m.training for m in modules]
    for module in modules:
        module.eval()
    if data_statistics and not latent:
        sample_options = dict(_data_statistics(model, dataset, solver, steps, sample_options),
                              **sample_options)
    ranks = ranks or Ranks()
    begin, chunks, error = time.perf_counter(), [], None
    mine = ranks.share(range(-(-n // batch_size)))
    done, total = 0, sum(min(batch_size, n - k * batch_size) for k in mine)
    if progress is not None:
        progress(0, total)  # the sampling starts
    try:
        for k in mine:
            start = k * batch_size
            rows = min(batch_size, n - start)
            labels = chunk_labels(label, start, start + rows, num_classes)
            x, info, _ = sample_chunk(model, sde, shape, k, start, start + rows, seed=seed,
                                      labels=None if labels is None else labels.to(dev),
                                      guidance=guidance, device=dev, decode=latent,
                                      solver=solver, steps=steps, **sample_options)
            feats = image_features(extractor, x, dataset)
            if ranks.world == 1:  # added as they come: memory holds no more than a chunk's
                moments.add(feats)
                feats = None
            chunks.append((k, feats, info["nfe"]))
            done += rows
            if progress is not None:
                progress(done, total)
    except Exception as err:
        error = err
    finally:
        for module, mode in zip(modules, modes):
            module.train(mode)
    ranks.agree(error)
    shares, record = ranks.collect(chunks), None
    if ranks.lead:  # the features in the order of the chunks, as one process adds them
        chunks = sorted((c for share in shares for c in share), key=lambda c: c[0])
        for _, feats, _ in chunks if ranks.world > 1 else ():
            moments.add(feats)
        nfe = [c[2] for c in chunks]
        mu, sigma = moments.stats()
        scores = quality_scores(mu, sigma, moments.features(), reference, seed=seed)
        record = dict(scores, n=n, nfe=sum(nfe) / len(nfe), seed=seed, solver=solver,
                      steps=steps, time_s=round(time.perf_counter() - begin, 3),
                      reference_n=reference.n, label=label, guidance=guidance)
    return ranks.broadcast(record)


def samples_quality(samples: torch.Tensor, dataset: Dataset, extractor, *,
                    pixels: bool = False, seed: int = 0,
                    reference: Reference | None = None) -> dict:
    """FID, KID, precision and recall of given images against ``dataset``'s reference.

    Args:
        samples: ``(N, *event_shape)`` images in ``dataset``'s model space (what
            :func:`~scoresde.sample` returns and ``scoresde sample`` saves as ``samples``), or
            with ``pixels`` 8-bit levels ``0..255`` ``(N, C, H, W)``, given to the extractor as
            they are.
        dataset, extractor, reference: as for :func:`sample_quality`.
        seed: KID's subsets and the precision/recall subsets.

    Returns:
        ``{"fid", "kid", "kid_se", "precision", "recall", "n", "seed", "reference_n"}``.

    Raises:
        ValueError: images of another shape than the data's, values that are not finite (or
            not levels in ``0..255`` with ``pixels``), or fewer images than the features' width
            (FID) or than KID's subsets need.
    """
    x = torch.as_tensor(samples)
    what = "8-bit images" if pixels else "model values"
    if tuple(x.shape[1:]) != tuple(dataset.event_shape) or not x.is_floating_point():
        raise ValueError(f"samples of {dataset.name!r} are {what} (floats) of shape (N, "
                         f"{', '.join(map(str, dataset.event_shape))}); got {x.dtype} of shape "
                         f"{tuple(x.shape)}")
    if not torch.isfinite(x).all() or (pixels and not ((x >= 0) & (x <= 255)).all()):
        raise ValueError(f"the samples contain values that are not {what}: NaN, infinite"
                         + (" or outside 0..255" if pixels else ""))
    reference = reference if reference is not None else reference_stats(dataset, extractor)
    n = _check_count(x.shape[0], reference)
    moments = _Moments(KEEP_FEATURES)
    for start in range(0, n, FEATURE_BATCH):
        chunk = x[start:start + FEATURE_BATCH]
        moments.add(extract_features(extractor, chunk.float()) if pixels
                    else image_features(extractor, chunk, dataset))
    mu, sigma = moments.stats()
    scores = quality_scores(mu, sigma, moments.features(), reference, seed=seed)
    return dict(scores, n=n, seed=seed, reference_n=reference.n)


def file_quality(path: str | os.PathLike, dataset: Dataset, *, features="digits",
                 seed: int = 0, cache: str | os.PathLike | bool = True, device="cpu") -> dict:
    """:func:`samples_quality` of the images in an ``.npz``/``.npy`` file.

    The images are the ``.npz``'s ``samples`` array when it has one (what ``scoresde sample``
    writes), else the array :func:`~scoresde.data.load_array` reads (``x``, ``data`` or the
    only one). Floats are values in ``dataset``'s model space; 8-bit images (uint8 ``(N, H,
    W)``, ``(N, H, W, C)`` or ``(N, C, H, W)``, e.g. another code's samples) are pixel levels,
    which the extractor sees as they are (:func:`~scoresde.data.load_samples`). The file is
    read whole (50,000 32x32 colour images: 150 MB as uint8, 600 MB as floats).

    Returns:
        :func:`samples_quality`'s dict with ``"samples"`` (the path), ``"pixels"`` and
        ``"features"``.

    Raises:
        ValueError: an unreadable file, images that do not fit the data or the extractor.
    """
    from .data import load_samples

    where = os.fspath(path)
    _check_digits_shape(features, dataset.event_shape, f"the images of {dataset.name!r}")
    x, pixels = load_samples(where)
    extractor = _extractor_on(features, device)
    reference = reference_stats(dataset, extractor, cache=cache)
    result = samples_quality(x, dataset, extractor, pixels=pixels, seed=seed,
                             reference=reference)
    return dict(result, samples=where, pixels=pixels, features=extractor_digest(extractor))


def _check_digits_shape(features, shape, whose: str) -> None:
    """The digits network takes 1x8x8 images only: one clear error for others."""
    if isinstance(features, str) and features == "digits" and tuple(shape) != (1, 8, 8):
        raise ValueError(f"the digits feature network takes 1x8x8 images; {whose} are "
                         f"{'x'.join(map(str, shape))}; name a TorchScript extractor file")


def _extractor_on(features, device):
    """:func:`~scoresde.features.get_extractor`; ours (built from a name or a file) is moved to
    ``device``, the caller's own extractor is left where it is."""
    from .features import get_extractor

    extractor = get_extractor(features)
    if extractor is not features and isinstance(extractor, torch.nn.Module):
        extractor.to(device)
    return extractor


def _images_config(config: dict, where: str) -> dict:
    """The config of the images a run's samples are: its own, or a latent run's autoencoder's,
    with the keys of older versions filled in (:func:`~scoresde.runs.upgrade_config`)."""
    from .runs import read_config, upgrade_config

    images = upgrade_config(read_config(config["latent"]) if config.get("latent") else config)
    if not images.get("is_image"):
        raise ValueError(f"FID needs a run of images; {where} was trained on data of shape "
                         f"{tuple(images['data_shape'])}")
    if images.get("data") is None:
        raise ValueError(f"{where} has no data set of its own (it was converted from another "
                         "code's checkpoint): draw its samples with `scoresde sample` and measure "
                         "the file with `scoresde fid --samples FILE --data NAME`")
    return images


def run_images(run_dir: str | os.PathLike) -> Dataset:
    """The data set a run's samples are measured against: its images, or a latent run's
    autoencoder's (what :func:`run_quality` compares with).

    Raises:
        ValueError: a run not of images, or whose data can no longer be read.
    """
    from .data import run_dataset
    from .runs import read_config

    return run_dataset(_images_config(read_config(run_dir), os.fspath(run_dir)))


def run_quality(run_dir: str | os.PathLike, *, features="digits", n: int = FID_N,
                solver: str = FID_SOLVER, steps: int | None = None, seed: int = 0,
                batch_size: int = 500, device="cpu", cache: str | os.PathLike | bool = True,
                progress=None, label=None, guidance: float = 0.0, **sample_options) -> dict:
    """:func:`sample_quality` of a run folder's EMA model against its data's cached reference.

    A latent run's samples are decoded and compared with its autoencoder's images. A
    class-conditional run samples its unconditional score (``label=None``, which needs labels
    dropped in training), one class, or every class in turn (``label="all"``, the usual
    class-conditional FID), with classifier-free ``guidance``.

    Args:
        run_dir: a run of image data, or a latent run of an image autoencoder
            (:func:`~scoresde.train`).
        features: an extractor, a name of :data:`~scoresde.features.EXTRACTORS` (``"digits"``,
            for 1x8x8 images) or the path of a TorchScript file (trusted: it runs code).
        n, solver, steps, seed, batch_size, device, progress, label, guidance, sample_options:
            as for :func:`sample_quality`; the solver :data:`FID_SOLVER` at :data:`FID_STEPS`
            steps by default (with the data's statistics, as ``scoresde sample`` gives them);
            another solver without ``steps`` takes :func:`~scoresde.sample`'s default steps.
        cache: as for :func:`reference_stats`.

    Returns:
        :func:`sample_quality`'s dict with ``"run"`` and ``"features"`` (the extractor's digest).

    Raises:
        ValueError: a run that is not of images, not of a score model, a super-resolution run
            (its samples need a condition: measure the cascade's samples), a conditional run
            trained without label dropout asked for its unconditional score (``label=None``, or
            ``guidance`` other than 0), or an extractor that does not take the images.

    Under ``torchrun`` the ranks share the chunks (see :func:`sample_quality`'s ``ranks``),
    each on its own GPU with a CUDA ``device``.
    """
    steps = fid_steps(solver) if steps is None else steps
    with joined(resolve_device(device)) as (ranks, device):  # under torchrun: a share each
        return _run_quality(run_dir, features, n, solver, steps, seed, batch_size, device,
                            cache, progress, label, guidance, sample_options, ranks)


def _run_quality(run_dir, features, n, solver, steps, seed, batch_size, device, cache, progress,
                 label, guidance, sample_options, ranks) -> dict:
    from .data import run_dataset
    from .runs import learnt_unconditional, load_run

    model, sde, config = load_run(run_dir, device=device)
    where = os.fspath(run_dir)
    images = _images_config(config, where)
    kind = config.get("objective", "score")
    for what, bad in ((f"a run of objective {kind!r}", kind != "score"),
                      ("a super-resolution run (its samples need a condition)",
                       config.get("super_res"))):
        if bad:
            raise ValueError(f"FID of {what} is not supported: {where}; give a run of an "
                             "image score model or a latent run")
    _check_condition(model, label, guidance)  # before the reference statistics
    if not learnt_unconditional(config):
        if label is None:
            raise ValueError(f"{where} was trained with label_dropout=0, so it never learnt the "
                             "unconditional score that label=None samples; give label='all' "
                             "(each class in turn) or a class" if model.num_classes else
                             f"{where} was trained with label_dropout=0, so its null "
                             "embedding, which FID samples, was never learnt")
        if guidance != 0:
            raise ValueError(f"{where} was trained with label_dropout=0, so it never learnt the "
                             f"unconditional score that guidance={guidance:g} mixes in; give "
                             "guidance=0 (plain conditional samples)")
    _check_digits_shape(features, images["data_shape"], "the run's images")
    dataset = run_dataset(images)
    extractor = _extractor_on(features, device)
    reference = reference_stats(dataset, extractor, cache=cache)
    result = sample_quality(model, sde, dataset, extractor, n=n, solver=solver, steps=steps,
                            seed=seed, batch_size=batch_size, device=device,
                            reference=reference, progress=progress, label=label,
                            guidance=guidance, ranks=ranks, **sample_options)
    return dict(result, run=where, features=extractor_digest(extractor))


def fid_steps(solver: str) -> int:
    """The steps of :func:`run_quality` when none are given: :data:`FID_STEPS` with
    :data:`FID_SOLVER`, :func:`~scoresde.sample`'s default with any other solver."""
    from .sampling import sample
    from .utils import keyword_default

    return FID_STEPS if solver == FID_SOLVER else keyword_default(sample, "steps")


# ----- during training ----------------------------------------------------------------------------
# train(eval_every=...) draws as the sample grids do (train(sample_every=...)).
EVAL_SOLVER, EVAL_STEPS = SNAPSHOT_SOLVER, SNAPSHOT_STEPS


def check_eval(dataset: Dataset, features, n: int) -> int:
    """Check ``train``'s evaluation options against the data before training starts: image
    data the extractor takes, and ``n`` above its number of features. Returns ``n``.

    Raises:
        ValueError: naming what does not fit.
    """
    from .features import get_extractor

    n = check_int("eval_n", n, low=2)
    if not dataset.is_image:
        raise ValueError(f"eval_every measures FID of images; data {dataset.name!r} has shape "
                         f"{tuple(dataset.event_shape)} (leave eval_every off)")
    _check_digits_shape(features, dataset.event_shape, f"the images of data {dataset.name!r}")
    width = image_features(get_extractor(features), dataset.test[:2], dataset).shape[1]
    check_fid_size(n, width)
    return n


class TrainingEvaluator:
    """FID and KID of the EMA weights during training: ``evaluator(model, sde, step)`` draws
    ``n`` samples with :data:`EVAL_SOLVER` at :data:`EVAL_STEPS` steps from the same seed each
    time (so the curve compares the weights, not the draws) and returns the record for
    ``metrics.jsonl``. ``label`` is as for :func:`sample_quality` (``"all"`` for a
    class-conditional model: each class in turn, unguided). The extractor and the reference
    are loaded on first use."""

    def __init__(self, dataset: Dataset, *, features, n: int, seed: int, device, label=None):
        self.dataset, self.features, self.n, self.seed = dataset, features, n, seed
        self.device, self.label = device, label
        self.extractor = self.reference = None

    def __call__(self, model, sde, step: int) -> dict:
        if self.extractor is None:
            self.extractor = _extractor_on(self.features, self.device)
            self.reference = reference_stats(self.dataset, self.extractor)
        result = sample_quality(model, sde, self.dataset, self.extractor, n=self.n,
                                solver=EVAL_SOLVER, steps=EVAL_STEPS, seed=self.seed,
                                device=self.device, reference=self.reference,
                                label=self.label)
        return {"step": step, **{k: result[k] for k in ("fid", "kid", "kid_se", "precision",
                                                        "recall")},
                "eval_n": self.n, "eval_nfe": result["nfe"], "eval_solver": EVAL_SOLVER,
                "eval_seed": self.seed, "eval_s": result["time_s"],
                **({} if self.label is None else {"eval_label": self.label})}
