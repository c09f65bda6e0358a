"""Continuous conditioning vectors: embeddings ``y`` of shape ``(B, E)`` and their null.

GLIDE, DALL-E 2 and Imagen condition a diffusion model on a text embedding, a vector, rather
than a class. Networks built with ``embed_dim = E > 0`` project ``y`` with a small learnt MLP and
add it to the noise-level conditioning. A row of NaN (:data:`NULL_EMBEDDING`) stands for "no
embedding" and, like ``y=None``, is replaced by a learnt null embedding: training drops a share
of the embeddings to it (``label_dropout``), so one network holds the conditional scores and the
unconditional one that classifier-free guidance needs (Ho & Salimans 2021). Class labels keep
their own null (:data:`scoresde.labels.NULL_LABEL`, embedded as zero).
"""

from __future__ import annotations

import torch
from torch import nn

from .checks import values_trusted
from .labels import NULL_LABEL

__all__ = ["NULL_EMBEDDING", "check_embeddings", "EmbeddingConditioning", "drop_conditions"]

NULL_EMBEDDING = float("nan")  # every entry of a null row


def check_embeddings(y, batch: int, embed_dim: int, allow_null: bool = False) -> torch.Tensor:
    """Return embeddings as a float tensor of shape ``(batch, embed_dim)``, or raise one line.

    Args:
        y: one embedding ``(E,)`` for the whole batch, or ``(batch, E)`` (tensor, array, list).
        batch: the batch size ``B``.
        embed_dim: ``E``.
        allow_null: also accept rows of NaN (:data:`NULL_EMBEDDING`).

    Raises:
        ValueError: not floats, the wrong shape, or non-finite entries outside null rows.
    """
    try:
        t = torch.as_tensor(y)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"embeddings must be floats of shape (B, {embed_dim}), got {y!r}"
                         ) from None
    if not t.dtype.is_floating_point:
        raise ValueError(f"embeddings must be floats of shape (B, {embed_dim}) (integers are "
                         f"class labels), got dtype {t.dtype}")
    if t.ndim == 1:
        t = t.expand(batch, -1)
    if t.shape != (batch, embed_dim):
        raise ValueError(f"expected one embedding of shape ({embed_dim},) or {batch} of shape "
                         f"({batch}, {embed_dim}), got shape {tuple(t.shape)}")
    if batch and not values_trusted():
        finite = t.isfinite().all(1)
        null = t.isnan().all(1) if allow_null else torch.zeros_like(finite)
        if not bool((finite | null).all()):
            what = "finite (or rows of NaN for null)" if allow_null else "finite"
            raise ValueError(f"embeddings must be {what}")
    return t


class EmbeddingConditioning(nn.Module):
    """``y`` ``(B, E)`` -> a conditioning vector ``(B, C)``: a learnt projection, and a learnt
    null embedding for rows of NaN and for ``y=None``."""

    def __init__(self, embed_dim: int, cond: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(embed_dim, cond), nn.SiLU(), nn.Linear(cond, cond))
        self.null = nn.Parameter(torch.zeros(cond))

    def forward(self, y: torch.Tensor | None, batch: int, dtype: torch.dtype) -> torch.Tensor:
        null = self.null.to(dtype)
        if y is None:
            return null.expand(batch, -1)
        is_null = y.isnan().any(1, keepdim=True)
        e = self.proj(torch.nan_to_num(y, nan=0.0).to(self.null.dtype)).to(dtype)
        return torch.where(is_null, null, e)


def drop_conditions(y: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """``y`` with the samples where ``drop`` ``(B,)`` is True replaced by the null condition:
    :data:`~scoresde.labels.NULL_LABEL` for integer labels, a NaN row for embeddings."""
    if y.dtype.is_floating_point:
        return y.masked_fill(drop.reshape(-1, *[1] * (y.ndim - 1)), NULL_EMBEDDING)
    return y.masked_fill(drop, NULL_LABEL)
