"""Sample quality on features: Fréchet distance (FID), KID and precision/recall.

Every function here takes feature arrays ``(N, F)`` (from any extractor, see
:mod:`scoresde.features`) and computes in float64. They never see images or networks.

- :func:`frechet_distance` between the Gaussians fitted to two feature sets (Heusel et al. 2017):
  ``|mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})``. The trace of the matrix square root
  is taken as the sum of the square roots of the eigenvalues of the symmetric positive
  semi-definite ``S_1^{1/2} S_2 S_1^{1/2}`` (which has the eigenvalues of ``S_1 S_2``), so no
  complex round-off arises, and singular covariances need no offset.
- :func:`kid`, the kernel inception distance (Bińkowski et al. 2018): the unbiased estimate of
  the squared MMD with the cubic polynomial kernel ``k(x, y) = (x . y / F + 1)^3``, averaged over
  disjoint random subsets, with the standard error of that mean.
- :func:`precision_recall` (Kynkäänniemi et al. 2019): the share of generated points inside the
  k-nearest-neighbour balls of the real points, and the share of real points inside those of the
  generated points.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .checks import check_choice, check_int

__all__ = ["KID_MIN_SUBSETS", "KID_ESTIMATORS", "check_fid_size", "feature_stats",
           "frechet_distance", "fid_from_features", "kid", "precision_recall"]

_CHUNK = 2048  # rows of a distance or kernel matrix computed at once (bounded memory)
KID_MIN_SUBSETS = 10  # kid()'s fewest subsets by default: it needs twice as many points
KID_ESTIMATORS = ("all_pairs", "subsets")  # kid()'s estimators, the default first


def _features(name: str, x, min_rows: int = 1) -> torch.Tensor:
    """``x`` as a float64 CPU tensor ``(N, F)``, checked."""
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if x.ndim != 2 or x.shape[0] < min_rows or x.shape[1] < 1:
        raise ValueError(f"{name} must be a feature array of shape (N, F) with N >= {min_rows}, "
                         f"got shape {tuple(x.shape)}")
    x = x.detach().to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return x


def _same_width(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"the two feature sets have different widths: {x.shape[1]} and "
                         f"{y.shape[1]} (features of one extractor are needed)")


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(F,)`` and covariance ``(F, F)`` (unbiased, float64) of ``features`` ``(N, F)``.

    Raises:
        ValueError: ``N <= F``: the covariance of fewer points than features is singular and its
            FID meaningless; use more samples (or an extractor with fewer features).
    """
    x = _features("features", features)
    n, f = x.shape
    check_fid_size(n, f)
    return x.mean(0).numpy(), torch.cov(x.T).reshape(f, f).numpy()


