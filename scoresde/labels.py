"""Class labels: the null label of classifier-free guidance and one check for every entry point.

A label is an integer in ``[0, K)``; :data:`NULL_LABEL` (-1) stands for "no label". Networks embed
the null label as zero, exactly what they do when called with ``y=None``, so one network holds
the conditional scores and the unconditional one (Ho & Salimans 2021).
"""

from __future__ import annotations

import numpy as np
import torch

from .checks import values_trusted

__all__ = ["NULL_LABEL", "check_labels", "chunk_labels"]

NULL_LABEL = -1


def check_labels(y, batch: int, num_classes: int | None = None,
                 allow_null: bool = False) -> torch.Tensor:
    """Return labels as a long tensor of shape ``(batch,)``, or raise a one-line ``ValueError``.

    Args:
        y: an integer (the same label for the whole batch), or integers of shape ``(batch,)``
            (a tensor, array or list).
        batch: the batch size ``B``.
        num_classes: ``K``; labels must lie in ``[0, K)`` (not checked when None).
        allow_null: also accept :data:`NULL_LABEL`.

    Returns:
        Labels of shape ``(batch,)``, dtype ``torch.long``.
    """
    try:
        t = torch.as_tensor(y)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"labels must be integers or a (B,) integer tensor, got {y!r}") from None
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:  # True too
        raise ValueError(f"labels must be integers, got dtype {t.dtype}")
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"expected one label or {batch} labels (one per sample), got shape "
                         f"{tuple(t.shape)}")
    t = t.long()
    low = NULL_LABEL if allow_null else 0
    bad = t < low
    if num_classes is not None:
        bad = bad | (t >= num_classes)
    if batch and not values_trusted() and bool(bad.any()):
        accepted = f"[0, {num_classes})" if num_classes is not None else ">= 0"
        null = f" or {NULL_LABEL} (null)" if allow_null else ""
        raise ValueError(f"labels must lie in {accepted}{null}; got {int(t[bad][0])}")
    return t


def chunk_labels(label, start: int, stop: int, num_classes: int) -> torch.Tensor | None:
    """The class labels of samples ``start:stop`` for ``label``: None, an integer class (every
    sample), or ``"all"`` (sample ``i`` of class ``i % num_classes``, as ``scoresde sample
    --label all``, so every class has its share of the samples).

    Raises:
        ValueError: a label that is not None, ``"all"`` or a class in ``[0, num_classes)``, or
            any label for an unconditional model (``num_classes`` 0).
    """
    if label is None:
        return None
    if not num_classes:
        raise ValueError(f"label={label!r} needs a class-conditional model; this one is "
                         "unconditional (train it with conditional=True on labelled data)")
    if isinstance(label, str) and label == "all":
        return torch.arange(start, stop) % num_classes
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) \
            or not 0 <= label < num_classes:
        raise ValueError(f"label must be None, 'all' or a class in [0, {num_classes}), "
                         f"got {label!r}")
    return torch.full((stop - start,), int(label))
