"""Linear measurements ``y = A x + noise_std * n`` of flattened data, reduced to A's row space.

With the singular value decomposition ``A = U diag(S) V^T`` (keeping the ``r`` singular values
above a tolerance), ``y~ = U_r^T y`` is a sufficient statistic: ``y~ = diag(S_r) V_r^T x +
noise_std * n~`` with ``n~ ~ N(0, I_r)``, and the part of ``y`` outside the range of ``A`` does
not depend on ``x``. Everything here then works coordinate by coordinate in the basis ``V``:
likelihoods of Gaussian estimates, the Kalman update of a Gaussian ``N(mean, var I)``, and the
projection onto the row space that the replacement method uses. A rank-deficient ``A`` and
``noise_std = 0`` are handled alike (no inverse of ``A A^T`` is formed).

Masks, averages, colour-to-grey projections and blurs written as matrices are all such ``A``;
:func:`mask_matrix` and :func:`grey_matrix` build the first and the colorization one.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .checks import check_number

__all__ = ["LinearObservation", "KnownEntries", "mask_matrix", "grey_matrix"]


class LinearObservation:
    """A linear measurement of data of shape ``event_shape``, in the row space of ``A``.

    Args:
        A: ``(M, D)`` matrix acting on the flattened data, ``D = prod(event_shape)``.
        y: ``(M,)`` one measurement or ``(B, M)``, one per sample.
        noise_std: standard deviation of the measurement noise, ``>= 0``.
        event_shape: the shape of one sample, ``(D,)`` by default.
        rtol: singular values below ``rtol * S.max()`` count as zero (default
            ``max(M, D) * 1e-12``).

    Attributes:
        V: ``(D, r)`` orthonormal basis of the row space; ``S``: ``(r,)`` singular values;
        y_tilde: ``(B, r)`` (or ``(r,)``) the reduced measurement ``U_r^T y``; ``x_row``: the
        least-norm solution ``V_r diag(1/S) y~``, shape of ``y_tilde`` with ``D`` entries.

    Raises:
        ValueError: shapes disagree, values are not finite, ``A`` is zero, or ``noise_std = 0``
            and ``y`` lies outside the range of ``A`` (no ``x`` gives it).
    """

    def __init__(self, A, y, noise_std: float = 0.0, event_shape: Sequence[int] | None = None,
                 rtol: float | None = None):
        A = torch.as_tensor(A, dtype=torch.float64).detach().cpu()
        y = torch.as_tensor(y, dtype=torch.float64).detach().cpu()
        if A.ndim != 2:
            raise ValueError(f"A must be a matrix (M, D) acting on the flattened data, got "
                             f"shape {tuple(A.shape)}")
        num, dim = A.shape
        event_shape = (dim,) if event_shape is None else tuple(int(n) for n in event_shape)
        if math.prod(event_shape) != dim:
            raise ValueError(f"A has D = {dim} columns; the data's shape {event_shape} has "
                             f"{math.prod(event_shape)} entries")
        if y.ndim not in (1, 2) or y.shape[-1] != num:
            raise ValueError(f"y must have shape ({num},) or (B, {num}) for A of shape "
                             f"{tuple(A.shape)}, got {tuple(y.shape)}")
        if not (torch.isfinite(A).all() and torch.isfinite(y).all()):
            raise ValueError("A and y must be finite")
        self.noise_std = check_number("noise_std", noise_std, low=0)
        u, s, vh = torch.linalg.svd(A, full_matrices=False)
        tol = (max(num, dim) * 1e-12 if rtol is None else check_number("rtol", rtol, low=0))
        keep = s > tol * (float(s.max()) if s.numel() else 0.0)
        if not keep.any():
            raise ValueError("A is zero: it observes nothing")
        self.A, self.y, self.event_shape = A, y, event_shape
        self.U, self.S, self.V = u[:, keep], s[keep], vh[keep].T
        self.rank, self.dim = int(keep.sum()), dim
        self.y_tilde = y @ self.U
        if self.noise_std == 0:
            outside = (y - self.y_tilde @ self.U.T).norm(dim=-1).max()
            if float(outside) > 1e-6 * (1 + float(y.norm(dim=-1).max())):
                raise ValueError(f"with noise_std = 0, y must lie in the range of A (rank "
                                 f"{self.rank}); it is {float(outside):.3g} away from it")
        self.x_row = (self.y_tilde / self.S) @ self.V.T

    # ----- in the basis V, for flattened x of shape (B, D) ------------------------------------
    def rotate(self, flat: torch.Tensor) -> torch.Tensor:
        """``V_r^T x``: ``(B, D)`` to ``(B, r)``, in ``flat``'s dtype and device."""
        return flat @ self.V.to(flat)

    def log_likelihood(self, mean: torch.Tensor, var) -> torch.Tensor:
        """``log N(y~; S V^T mean, noise_std^2 I + var S^2)`` for ``x ~ N(mean, var I)``.

        Args:
            mean: ``(B, D)`` Gaussian means of ``x``.
            var: a number or ``(B,)``: the variance of every coordinate of ``x``.

        Returns:
            ``(B,)``: the log-density of the reduced measurement (the part of ``y`` outside
            the range of ``A`` adds the same constant for every ``x``, left out).
        """
        s, y = self.S.to(mean), self.y_tilde.to(mean)
        var = torch.as_tensor(var, dtype=mean.dtype, device=mean.device).reshape(-1, 1)
        total = self.noise_std**2 + var * s**2  # (B or 1, r)
        resid = y - s * self.rotate(mean)
        return -0.5 * ((resid**2 / total) + torch.log(2 * math.pi * total)).sum(-1)

    def kalman(self, mean: torch.Tensor, var) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior of ``x ~ N(mean, var I)`` given ``y``: mean ``(B, D)``, std ``(B, r)``.

        In the basis ``V_r`` each coordinate ``u_j`` updates alone (gain ``k_j = var S_j /
        (var S_j^2 + noise_std^2)``); the null-space part keeps ``N(mean, var I)``. With
        ``noise_std = 0`` the row-space part is exactly ``x_row``.

        Returns:
            ``(post_mean, row_std)``: draw ``post_mean + row_std`` on the row space (``V_r``
            coordinates) ``+ sqrt(var)`` noise on the null space.
        """
        s, y = self.S.to(mean), self.y_tilde.to(mean)
        var = torch.as_tensor(var, dtype=mean.dtype, device=mean.device).reshape(-1, 1)
        u = self.rotate(mean)
        gain = var * s / (var * s**2 + self.noise_std**2)
        u_post = u + gain * (y - s * u)
        row_var = (var * self.noise_std**2 / (var * s**2 + self.noise_std**2)).expand_as(u)
        return mean + (u_post - u) @ self.V.T.to(mean), row_var.sqrt()

    def replace_row(self, flat: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
        """``flat`` with its row-space part ``V V^T flat`` replaced by ``V V^T row``; ``(B, D)``."""
        v = self.V.to(flat)
        return flat + (row - flat) @ v @ v.T

    def to_row_noise(self, z: torch.Tensor) -> torch.Tensor:
        """The row-space part ``V V^T z`` of ``(B, D)`` noise (it is ``N(0, V V^T)``)."""
        v = self.V.to(z)
        return z @ v @ v.T

    def batch(self, batch: int, repeat: int = 1) -> "LinearObservation":
        """This observation with ``y`` of shape ``(batch * repeat, M)``: one ``y`` is repeated,
        a batch of ``y`` must have ``batch`` rows (a batch of 1 is repeated too); then each row
        is repeated ``repeat`` times in place (row ``i`` becomes rows ``i repeat`` to
        ``(i + 1) repeat - 1``, e.g. one row per particle)."""
        y = self.y.reshape(-1, self.y.shape[-1])
        if y.shape[0] not in (1, batch):
            raise ValueError(f"y holds {y.shape[0]} measurements for {batch} samples")
        out = object.__new__(LinearObservation)
        out.__dict__.update(self.__dict__)
        out.y = y.expand(batch, -1).repeat_interleave(repeat, 0)
        out.y_tilde = out.y @ self.U
        out.x_row = (out.y_tilde / self.S) @ self.V.T
        return out


class KnownEntries:
    """Observed entries of a batch: ``values`` where ``mask`` is True, one mask per sample.

    The mask form of a :class:`LinearObservation` for the replacement step (``x_row`` and
    :meth:`replace_row` as there), without a matrix: the row space of a mask is its known
    entries, so the replacement is a selection, exact, and a mask may differ between samples.

    Args:
        values: ``(B, *dims)``, the observations (entries outside the mask are ignored).
        mask: booleans (or 0/1) of shape ``(B, *dims)`` or ``dims``, True where known.

    Raises:
        ValueError: ``values`` is not a batch, or the mask has another shape or other values.
    """

    def __init__(self, values: torch.Tensor, mask):
        if not isinstance(values, torch.Tensor) or values.ndim < 2:
            raise ValueError("values must be a tensor of shape (B, *dims)")
        mask = torch.as_tensor(mask, device=values.device)
        if mask.dtype.is_floating_point and not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must hold booleans or 0/1 values (1 = known)")
        if tuple(mask.shape) not in (tuple(values.shape), tuple(values.shape[1:])):
            raise ValueError(f"mask must have the data's shape {tuple(values.shape[1:])} or the "
                             f"batch's {tuple(values.shape)}, got {tuple(mask.shape)}")
        self.known = mask.to(torch.bool).expand(values.shape)
        self.event_shape = tuple(values.shape[1:])
        self.x_row = values.reshape(len(values), -1)

    def replace_row(self, flat: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
        """``flat`` ``(B, D)`` with its known entries replaced by ``row``'s."""
        return torch.where(self.known.reshape(len(flat), -1), row, flat)


def mask_matrix(mask) -> torch.Tensor:
    """The ``(M, D)`` matrix that selects the ``M`` entries where ``mask`` (any shape) is True."""
    mask = torch.as_tensor(mask).reshape(-1)
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must hold booleans or 0/1 values (1 = known)")
        mask = mask.to(torch.bool)
    return torch.eye(mask.numel(), dtype=torch.float64)[mask]


def grey_matrix(event_shape: Sequence[int]) -> torch.Tensor:
    """The ``(H W, C H W)`` matrix taking an image ``(C, H, W)`` (channels first, any number of
    trailing axes) to its grey image, the mean over the channels of each pixel."""
    event_shape = tuple(int(n) for n in event_shape)
    if len(event_shape) < 2 or event_shape[0] < 2:
        raise ValueError(f"colorization needs data (C, ...) with C >= 2 channels, got "
                         f"{event_shape}")
    channels, pixels = event_shape[0], math.prod(event_shape[1:])
    eye = torch.eye(pixels, dtype=torch.float64)
    return torch.cat([eye] * channels, dim=1) / channels
