"""Reference statistics of a data set's training images under a feature extractor, cached.

:func:`reference_stats` computes the features of a data set's training images once per data
set, resolution and extractor and caches them in ``$SCORESDE_CACHE/reference/`` (by default
``$XDG_CACHE_HOME/scoresde`` or ``~/.cache/scoresde``): the mean and covariance of all of them
(up to :data:`REFERENCE_MAX` images) and the features of a fixed random subset of
:data:`KEEP_FEATURES` for KID and precision/recall. The file is written atomically, and its
name is a digest of the key (the data's name, image shape, pixel scale, number of training
images and file fingerprint, and the extractor's digest), which the file also holds and which
is checked when it is read; a damaged or mismatched file is named in a warning and rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from . import images
from .data import Dataset
from .facts import CACHE_ENV, cache_dir
from .features import FEATURE_BATCH, extract_features, extractor_digest, to_extractor_range
from .metrics import check_fid_size
from .utils import write_atomically

__all__ = ["CACHE_ENV", "REFERENCE_MAX", "KEEP_FEATURES", "Reference", "cache_dir",
           "reference_stats", "image_features"]

REFERENCE_MAX = 50_000  # reference images: the training split's first this many
KEEP_FEATURES = 10_000  # features kept (of samples, of the reference) for KID and precision/recall
_VERSION = 1  # of the cache files' layout


@dataclass
class Reference:
    """A data set's reference statistics: ``mu`` ``(F,)``, ``sigma`` ``(F, F)`` over ``n``
    images, ``features`` ``(<= KEEP_FEATURES, F)``, the ``key`` and the cache ``path``."""

    mu: np.ndarray
    sigma: np.ndarray
    features: torch.Tensor
    n: int
    key: dict
    path: Path | None


class _Moments:
    """Running sums of features: their mean and covariance without keeping them all, and the
    rows that ``add`` is told to keep (at most ``keep`` of them)."""

    def __init__(self, keep: int):
        self.n, self.sum, self.outer, self.keep, self.kept = 0, None, None, keep, []

    def add(self, feats: torch.Tensor, chosen: torch.Tensor | None = None) -> None:
        """Add rows ``(B, F)``; keep those where ``chosen`` ``(B,)`` is True (all if None)."""
        if self.sum is None:
            self.sum = torch.zeros(feats.shape[1], dtype=torch.float64)
            self.outer = torch.zeros(feats.shape[1], feats.shape[1], dtype=torch.float64)
        self.n += feats.shape[0]
        self.sum += feats.sum(0)
        self.outer += feats.T @ feats
        room = self.keep - sum(k.shape[0] for k in self.kept)
        if room > 0:
            self.kept.append((feats if chosen is None else feats[chosen])[:room].float())

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        check_fid_size(self.n, self.sum.shape[0])
        mu = self.sum / self.n
        cov = (self.outer - self.n * torch.outer(mu, mu)) / (self.n - 1)
        return mu.numpy(), ((cov + cov.T) / 2).numpy()

    def features(self) -> torch.Tensor:
        return torch.cat(self.kept)


def _fingerprint(name: str) -> list:
    """The size and modification time of a data file, or of every image file under a folder
    (the files :func:`~scoresde.images.list_images` lists for the reader, links followed: each
    file's target's size and time), what changes when the data does; nothing for names that
    are not files (toys, digits).

    Raises:
        ValueError: a folder of more than :data:`~scoresde.images.MAX_ENTRIES` entries.
    """
    if os.path.isfile(name):
        st = os.stat(name)
        return [st.st_size, st.st_mtime_ns]
    if os.path.isdir(name):
        h = hashlib.sha256()
        for rel in images.list_images(name):
            st = os.stat(os.path.join(name, rel))  # the link's target
            h.update(f"{rel}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        return [h.hexdigest()[:16]]
    return []


def _scale(dataset: Dataset) -> dict:
    return dict(raw_scale=dataset.raw_scale, raw_offset=dataset.raw_offset,
                pixel_bits=dataset.pixel_bits)


def _reference_batches(dataset: Dataset, batch: int) -> Iterator[torch.Tensor]:
    """The training images in model space, ``batch`` at a time (a streamed folder decoded as it
    goes), at most :data:`REFERENCE_MAX` of them."""
    total = min(dataset.train_size, REFERENCE_MAX)
    for i in range(0, total, batch):
        rows = range(i, min(i + batch, total))
        if dataset.train is not None:
            yield dataset.train[rows.start:rows.stop]
        else:
            yield images.to_model(dataset.train_source.decode_all(list(rows)))


def image_features(extractor, x: torch.Tensor, dataset: Dataset) -> torch.Tensor:
    """Features ``(N, F)`` of model-space images ``x`` ``(N, *event_shape)`` of ``dataset``
    (mapped to ``0..255`` by :func:`~scoresde.features.to_extractor_range`)."""
    return extract_features(extractor, to_extractor_range(x, **_scale(dataset)))


def reference_stats(dataset: Dataset, extractor, *, cache: str | os.PathLike | bool = True,
                    seed: int = 0) -> Reference:
    """The reference statistics of ``dataset``'s training images under ``extractor``, read from
    the cache when there, computed once and cached otherwise.

    Args:
        dataset: an image data set with training images.
        extractor: a feature extractor (see :mod:`scoresde.features`).
        cache: True for :func:`cache_dir`, a folder, or False to neither read nor write. An
            extractor that :func:`~scoresde.features.extractor_digest` cannot identify (a plain
            function) is never cached; a cache that cannot be written is a warning, and the
            statistics are returned all the same; a cache file that is not this key's
            statistics (unreadable, another key, arrays of other shapes) is named in a
            warning, and computed and written again.
        seed: the subset of kept features.

    Raises:
        ValueError: data without training images.
    """
    if not dataset.is_image or dataset.train_size == 0:
        raise ValueError(f"reference statistics need image data with training images; "
                         f"{dataset.name!r} has none")
    key = {"version": _VERSION, "data": os.path.abspath(dataset.name) if os.path.exists(
        dataset.name) else dataset.name, "shape": list(dataset.event_shape), **_scale(dataset),
        "n": min(dataset.train_size, REFERENCE_MAX), "files": _fingerprint(dataset.name),
        "extractor": extractor_digest(extractor), "seed": seed}
    text = json.dumps(key, sort_keys=True)
    path = None
    if cache is not False and key["extractor"] is not None:
        folder = (cache_dir() if cache is True else Path(cache)) / "reference"
        path = folder / f"{hashlib.sha256(text.encode()).hexdigest()[:24]}.npz"
        cached = _read_cached(path, text)
        if cached is not None:
            return Reference(*cached, key, path)
    moments, total = _Moments(KEEP_FEATURES), key["n"]
    chosen = torch.zeros(total, dtype=torch.bool)  # the kept subset: a fixed random one
    chosen[torch.randperm(total, generator=torch.Generator().manual_seed(seed))[
        :KEEP_FEATURES]] = True
    for x in _reference_batches(dataset, FEATURE_BATCH):
        start = moments.n
        moments.add(image_features(extractor, x, dataset), chosen[start:start + x.shape[0]])
    mu, sigma = moments.stats()
    feats = moments.features()
    ref = Reference(mu, sigma, feats, moments.n, key, path)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, lambda f: np.savez(f, key=np.array(text), mu=mu, sigma=sigma,
                                                      features=feats.numpy(), n=moments.n))
        except OSError as err:  # an unwritable cache costs the next call time, not this result
            warnings.warn(f"reference statistics not cached: cannot write {path} ({err}); set "
                          f"{CACHE_ENV} to a writable folder", stacklevel=2)
            ref.path = None
    return ref


def _read_cached(path: Path, text: str):
    """``(mu, sigma, features, n)`` from a cache file written for key ``text``; None when there
    is none. A file that is unreadable, of another key or whose arrays are not such statistics
    (shapes, dtypes, values) is named in a warning and None is returned: the statistics are
    then computed and the file written again (atomically)."""
    if not path.exists():
        return None
    try:
        with open(path, "rb") as fh:  # closed here, also when numpy fails half-way
            if fh.read(4) != b"PK\x03\x04":  # np.savez's zip archive
                raise ValueError("not an .npz archive")
            fh.seek(0)
            with np.load(fh, allow_pickle=False) as f:
                cached = {k: f[k] for k in ("key", "mu", "sigma", "features", "n")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        problem = f"unreadable ({type(err).__name__}: {err})"
    else:
        problem = _cache_problem(cached, text)
    if problem is None:
        return cached["mu"], cached["sigma"], torch.from_numpy(cached["features"]), int(
            cached["n"])
    warnings.warn(f"reference statistics cache file {path}: {problem}; computing the statistics "
                  "again and overwriting it", stacklevel=3)
    return None


def _cache_problem(cached: dict, text: str) -> str | None:
    """What is wrong with the arrays of a cache file for key ``text``, or None: the key,
    ``mu`` ``(F,)``, ``sigma`` ``(F, F)``, ``features`` ``(min(n, KEEP_FEATURES), F)`` of
    finite floats and the count ``n`` of the key's images."""
    if cached["key"].shape != () or str(cached["key"]) != text:
        return "written for another key"
    n = json.loads(text)["n"]
    mu, sigma, feats, count = (cached[k] for k in ("mu", "sigma", "features", "n"))
    f = mu.shape[0] if mu.ndim == 1 else -1
    if sigma.shape != (f, f) or feats.shape != (min(n, KEEP_FEATURES), f):
        return (f"arrays of the wrong shapes (mu {mu.shape}, sigma {sigma.shape}, features "
                f"{feats.shape} for {n} images)")
    if not all(np.issubdtype(a.dtype, np.floating) and np.isfinite(a).all()
               for a in (mu, sigma, feats)):
        return "values that are not finite floats"
    if count.shape != () or not np.issubdtype(count.dtype, np.integer) or int(count) != n:
        return f"a count of images {count!r} other than the key's {n}"
    return None