def check_fid_size(n: int, f: int) -> None:
    """Raise ``ValueError`` unless ``n`` samples of ``f`` features have a covariance of full
    rank possible (``n > f``)."""
    if n <= f:
        raise ValueError(f"FID needs more samples than features: got N={n} samples of F={f} "
                         f"features (the covariance would be singular); use N > {f}")


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix (eigenvalues below
    zero by round-off are taken as 0)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Fréchet (2-Wasserstein) distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    ``|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^{1/2})``, with the last
    trace from the eigenvalues of the symmetric ``sigma1^{1/2} sigma2 sigma1^{1/2}``.

    Args:
        mu1, mu2: means ``(F,)``.
        sigma1, sigma2: symmetric positive semi-definite covariances ``(F, F)``.

    Returns:
        The distance, a float >= 0 (round-off below 0 is clipped).

    Raises:
        ValueError: shapes that do not match, or non-finite values.
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, dtype=np.float64)) for m in (mu1, mu2))
    s1, s2 = (np.atleast_2d(np.asarray(s, dtype=np.float64)) for s in (sigma1, sigma2))
    f = mu1.shape[0]
    if mu1.shape != (f,) or mu2.shape != (f,) or s1.shape != (f, f) or s2.shape != (f, f):
        raise ValueError(f"need means (F,) and covariances (F, F) of one F, got {mu1.shape}, "
                         f"{s1.shape}, {mu2.shape}, {s2.shape}")
    if not all(np.isfinite(a).all() for a in (mu1, mu2, s1, s2)):
        raise ValueError("the means and covariances must be finite")
    root1 = _sqrt_psd(s1)
    product = root1 @ s2 @ root1
    eig = np.linalg.eigvalsh((product + product.T) / 2)
    trace_root = float(np.sqrt(np.clip(eig, 0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * trace_root)
    return max(value, 0.0)


def fid_from_features(x, y) -> float:
    """:func:`frechet_distance` of the Gaussians fitted to features ``x`` ``(N, F)`` and ``y``
    ``(M, F)`` (both need more rows than features, see :func:`feature_stats`)."""
    x, y = _features("x", x), _features("y", y)
    _same_width(x, y)
    return frechet_distance(*feature_stats(x), *feature_stats(y))


def _kernel_rows(a: torch.Tensor, b: torch.Tensor, width: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kernel matrix ``(a_i . b_j / width + 1)^3`` (float64) summed in row chunks: over b
    for each ``a_i``, over a for each ``b_j``, and its squares over all."""
    rows = torch.empty(a.shape[0], dtype=torch.float64)
    cols = torch.zeros(b.shape[0], dtype=torch.float64)
    squares = torch.zeros((), dtype=torch.float64)
    for i in range(0, a.shape[0], _CHUNK):
        block = ((a[i:i + _CHUNK] @ b.T).double() / width + 1).pow(3)
        rows[i:i + _CHUNK] = block.sum(1)
        cols += block.sum(0)
        squares += block.pow(2).sum()
    return rows, cols, squares


def _within(x: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For a set ``x`` ``(N, F)``: ``(the mean kernel over pairs i != j, each point's mean with
    the others, the variance of the kernel over pairs)``."""
    n = x.shape[0]
    diagonal = ((x.double() ** 2).sum(1) / width + 1).pow(3)
    rows, _, squares = _kernel_rows(x, x, width)
    rows, squares = rows - diagonal, squares - diagonal.pow(2).sum()
    mean = rows.sum() / (n * (n - 1))
    return mean, rows / (n - 1), squares / (n * (n - 1)) - mean ** 2


def _mmd2_all_pairs(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """The unbiased MMD^2 over all pairs of ``x`` ``(N, F)`` and ``y`` ``(M, F)`` (cubic kernel)
    and its standard error.

    The estimate is ``U_xx + U_yy - 2 V_xy``; its variance is the U-statistics' (Hoeffding):
    ``4(N-2)/(N(N-1)) z1_x + 2/(N(N-1)) z2_x`` for ``U_xx`` (and alike for ``U_yy``),
    ``(s2 + (M-1) zc_x + (N-1) zc_y) / (NM)`` for ``V_xy`` and covariances ``2 c_x / N``,
    ``2 c_y / M`` between them, each moment estimated from the kernel's row means with their
    own noise taken out. Its spread over independent draws matches it (``tests``)."""
    n, m, width = x.shape[0], y.shape[0], x.shape[1]
    kxx, fx, z2x = _within(x, width)
    kyy, fy, z2y = _within(y, width)
    rows, cols, squares = _kernel_rows(x, y, width)
    kxy = rows.sum() / (n * m)
    gx, gy, s2 = rows / m, cols / n, squares / (n * m) - kxy ** 2
    z1x = ((fx.var() - z2x / (n - 1)) / (1 - 1 / (n - 1))).clamp(min=0)
    z1y = ((fy.var() - z2y / (m - 1)) / (1 - 1 / (m - 1))).clamp(min=0)
    zcx = ((gx.var() - s2 / m) / (1 - 1 / m)).clamp(min=0)
    zcy = ((gy.var() - s2 / n) / (1 - 1 / n)).clamp(min=0)
    cx = ((fx - fx.mean()) * (gx - gx.mean())).sum() / (n - 1)
    cy = ((fy - fy.mean()) * (gy - gy.mean())).sum() / (m - 1)
    var = (4 * (n - 2) / (n * (n - 1)) * z1x + 2 / (n * (n - 1)) * z2x
           + 4 * (m - 2) / (m * (m - 1)) * z1y + 2 / (m * (m - 1)) * z2y
           + 4 * (s2 + (m - 1) * zcx + (n - 1) * zcy) / (n * m) - 8 * cx / n - 8 * cy / m)
    return float(kxx + kyy - 2 * kxy), float(var.clamp(min=0).sqrt())


def kid(x, y, *, estimator: str = "all_pairs", subset_size: int = 1000,
        min_subsets: int = KID_MIN_SUBSETS,
        generator: torch.Generator | None = None) -> tuple[float, float]:
    """Kernel inception distance: the unbiased MMD^2 with the kernel ``(x . y / F + 1)^3``,
    and its standard error.

    ``estimator="all_pairs"`` (the default) averages the kernel over every pair of points
    (Bińkowski et al. 2018; Gretton et al. 2012) with the U-statistics' standard error
    (:func:`_mmd2_all_pairs`), which matches the estimate's spread over independent draws
    (``tests/test_quality.py``). ``"subsets"`` is the mean over disjoint subsets, as the
    reference code computes it: both sets are shuffled (with ``generator``) and cut into ``S``
    subsets of ``m`` points, ``m = min(subset_size, min(N, M) // min_subsets)``, ``S = min(N,
    M) // m``, with the standard error ``std / sqrt(S)``; it uses fewer pairs and is about
    three times as noisy. Either way the mean of two draws of one distribution is 0 within it.

    Args:
        x: features ``(N, F)``; y: features ``(M, F)``.
        estimator: ``"all_pairs"`` or ``"subsets"`` (:data:`KID_ESTIMATORS`).
        subset_size: ``"subsets"``: the most points per subset (1000, as Bińkowski et al.).
        min_subsets: the fewest subsets (smaller subsets are used when the sets are small);
            either estimator needs ``2 * min_subsets`` points in each set.
        generator: ``"subsets"``: draws the shuffles (a fixed seed gives the same answer).

    Returns:
        ``(mean, standard_error)``.

    Raises:
        ValueError: bad arrays, an unknown estimator, or fewer than ``2 * min_subsets`` points
            in a set.
    """
    x, y = _features("x", x), _features("y", y)
    _same_width(x, y)
    check_choice("estimator", estimator, KID_ESTIMATORS)
    check_int("subset_size", subset_size, low=2)
    check_int("min_subsets", min_subsets, low=2)
    n = min(x.shape[0], y.shape[0])
    m = min(subset_size, n // min_subsets)
    if m < 2:
        raise ValueError(f"KID needs at least {2 * min_subsets} points in each set (subsets of "
                         f">= 2 points, >= {min_subsets} subsets), got {x.shape[0]} and "
                         f"{y.shape[0]}")
    if estimator == "all_pairs":
        return _mmd2_all_pairs(x, y)
    count = n // m
    px = torch.randperm(x.shape[0], generator=generator)
    py = torch.randperm(y.shape[0], generator=generator)
    values = torch.tensor([_mmd2_all_pairs(x[px[i * m:(i + 1) * m]],  # each subset pair's
                                           y[py[i * m:(i + 1) * m]])[0]  # U-statistic
                           for i in range(count)], dtype=torch.float64)
    return float(values.mean()), float(values.std() / math.sqrt(count))


def _kth_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each point of ``x`` to its ``k``-th nearest neighbour among the others."""
    radii = []
    for i in range(0, x.shape[0], _CHUNK):
        d = torch.cdist(x[i:i + _CHUNK], x)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # the 1st is the point itself
    return torch.cat(radii)


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> float:
    """Share of ``points`` within ``radii[j]`` of some ``centres[j]``."""
    hits = 0
    for i in range(0, points.shape[0], _CHUNK):
        d = torch.cdist(points[i:i + _CHUNK], centres)
        hits += int((d <= radii).any(dim=1).sum())
    return hits / points.shape[0]


def precision_recall(real, fake, *, k: int = 3, generator: torch.Generator | None = None
                     ) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of ``fake`` against ``real``.

    Each set's manifold is the union of balls around its points reaching their ``k``-th
    nearest neighbour in the same set. Precision is the share of fake points inside the real
    manifold, recall the share of real points inside the fake one. As in the paper both sets
    have one size: the larger is cut to the smaller's ``n`` by a random subset (``generator``).

    Args:
        real: features ``(N, F)``; fake: features ``(M, F)``, both with more than ``k`` points.
        k: the neighbour that sets a ball's radius (3, the paper's).
        generator: draws the subset of the larger set.

    Returns:
        ``(precision, recall)``, each in ``[0, 1]``.
    """
    real, fake = _features("real", real), _features("fake", fake)
    _same_width(real, fake)
    k = check_int("k", k, low=1)
    n = min(real.shape[0], fake.shape[0])
    if n <= k:
        raise ValueError(f"precision and recall with k={k} need more than {k} points in each "
                         f"set, got {real.shape[0]} and {fake.shape[0]}")
    if real.shape[0] > n:
        real = real[torch.randperm(real.shape[0], generator=generator)[:n]]
    if fake.shape[0] > n:
        fake = fake[torch.randperm(fake.shape[0], generator=generator)[:n]]
    precision = _inside(fake, real, _kth_radius(real, k))
    recall = _inside(real, fake, _kth_radius(fake, k))
    return precision, recall
