"""Training data: 2D toys with known entropy, scikit-learn's 8x8 digits, and user arrays.

A :class:`Dataset` bundles what training, sampling and likelihood need to know about a data set:
its event shape, held-out test points, whether it is an image set (and how model values map back
to raw pixel values), labels, and, for the toys, the differential entropy in nats, the floor that a
model's held-out negative log-likelihood can reach.

Toys are infinite: every training batch is a fresh draw from a seeded ``torch.Generator``. Finite
sets (digits, arrays) are sampled by index with that generator.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .targets import GaussianMixture
from .utils import seed_from

__all__ = ["Dataset", "TOYS", "get_dataset", "toy_entropy", "toy_log_prob", "load_array",
           "load_mask"]

Sampler = Callable[[int, "torch.Generator | None"], torch.Tensor]
TEST_SEED = 2**31 - 1  # the toys' test points come from this seed; training never uses it


def _dev(generator):
    return generator.device if generator is not None else torch.device("cpu")


def _check_n(n) -> int:
    if not isinstance(n, (int, np.integer)) or int(n) < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return int(n)


# ----- noisy curves: the toys whose density is a 1D integral ------------------------------------
@dataclass(frozen=True)
class _Curves:
    """Points ``c_k(u) + noise * z`` with branch ``k`` chosen by ``weights`` and ``u ~ U(0, 1)``.

    The density is ``sum_k w_k int_0^1 N(x; c_k(u), noise^2 I) du``, computed by the midpoint rule.
    """

    curves: tuple[Callable[[torch.Tensor], torch.Tensor], ...]
    weights: tuple[float, ...]
    noise: float

    def log_prob(self, x: torch.Tensor, nodes: int = 1024) -> torch.Tensor:
        u = (torch.arange(nodes, dtype=torch.float64) + 0.5) / nodes
        x = x.to(torch.float64)
        terms = []
        for w, curve in zip(self.weights, self.curves):
            c = curve(u)  # (nodes, 2)
            d2 = torch.cdist(x, c) ** 2  # (B, nodes)
            terms.append(torch.logsumexp(-d2 / (2 * self.noise**2), 1) + math.log(w / nodes))
        return torch.logsumexp(torch.stack(terms, 1), 1) - math.log(2 * math.pi * self.noise**2)

    @property
    def entropy(self) -> float | None:
        """Differential entropy of the data in nats, or None where it is not known."""
        return self.entropy_fn()

    def sample(self, n: int, generator=None) -> torch.Tensor:
        dev = _dev(generator)
        w = torch.tensor(self.weights, dtype=torch.float64, device=dev)
        k = torch.multinomial(w, n, replacement=True, generator=generator)
        u = torch.rand(n, dtype=torch.float64, generator=generator, device=dev).cpu()
        x = torch.zeros(n, 2, dtype=torch.float64)
        for i, curve in enumerate(self.curves):
            sel = (k == i).cpu()
            x[sel] = curve(u[sel])
        z = torch.randn(n, 2, dtype=torch.float64, generator=generator, device=dev).cpu()
        return (x + self.noise * z).float().to(dev)


def _arc(fn):
    return lambda u: torch.stack(fn(u), 1)


# moons: scikit-learn's two half circles, centred and scaled by 2.
_MOONS_SHIFT, _MOONS_SCALE = (0.5, 0.25), 2.0
_MOONS = _Curves(
    (_arc(lambda u: ((torch.cos(math.pi * u) - 0.5) * 2, (torch.sin(math.pi * u) - 0.25) * 2)),
     _arc(lambda u: ((0.5 - torch.cos(math.pi * u)) * 2, (0.25 - torch.sin(math.pi * u)) * 2))),
    (0.5, 0.5), 0.1 * _MOONS_SCALE)
# circles: scikit-learn's two concentric circles (factor 0.5), scaled by 3.
_CIRCLES = _Curves(
    (_arc(lambda u: (3 * torch.cos(2 * math.pi * u), 3 * torch.sin(2 * math.pi * u))),
     _arc(lambda u: (1.5 * torch.cos(2 * math.pi * u), 1.5 * torch.sin(2 * math.pi * u)))),
    (0.5, 0.5), 0.08 * 3)
# swissroll: scikit-learn's roll (noise 1) seen from above, divided by 5.
_SWISS_T = lambda u: 1.5 * math.pi * (1 + 2 * u)  # noqa: E731
_SWISSROLL = _Curves(
    (_arc(lambda u: (_SWISS_T(u) * torch.cos(_SWISS_T(u)) / 5, _SWISS_T(u) * torch.sin(_SWISS_T(u))
                     / 5)),), (1.0,), 1.0 / 5)
# rings: four concentric circles of radii 1, 2, 3, 4 (times 0.9) with equal mass.
_RINGS = _Curves(tuple(
    _arc(lambda u, r=r: (0.9 * r * torch.cos(2 * math.pi * u),
                         0.9 * r * torch.sin(2 * math.pi * u)))
    for r in (1, 2, 3, 4)), (0.25,) * 4, 0.08)
# 2spirals: two arms of 540 degrees, arm length ~ sqrt(u), Gaussian noise, divided by 3.
_SPIRAL_N = lambda u: torch.sqrt(u) * 3 * math.pi  # noqa: E731
_SPIRALS = _Curves(
    (_arc(lambda u: (-torch.cos(_SPIRAL_N(u)) * _SPIRAL_N(u) / 3,
                     torch.sin(_SPIRAL_N(u)) * _SPIRAL_N(u) / 3)),
     _arc(lambda u: (torch.cos(_SPIRAL_N(u)) * _SPIRAL_N(u) / 3,
                     -torch.sin(_SPIRAL_N(u)) * _SPIRAL_N(u) / 3))),
    (0.5, 0.5), 0.3 / 3)

EIGHT_GAUSSIANS = GaussianMixture.ring(k=8, radius=4 / math.sqrt(2), std=0.5 / math.sqrt(2))


def _moons(n, generator=None):
    from sklearn.datasets import make_moons
    x, _ = make_moons(_check_n(n), noise=0.1, random_state=seed_from(generator))
    x = (torch.from_numpy(x) - torch.tensor(_MOONS_SHIFT, dtype=torch.float64)) * _MOONS_SCALE
    return x.float().to(_dev(generator))


def _circles(n, generator=None):
    from sklearn.datasets import make_circles
    x, _ = make_circles(_check_n(n), noise=0.08, factor=0.5, random_state=seed_from(generator))
    return (3 * torch.from_numpy(x)).float().to(_dev(generator))


def _swissroll(n, generator=None):
    from sklearn.datasets import make_swiss_roll
    x, _ = make_swiss_roll(_check_n(n), noise=1.0, random_state=seed_from(generator))
    return (torch.from_numpy(x[:, [0, 2]]) / 5).float().to(_dev(generator))


def _checkerboard(n, generator=None):
    """Uniform on 8 of the 16 squares of side 2 tiling ``[-4, 4]^2`` (area 32)."""
    n, dev = _check_n(n), _dev(generator)
    x1 = torch.rand(n, generator=generator, device=dev) * 4 - 2
    col = torch.randint(0, 2, (n,), generator=generator, device=dev) * 2
    x2 = torch.rand(n, generator=generator, device=dev) - col + torch.floor(x1) % 2
    return torch.stack([x1, x2], 1) * 2


def _checkerboard_log_prob(x):
    squares = torch.floor(x[:, 0] / 2) + torch.floor(x[:, 1] / 2)
    inside = (x.abs() <= 4).all(1) & (squares % 2 == 0)
    out = torch.full(inside.shape, -math.inf, dtype=torch.float64, device=x.device)
    return out.masked_fill(inside, -math.log(32.0))


def _pinwheel(n, generator=None):
    """Five arms: Gaussian blobs bent by an angle growing exponentially with the radius."""
    n, dev = _check_n(n), _dev(generator)
    feats = torch.randn(n, 2, generator=generator, device=dev) * torch.tensor([0.3, 0.1],
                                                                               device=dev)
    feats[:, 0] += 1.0
    arm = torch.randint(0, 5, (n,), generator=generator, device=dev)
    angle = arm * 2 * math.pi / 5 + 0.25 * torch.exp(feats[:, 0])
    rot = torch.stack([torch.cos(angle), -torch.sin(angle), torch.sin(angle), torch.cos(angle)], 1)
    return 2 * torch.einsum("bij,bj->bi", rot.reshape(n, 2, 2), feats)


TOYS: dict[str, Sampler] = {
    "8gaussians": lambda n, generator=None: EIGHT_GAUSSIANS.sample(_check_n(n), generator),
    "checkerboard": _checkerboard,
    "swissroll": _swissroll,
    "moons": _moons,
    "circles": _circles,
    "rings": lambda n, generator=None: _RINGS.sample(_check_n(n), generator),
    "pinwheel": _pinwheel,
    "2spirals": lambda n, generator=None: _SPIRALS.sample(_check_n(n), generator),
}

# Toys with class labels (the sampler returns ``(x, labels)``): 8gaussians' components.
_LABELLED: dict[str, tuple[Callable, int]] = {
    "8gaussians": (lambda n, generator=None: EIGHT_GAUSSIANS.sample(_check_n(n), generator,
                                                                    return_labels=True), 8),
}

_LOG_PROBS = {
    "8gaussians": EIGHT_GAUSSIANS.log_prob, "checkerboard": _checkerboard_log_prob,
    "swissroll": _SWISSROLL.log_prob, "moons": _MOONS.log_prob, "circles": _CIRCLES.log_prob,
    "rings": _RINGS.log_prob, "2spirals": _SPIRALS.log_prob,
}


def toy_log_prob(name: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The exact data log-density ``(B, 2) -> (B,)`` of a toy, or None where it is not known.

    Curve toys (moons, circles, swissroll, rings, 2spirals) integrate the Gaussian noise along the
    curve by the midpoint rule; moons and circles use the continuous limit of scikit-learn's evenly
    spaced points. Pinwheel has no closed form: None.
    """
    _check_toy(name)
    return _LOG_PROBS.get(name)


