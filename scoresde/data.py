"""Data sets and files: the toys, scikit-learn's 8x8 digits, user arrays, image folders, masks.

A :class:`Dataset` bundles what training, sampling and likelihood need to know about a data set:
its event shape, held-out test points, whether it is an image set (and how model values map back
to raw pixel values), labels, and, for the toys and mixtures, the exact log-density and the
differential entropy in nats, the floor that a model's held-out negative log-likelihood can reach.
The toys themselves (samplers, densities, entropies) live in :mod:`scoresde.toys`.

Toys are infinite: every training batch is a fresh draw from a seeded ``torch.Generator``. Finite
sets (digits, arrays) are sampled by index with that generator. Pixel data (folders of image
files and uint8 image arrays, read by :mod:`scoresde.images`) are 8-bit images whose training
batches are a function of the seed and the step (:class:`scoresde.images.StepBatches`).
:func:`load_array` and :func:`load_mask` read ``.npy``/``.npz`` files without pickles.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from . import images
from .checks import check_choice, check_int, check_number
from .targets import GaussianMixture
from .toys import LABELLED_TOYS, TEST_SEED, TOYS, Sampler, entropy_estimate, toy_entropy, \
    toy_log_prob

__all__ = ["Dataset", "get_dataset", "run_dataset", "load_array", "load_mask", "load_observation",
           "DATA_OPTIONS", "load_run_array"]

# The keywords of get_dataset that a run records in config.json, to rebuild the same data.
DATA_OPTIONS = ("channels", "resolution", "flip", "pixels", "downsample")
# Above this many entries per sample, few-step solvers get the data's standard deviation, not
# its covariance (a D x D matrix that would be slow to build and to factorise).
COVARIANCE_MAX_DIM = 1024


# ----- data sets ---------------------------------------------------------------------------------
@dataclass
class Dataset:
    """A data set in model space. Raw values are ``x * raw_scale + raw_offset``.

    Attributes:
        name: the name or path it came from.
        event_shape: shape of one point, e.g. ``(2,)`` or ``(1, 8, 8)``.
        test: held-out points, shape ``(N_test, *event_shape)``.
        train: training points for finite sets, None for toys (drawn by ``sampler``).
        sampler: ``sampler(n, generator) -> (n, *event_shape)`` for infinite toys, or
            ``-> (x, labels)`` for labelled ones (mixtures, whose components are the classes).
        train_labels, test_labels: integer labels ``(N,)`` or None.
        num_classes: number of label values (0 without labels).
        class_names: the classes' names by label (a folder of class folders: the folders' names;
            empty where the labels have no names).
        embed_dim: size ``E`` of the float embeddings ``(N, E)`` held in place of labels by
            ``train_labels`` and ``test_labels`` (0: none; then ``num_classes`` is 0).
        is_image: True for ``(C, H, W)`` image sets.
        entropy: differential entropy in nats, or None where unknown (computed on first access).
        log_prob: exact log-density ``(B, *event_shape) -> (B,)`` or None.
        raw_scale, raw_offset: map back to raw values (digits: pixel values 0..16).
        pixel_bits: 8 for pixel data (image folders, uint8 arrays), whose raw values are
            integer levels; None otherwise.
        flip: training batches of pixel data are mirrored left to right at random.
        train_source: pixel data from a folder: an :class:`~scoresde.images.ImageFiles` that
            decodes training image ``i`` (``train`` is None when the folder is streamed).
        reference_fn: the points that :meth:`std` and :meth:`moments` use, when not ``train``.
    """

    name: str
    event_shape: tuple[int, ...]
    test: torch.Tensor
    train: torch.Tensor | None = None
    sampler: Sampler | None = None
    train_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    num_classes: int = 0
    class_names: tuple[str, ...] = ()
    embed_dim: int = 0
    is_image: bool = False
    entropy_fn: Callable[[], float | None] = field(default=lambda: None, repr=False)
    log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None
    raw_scale: float = 1.0
    raw_offset: float = 0.0
    pixel_bits: int | None = None
    flip: bool = False
    train_source: images.ImageFiles | None = field(default=None, repr=False)
    reference_fn: Callable[[], torch.Tensor] | None = field(default=None, repr=False)
    _copies: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def train_size(self) -> int:
        """The number of training points of a finite set (0 for toys)."""
        if self.train is not None:
            return self.train.shape[0]
        return len(self.train_source) if self.train_source is not None else 0

    def summary(self) -> str:
        """One line on what the data are: the points (or images) to train on and held out, their
        shape and kind, the classes with their names."""
        if self.is_image:
            kind = (f"{self.pixel_bits}-bit " if self.pixel_bits else "") + "images of " + \
                "x".join(map(str, self.event_shape))
        elif len(self.event_shape) == 1:
            kind = f"{self.event_shape[0]}-dimensional points"
        else:
            kind = f"points of shape {tuple(self.event_shape)}"
        held = f", {self.test.shape[0]:,} held out"
        if self.train_size:
            what = f"{self.train_size:,} training {kind}{held}"
        else:
            what = f"{kind}, drawn afresh at each step{held}"
        if self.num_classes:
            names = ", ".join(self.class_names[:10]) + (", ..." if self.num_classes > 10 else "")
            what += f", {self.num_classes} classes" + (f" ({names})" if self.class_names else "")
        elif self.embed_dim:
            what += f", embeddings of {self.embed_dim}"
        return f"data {self.name}: {what}"

    @property
    def entropy(self) -> float | None:
        """Differential entropy of the data in nats, or None where it is not known."""
        return self.entropy_fn()

    def sample(self, n: int, generator: torch.Generator | None = None):
        """A training batch ``(x, y)``: ``x`` ``(n, *event_shape)``, ``y`` ``(n,)`` or None."""
        if self.sampler is not None:
            out = self.sampler(n, generator)
            return out if isinstance(out, tuple) else (out, None)
        device = generator.device if generator is not None else None
        idx = torch.randint(0, self.train_size, (check_int("n", n, low=1),),
                            generator=generator, device=device)
        if self.train is None:  # a streamed folder: decode the images drawn
            idx = idx.cpu()
            y = None if self.train_labels is None else self.train_labels[idx]
            return images.to_model(self.train_source.decode_all(idx.tolist())), y
        train, labels = self.on(idx.device)
        return train[idx], None if labels is None else labels[idx]

    def on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The training points and labels on ``device``, copied there once: a GPU run indexes
        its batches where they live, with no copy and no wait for the host each step."""
        if device.type == "cpu":
            return self.train, self.train_labels
        key = str(device)
        if key not in self._copies:
            self._copies[key] = (self.train.to(device), None if self.train_labels is None
                                 else self.train_labels.to(device))
        return self._copies[key]

    def _reference(self) -> torch.Tensor:
        """The training points (image folders: a fixed subset of them), or for toys 20,000 fixed
        draws (never the test points)."""
        if self.reference_fn is not None:
            return self.reference_fn()
        return self.train if self.train is not None else self.sample(
            20_000, torch.Generator().manual_seed(TEST_SEED - 2))[0]

    def std(self) -> float:
        """Standard deviation of all entries of the training data (20,000 draws for toys)."""
        return float(self._reference().to(torch.float64).std())

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``(D,)`` and covariance ``(D, D)`` of the flattened training data (20,000 draws
        for toys), float64: what :func:`~scoresde.sample`'s ``data_mean``/``data_cov`` take."""
        return _moments(self._flat_reference())

    def _flat_reference(self) -> torch.Tensor:
        """:meth:`_reference` as float64 ``(N, D)``."""
        return self._reference().to(torch.float64).reshape(-1, math.prod(self.event_shape))

    def sampling_statistics(self, std: float | None = None) -> dict:
        """What a few-step solver of :func:`~scoresde.sample` is given: ``data_mean`` and
        ``data_cov``, or above :data:`COVARIANCE_MAX_DIM` entries per sample ``data_mean`` and
        ``data_std`` (``std``, e.g. a run's ``sigma_data``; the data's own if None).

        Statistics that describe no Gaussian (from fewer than 2 points, of points all equal, or
        not finite) give ``{}`` and a warning saying so: the solver then uses its default grid.
        """
        x = self._flat_reference()
        if x.shape[0] < 2:
            return _no_statistics(f"the data's statistics need at least 2 points, "
                                  f"{self.name!r} has {x.shape[0]}")
        if x.shape[1] <= COVARIANCE_MAX_DIM:
            mean, cov = _moments(x)
            stats, spread = {"data_mean": mean, "data_cov": cov}, torch.diagonal(cov).mean()
        else:
            spread = self.std() if std is None else float(std)
            stats = {"data_mean": x.mean(0), "data_std": spread}
        if not all(torch.isfinite(torch.as_tensor(v)).all() for v in stats.values()):
            return _no_statistics(f"the statistics of {self.name!r} are not finite")
        if spread <= 0:
            return _no_statistics(f"the points of {self.name!r} are all equal (zero spread)")
        return stats


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(D,)`` and covariance ``(D, D)`` of points ``x`` ``(N, D)``."""
    return x.mean(0), torch.atleast_2d(torch.cov(x.T))


def _no_statistics(reason: str) -> dict:
    """No statistics for a few-step solver (``{}``), with a warning giving ``reason``."""
    warnings.warn(f"{reason}; few-step sampling uses the solver's default grid instead",
                  stacklevel=3)
    return {}


_NPY = ""  # the key of a .npy file's one array in _read_numpy's answer


def _read_numpy(path: str, what: str) -> dict[str, np.ndarray]:
    """Every array of a ``.npz`` file by name, or a ``.npy`` file's array under ``""``.

    Read without pickles, so a file cannot run code. Raises ``ValueError`` naming ``what`` (the
    file's role) when the file is missing or unreadable.
    """
    if not os.path.isfile(path):
        raise ValueError(f"{what} file {path!r} does not exist")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                return {key: loaded[key] for key in loaded.files}
        return {_NPY: loaded}
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {path!r} as .npy/.npz without pickles: {err}") from None


def _is_real(x: np.ndarray) -> bool:
    """Whether ``x`` holds real numbers: integers or floats (not booleans, complex, text)."""
    return np.issubdtype(x.dtype, np.number) and not np.issubdtype(x.dtype, np.complexfloating)


def _check_real(path: str, x: np.ndarray) -> None:
    """Raise ``ValueError`` unless the points ``x`` are real numbers (:func:`_is_real`)."""
    if np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"{path}: complex data (dtype {x.dtype}): scoresde trains on real "
                         "arrays; pass x.real or stack real and imaginary parts as channels")
    if not _is_real(x):
        raise ValueError(f"{path}: the points must be numeric (integers or floats), got dtype "
                         f"{x.dtype}; convert them, e.g. x.astype(np.float32)")


def _is_pixels(x: np.ndarray) -> bool:
    """uint8 arrays of rank 3 or 4 are images: ``(N, H, W)``, ``(N, H, W, C)``, ``(N, C, H, W)``."""
    return x.dtype == np.uint8 and x.ndim in (3, 4)


def load_array(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Read ``(N, *dims)`` points (and optional labels) from a ``.npy`` or ``.npz`` file.

    An ``.npz`` holds the points under ``x``, ``data`` or as its only array, and labels under
    ``y`` or ``labels``: integers of shape ``(N,)`` are class labels, floats of shape ``(N, E)``
    are embeddings (continuous conditioning vectors, :mod:`scoresde.embeddings`). A uint8
    array of rank 3 or 4 holds 8-bit images (see
    :func:`scoresde.images.pixels_of_array` for the layouts): they come back as ``(N, C, H, W)``
    model values ``(p + 0.5) / 128 - 1``; any other array comes back as stored, in float32.

    Raises:
        ValueError: unreadable file, no points, fewer than 2 axes, non-numeric or non-finite values,
            or labels of the wrong length.
    """
    return _load_array(os.fspath(path))[:2]


def load_run_array(path: str | os.PathLike, config: dict) -> torch.Tensor:
    """The points of a ``.npy``/``.npz`` file on a run's scale: 8-bit images come back as the
    run's model values of their levels (``(p - raw_offset) / raw_scale`` of its
    ``config.json``, which :func:`load_array`'s :data:`~scoresde.images.PIXELS` values are
    for runs trained here), other arrays as stored.

    Raises:
        ValueError: as :func:`load_array`.
    """
    x, _, is_pixels = _load_array(os.fspath(path))
    if is_pixels and "raw_scale" in config:
        levels = x * images.PIXELS["raw_scale"] + images.PIXELS["raw_offset"]
        x = (levels - config["raw_offset"]) / config["raw_scale"]
    return x


def load_samples(path: str | os.PathLike) -> tuple[torch.Tensor, bool]:
    """Images to measure from a ``.npy``/``.npz`` file: ``(x, pixels)``, read from the
    ``.npz``'s ``samples`` array (what ``scoresde sample`` writes) or else as :func:`load_array`
    reads points. 8-bit images (uint8 of rank 3 or 4, the layouts of :func:`load_array`) come
    back as their levels ``0..255`` (float32 ``(N, C, H, W)``) with ``pixels`` True; any other
    array as stored (float32) with False.

    Raises:
        ValueError: as :func:`load_array`.
    """
    x, _, is_pixels = _load_array(os.fspath(path), keys=("samples", *_POINT_KEYS))
    if is_pixels:
        x = x * images.PIXELS["raw_scale"] + images.PIXELS["raw_offset"]  # exact: half-integers
    return x, is_pixels


_POINT_KEYS = ("x", "data")  # where an .npz holds its points (else its only array)


def _load_array(path: str, pixels: bool | None = None, keys: tuple[str, ...] = _POINT_KEYS
                ) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
    """:func:`load_array`'s ``(x, y)`` and whether the file held 8-bit images; the points are
    an ``.npz``'s first array of ``keys``, else its only array."""
    arrays = _read_numpy(path, "data")
    labels = None
    if _NPY in arrays:
        x = arrays[_NPY]
    else:
        files = list(arrays)
        found = [k for k in keys if k in files] or (files if len(files) == 1 else [])
        if not found:
            raise ValueError(f"{path}: put the points under key {keys[0]!r} (found {files})")
        x = arrays[found[0]]
        lab = [k for k in ("y", "labels") if k in files]
        labels = arrays[lab[0]] if lab else None
    _check_real(path, x)
    if x.ndim < 2 or x.shape[0] == 0 or x[0].size == 0:
        raise ValueError(f"{path}: need a non-empty numeric array of shape (N, *dims) with N >= 1, "
                         f"got dtype {x.dtype} and shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{path}: the points contain NaN or infinite values")
    if labels is not None and np.issubdtype(labels.dtype, np.floating):
        if labels.ndim != 2 or labels.shape[0] != x.shape[0] or not labels.shape[1] \
                or not np.isfinite(labels).all():
            raise ValueError(f"{path}: float y are embeddings: finite, of shape ({x.shape[0]}, E);"
                             f" got shape {labels.shape} (class labels are integers)")
        y = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32))
    elif labels is not None and (labels.shape != (x.shape[0],)
                                 or not np.issubdtype(labels.dtype, np.integer)
                                 or labels.min() < 0):
        raise ValueError(f"{path}: labels must be non-negative integers of shape ({x.shape[0]},)"
                         f" (or embeddings: floats of shape ({x.shape[0]}, E))")
    else:
        y = None if labels is None else torch.from_numpy(labels.astype(np.int64))
    if pixels and not _is_pixels(x):
        raise ValueError(f"{path}: pixels=True needs a uint8 array of rank 3 or 4, got dtype "
                         f"{x.dtype} and shape {x.shape}")
    if _is_pixels(x) and pixels is not False:
        levels = torch.from_numpy(np.ascontiguousarray(images.pixels_of_array(x, path)))
        return images.to_model(levels), y, True
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), y, False