@functools.lru_cache(maxsize=None)
def toy_entropy(name: str, samples: int = 50_000) -> float | None:
    """Differential entropy of a toy in nats, or None where it is not known (pinwheel).

    Checkerboard: ``ln 32`` exactly (uniform on area 32). The others: ``-mean log p(x)`` over
    ``samples`` points drawn with a fixed seed, with the exact density of :func:`toy_log_prob`;
    the Monte Carlo standard error is ``std(log p) / sqrt(samples)``, 0.003-0.005 nats. Computed
    on first use (seconds) and cached.
    """
    _check_toy(name)
    if name == "checkerboard":
        return math.log(32.0)
    log_prob = _LOG_PROBS.get(name)
    if log_prob is None:
        return None
    x = TOYS[name](samples, torch.Generator().manual_seed(TEST_SEED - 1))
    return -float(torch.cat([log_prob(c) for c in x.split(4096)]).mean())


def _check_toy(name):
    if name not in TOYS:
        raise ValueError(f"unknown toy {name!r}; choose one of {', '.join(TOYS)}")


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
        is_image: True for ``(C, H, W)`` image sets.
        entropy: differential entropy in nats, or None where unknown (computed on first access).
        log_prob: exact log-density ``(B, *event_shape) -> (B,)`` or None.
        raw_scale, raw_offset: map back to raw values (digits: pixel values 0..16).
    """

    name: str
    event_shape: tuple[int, ...]
    test: torch.Tensor
    train: torch.Tensor | None = None
    sampler: Sampler | None = None
    train_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    num_classes: int = 0
    is_image: bool = False
    entropy_fn: Callable[[], float | None] = field(default=lambda: None, repr=False)
    log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None
    raw_scale: float = 1.0
    raw_offset: float = 0.0

    @property
    def entropy(self) -> float | None:
        """Differential entropy of the data in nats, or None where it is not known."""
        return self.entropy_fn()

    def sample(self, n: int, generator: torch.Generator | None = None):
        """A training batch ``(x, y)``: ``x`` ``(n, *event_shape)``, ``y`` ``(n,)`` or None."""
        if self.sampler is not None:
            out = self.sampler(n, generator)
            return out if isinstance(out, tuple) else (out, None)
        idx = torch.randint(0, self.train.shape[0], (_check_n(n),), generator=generator,
                            device=_dev(generator)).cpu()
        y = None if self.train_labels is None else self.train_labels[idx]
        return self.train[idx], y

    def std(self) -> float:
        """Standard deviation of all entries of the training data (test points for toys)."""
        x = self.train if self.train is not None else self.sample(
            20_000, torch.Generator().manual_seed(TEST_SEED - 2))[0]
        return float(x.to(torch.float64).std())


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


def load_array(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Read ``(N, *dims)`` points (and optional labels) from a ``.npy`` or ``.npz`` file.

    An ``.npz`` holds the points under ``x``, ``data`` or as its only array, and labels under
    ``y`` or ``labels``.

    Raises:
        ValueError: unreadable file, no points, fewer than 2 axes, non-numeric or non-finite values,
            or labels of the wrong length.
    """
    path = os.fspath(path)
    arrays = _read_numpy(path, "data")
    labels = None
    if _NPY in arrays:
        x = arrays[_NPY]
    else:
        files = list(arrays)
        keys = [k for k in ("x", "data") if k in files] or (files if len(files) == 1 else [])
        if not keys:
            raise ValueError(f"{path}: put the points under key 'x' (found {files})")
        x = arrays[keys[0]]
        lab = [k for k in ("y", "labels") if k in files]
        labels = arrays[lab[0]] if lab else None
    if not np.issubdtype(x.dtype, np.number) or x.ndim < 2 or x.shape[0] == 0 or x[0].size == 0:
        raise ValueError(f"{path}: need a non-empty numeric array of shape (N, *dims) with N >= 1, "
                         f"got dtype {x.dtype} and shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{path}: the points contain NaN or infinite values")
    if labels is not None and (labels.shape != (x.shape[0],)
                               or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0):
        raise ValueError(f"{path}: labels must be non-negative integers of shape ({x.shape[0]},)")
    y = None if labels is None else torch.from_numpy(labels.astype(np.int64))
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), y


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
    if not np.issubdtype(values.dtype, np.number) or not np.isfinite(values).all():
        raise ValueError(f"{path}: values must be finite numbers")
    return (torch.from_numpy(mask.astype(bool)),
            torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)))


def _split(name, x, y, test_fraction, seed, **kw) -> Dataset:
    n_test = max(1, int(round(test_fraction * x.shape[0]))) if x.shape[0] > 1 else 0
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    test = x[test_idx] if n_test else x
    lab = (lambda i: None) if y is None else (lambda i: y[i])
    return Dataset(name, tuple(x.shape[1:]), test, train=x[train_idx], train_labels=lab(train_idx),
                   test_labels=lab(test_idx) if n_test else lab(train_idx),
                   num_classes=0 if y is None else int(y.max()) + 1, **kw)


def get_dataset(data, test_size: int = 10_000, test_fraction: float = 0.1) -> Dataset:
    """A data set from a toy name, ``"digits"``, a ``.npy``/``.npz`` path or a ``GaussianMixture``.

    Args:
        data: one of :data:`TOYS`, ``"digits"`` (scikit-learn's 8x8 digits as ``(1, 8, 8)`` images
            in ``[-1, 1]``: raw pixel value = ``8 (x + 1)``, 0..16, with labels 0..9), a path, a
            ``GaussianMixture``, or a dict ``{"means", "covs", "weights"}`` describing one
            (labelled: its components are the classes).
        test_size: number of held-out points drawn for toys and mixtures (with a fixed seed).
        test_fraction: share of a finite set held out (a fixed-seed permutation).

    Raises:
        ValueError: unknown name, bad file, or bad sizes.
    """
    if not (isinstance(test_size, int) and test_size >= 1 and 0 <= test_fraction < 1):
        raise ValueError(f"test_size must be an int >= 1 and test_fraction in [0, 1), got "
                         f"{test_size!r} and {test_fraction!r}")
    test_gen = torch.Generator().manual_seed(TEST_SEED)
    if isinstance(data, dict):
        data = GaussianMixture(data["means"], data["covs"], data.get("weights"))
    if isinstance(data, GaussianMixture):
        mix = data

        @functools.lru_cache(maxsize=None)
        def entropy():  # Monte Carlo with the exact density, standard error ~0.003 nats
            x = mix.sample(100_000, torch.Generator().manual_seed(TEST_SEED - 1))
            return -float(mix.log_prob(x).to(torch.float64).mean())
        test, test_labels = mix.sample(test_size, test_gen, return_labels=True)
        return Dataset("mixture", mix.event_shape, test, test_labels=test_labels,
                       sampler=lambda n, generator=None: mix.sample(_check_n(n), generator,
                                                                    return_labels=True),
                       num_classes=mix.num_components, entropy_fn=entropy, log_prob=mix.log_prob)
    if not isinstance(data, (str, os.PathLike)):
        raise TypeError("data must be a name, a path or a GaussianMixture, got "
                        f"{type(data).__name__}")
    name = os.fspath(data)
    if name in TOYS:
        sampler, num_classes = _LABELLED.get(name, (TOYS[name], 0))
        return Dataset(name, (2,), TOYS[name](test_size, test_gen), sampler=sampler,
                       num_classes=num_classes, entropy_fn=functools.partial(toy_entropy, name),
                       log_prob=toy_log_prob(name))
    if name == "digits":
        from sklearn.datasets import load_digits
        d = load_digits()
        x = torch.from_numpy(d.images).float()[:, None] / 8 - 1
        return _split(name, x, torch.from_numpy(d.target).long(), test_fraction, 0,
                      is_image=True, raw_scale=8.0, raw_offset=8.0)
    if name.endswith((".npy", ".npz")):
        x, y = load_array(name)
        return _split(name, x, y, test_fraction, 0, is_image=x.ndim == 4)
    raise ValueError(f"unknown data {name!r}; use one of {', '.join(TOYS)}, 'digits', "
                     "or a .npy/.npz path")