def load_mask(path: str | os.PathLike,
              event_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Read an imputation mask and the known values from a ``.npz`` (or a ``.npy`` mask).

    An ``.npz`` holds ``mask`` (booleans or 0/1, True where known) and ``values`` (model-space
    values; entries outside the mask are ignored), each of shape ``event_shape`` or
    ``(N, *event_shape)``; a ``.npy`` holds the mask alone (the known values are then 0).

    Returns:
        ``(mask, values)``: a bool tensor and a float32 tensor, each of shape ``event_shape``
        or ``(N, *event_shape)``.

    Raises:
        ValueError: unreadable file, missing keys, non-0/1 mask, non-finite values, or shapes
            other than the data's.
    """
    path, event_shape = os.fspath(path), tuple(int(n) for n in event_shape)
    arrays = _read_numpy(path, "mask")
    if _NPY in arrays:
        mask = arrays[_NPY]
    elif "mask" in arrays:
        mask = arrays["mask"]
    else:
        raise ValueError(f"{path}: put the mask under key 'mask' (found {list(arrays)})")
    values = arrays.get("values", np.zeros(mask.shape))
    shapes = (event_shape, f"(N, {', '.join(map(str, event_shape))})")
    for name, arr in (("mask", mask), ("values", values)):
        if arr.shape != event_shape and arr.shape[1:] != event_shape:
            raise ValueError(f"{path}: {name} must have the data's shape {shapes[0]} or "
                             f"{shapes[1]}, got {arr.shape}")
    if not (np.issubdtype(mask.dtype, np.number) or mask.dtype == bool) or not np.isin(
            mask, (0, 1)).all():
        raise ValueError(f"{path}: mask must hold booleans or 0/1 values (1 = known)")
    if not _is_real(values) or not np.isfinite(values).all():
        raise ValueError(f"{path}: values must be finite real numbers")
    return (torch.from_numpy(mask.astype(bool)),
            torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)))


def load_observation(path: str | os.PathLike,
                     event_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Read a linear measurement ``y = A x + noise_std n`` from a ``.npz`` file.

    The file holds ``A`` (``(M, D)``, acting on flattened samples of ``event_shape``, ``D`` its
    size), ``y`` (``(M,)`` or ``(N, M)``, model space) and optionally ``noise_std`` (a number,
    default 0).

    Returns:
        ``(A, y, noise_std)``: float64 tensors and a float.

    Raises:
        ValueError: unreadable file, missing keys, shapes other than these, non-finite or
            negative values.
    """
    path, event_shape = os.fspath(path), tuple(int(n) for n in event_shape)
    arrays = _read_numpy(path, "observation")
    missing = [k for k in ("A", "y") if k not in arrays]
    if missing:
        raise ValueError(f"{path}: put the matrix under key 'A' and the measurement under 'y' "
                         f"(found {list(arrays)})")
    a, y = arrays["A"], arrays["y"]
    noise = arrays.get("noise_std", np.zeros(()))
    dim = int(np.prod(event_shape))
    if a.ndim != 2 or a.shape[1] != dim:
        raise ValueError(f"{path}: A must have shape (M, {dim}) for data of shape "
                         f"{event_shape}, got {a.shape}")
    if y.ndim not in (1, 2) or y.shape[-1] != a.shape[0]:
        raise ValueError(f"{path}: y must have shape ({a.shape[0]},) or (N, {a.shape[0]}), got "
                         f"{y.shape}")
    for name, arr in (("A", a), ("y", y), ("noise_std", noise)):
        if not _is_real(arr) or not np.isfinite(arr).all():
            raise ValueError(f"{path}: {name} must hold finite real numbers")
    if noise.size != 1 or float(noise) < 0:
        raise ValueError(f"{path}: noise_std must be one number >= 0, got {noise!r}")
    return (torch.from_numpy(a.astype(np.float64)), torch.from_numpy(y.astype(np.float64)),
            float(noise))


def _split(name, x, y, test_fraction, seed, **kw) -> Dataset:
    n_test = max(1, int(round(test_fraction * x.shape[0]))) if x.shape[0] > 1 else 0
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    test = x[test_idx] if n_test else x
    lab = (lambda i: None) if y is None else (lambda i: y[i])
    return Dataset(name, tuple(x.shape[1:]), test, train=x[train_idx], train_labels=lab(train_idx),
                   test_labels=lab(test_idx) if n_test else lab(train_idx),
                   **_conditions_of(y), **kw)


def _conditions_of(y: torch.Tensor | None) -> dict:
    """``num_classes`` of integer labels, or ``embed_dim`` of float embeddings ``(N, E)``."""
    if y is not None and y.dtype.is_floating_point:
        return {"num_classes": 0, "embed_dim": int(y.shape[1])}
    return {"num_classes": 0 if y is None else int(y.max()) + 1}


def _test_generator() -> torch.Generator:
    return torch.Generator().manual_seed(TEST_SEED)


def _mixture_dataset(mix: GaussianMixture, test_size: int) -> Dataset:
    """A labelled data set drawn from ``mix`` (its components are the classes)."""
    sampler = functools.partial(mix.sample, return_labels=True)
    test, test_labels = sampler(test_size, _test_generator())
    # Monte Carlo with the exact density, standard error ~0.003 nats
    entropy = functools.lru_cache(maxsize=None)(
        functools.partial(entropy_estimate, mix.sample, mix.log_prob, 100_000))
    return Dataset("mixture", mix.event_shape, test, test_labels=test_labels, sampler=sampler,
                   num_classes=mix.num_components, entropy_fn=entropy, log_prob=mix.log_prob)


def get_dataset(data, test_size: int = 10_000, test_fraction: float = 0.1, *,
                channels: int | None = None, resolution: int | None = None, flip: bool = False,
                pixels: bool | None = None, in_memory: bool | None = None,
                downsample: int = 1) -> Dataset:
    """A data set from a toy name, ``"digits"``, a path or a ``GaussianMixture``.

    Args:
        data: one of :data:`scoresde.toys.TOYS`, ``"digits"`` (scikit-learn's 8x8 digits as
            ``(1, 8, 8)`` images in ``[-1, 1]``: raw pixel value = ``8 (x + 1)``, 0..16, with
            labels 0..9), a ``.npy``/``.npz`` path (uint8 arrays of rank 3 or 4 are 8-bit
            images), a folder of image files (one subfolder per class makes it labelled; see
            :mod:`scoresde.images`), a ``GaussianMixture``, or a dict ``{"means", "covs",
            "weights"}`` describing one (labelled: its components are the classes).
        test_size: number of held-out points drawn for toys and mixtures (with a fixed seed),
            and the most held-out images of a folder kept in ``test``.
        test_fraction: share of a finite set held out (arrays: a fixed-seed permutation;
            folders: the files first by the SHA-256 of their relative paths).
        channels: folders: convert every image to 1 (grayscale), 3 (RGB) or 4 (RGBA)
            channels; None takes the images' own count, which must then be the same for all.
        resolution: folders: resize the shorter side to this and centre-crop to a square;
            None keeps the size, which must then be the same for all images.
        flip: pixel data: mirror training images left to right at random.
        pixels: ``.npy``/``.npz`` arrays: None reads a uint8 array of rank 3 or 4 as 8-bit
            images, False reads every array as its stored values (as versions before image
            support did; runs of those versions record it), True requires 8-bit images.
        in_memory: folders: decode once and keep in memory (True), or decode as batches are
            drawn (False); None decides by :data:`scoresde.images.IN_MEMORY_BYTES`.
        downsample: image sets held in memory (digits, float image arrays): the mean of each
            ``downsample x downsample`` block, e.g. 2 for digits at 4x4 (the base of a
            cascade, :mod:`scoresde.cascade`); 1 keeps the resolution.

    Raises:
        ValueError: unknown name, bad file or folder, or bad sizes or options.
    """
    check_int("test_size", test_size, low=1)
    check_number("test_fraction", test_fraction, 0, 1, high_open=True)
    if channels is not None:
        channels = int(check_choice("channels", str(channels), [str(c) for c in images.MODES]))
    if resolution is not None:
        resolution = check_int("resolution", resolution, low=1)
    if pixels is not None and not isinstance(pixels, bool):
        raise TypeError(f"pixels must be None, True or False, got {pixels!r}")
    if isinstance(data, (str, os.PathLike)) and os.path.isdir(data):
        if downsample != 1:
            raise ValueError(f"downsample is for image sets held as values; a folder "
                             f"{os.fspath(data)!r} takes resolution instead")
        if pixels is False:
            raise ValueError(f"pixels=False reads arrays as stored values; a folder "
                             f"{os.fspath(data)!r} holds 8-bit images")
        folder = images.read_folder(os.fspath(data), channels=channels, resolution=resolution,
                                    test_fraction=test_fraction, test_size=test_size,
                                    in_memory=in_memory)
        return Dataset(os.fspath(data), is_image=True, flip=bool(flip), **images.PIXELS,
                       **folder)
    if channels is not None or resolution is not None:
        raise ValueError("channels and resolution apply to a folder of images, not to data "
                         f"{data!r}")
    dataset = _get_other(data, test_size, test_fraction, pixels)
    if flip and dataset.pixel_bits is None:
        raise ValueError(f"flip needs 8-bit images (a folder or a uint8 array), not data "
                         f"{dataset.name!r}")
    dataset.flip = bool(flip)
    return _downsampled(dataset, downsample) if downsample != 1 else dataset


def _downsampled(dataset: Dataset, factor: int) -> Dataset:
    """``dataset`` at ``1 / factor`` of its resolution (block means of every image)."""
    factor = images.check_factor("downsample", factor, dataset.event_shape)
    if dataset.train is None or dataset.pixel_bits is not None or not dataset.is_image:
        raise ValueError(f"downsample is for image sets held as values (digits, float arrays), "
                         f"not data {dataset.name!r} (a folder: use resolution)")
    train, test = (images.downsample(x, factor) for x in (dataset.train, dataset.test))
    return dataclasses.replace(dataset, event_shape=tuple(train.shape[1:]), train=train, test=test)


def _get_other(data, test_size: int, test_fraction: float, pixels: bool | None) -> Dataset:
    """The data sets that are not folders: toys, mixtures, digits, arrays."""
    if isinstance(data, dict):
        data = GaussianMixture(data["means"], data["covs"], data.get("weights"))
    if isinstance(data, GaussianMixture):
        return _mixture_dataset(data, test_size)
    if not isinstance(data, (str, os.PathLike)):
        raise TypeError("data must be a name, a path or a GaussianMixture, got "
                        f"{type(data).__name__}")
    name = os.fspath(data)
    if name in TOYS:
        sampler, num_classes = LABELLED_TOYS.get(name, (TOYS[name], 0))
        return Dataset(name, (2,), TOYS[name](test_size, _test_generator()), sampler=sampler,
                       num_classes=num_classes, entropy_fn=functools.partial(toy_entropy, name),
                       log_prob=toy_log_prob(name))
    if name == "digits":
        from sklearn.datasets import load_digits
        d = load_digits()
        x = torch.from_numpy(d.images).float()[:, None] / 8 - 1
        return _split(name, x, torch.from_numpy(d.target).long(), test_fraction, 0,
                      is_image=True, raw_scale=8.0, raw_offset=8.0,
                      class_names=tuple(map(str, range(10))))
    if name.endswith((".npy", ".npz")):
        x, y, is_pixels = _load_array(name, pixels)
        if is_pixels:
            return _split(name, x, y, test_fraction, 0, is_image=True, **images.PIXELS)
        return _split(name, x, y, test_fraction, 0, is_image=x.ndim == 4)
    raise ValueError(f"unknown data {name!r}; use one of {', '.join(TOYS)}, 'digits', "
                     "a .npy/.npz path or a folder of images")


def run_dataset(config: dict) -> Dataset:
    """The data set of a run, from its ``config.json`` (``data`` and :data:`DATA_OPTIONS`),
    with a folder's training images left on disk (only the held-out ones are decoded).

    Raises:
        ValueError: the data cannot be read, or no longer reads as the run's (another shape,
            other classes or another pixel scale than ``config`` records), or the run has none.
    """
    if config.get("data") is None:  # a run converted from another code's checkpoint
        raise ValueError("the run has no data set of its own")
    options = {k: config[k] for k in DATA_OPTIONS if k in config}
    dataset = get_dataset(config["data"], in_memory=False, **options)
    facts = {"data_shape": list(dataset.event_shape), "num_classes": dataset.num_classes,
             "embed_dim": dataset.embed_dim,
             "raw_scale": dataset.raw_scale, "raw_offset": dataset.raw_offset}
    differ = [key for key, value in facts.items() if key in config and config[key] != value]
    if differ:
        raise ValueError(f"the data {config['data']!r} no longer reads as the run's: its "
                         f"{', '.join(differ)} differ from the run's config")
    return dataset
