"""Two-sample statistics to judge samples against draws from the target."""

from __future__ import annotations

import torch

__all__ = ["energy_distance"]


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Squared energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` between two samples.

    Unbiased (U-statistic) within-sample terms, so it is centred near 0 when both samples come
    from one distribution; it is 0 in expectation exactly then (Szekely & Rizzo 2013).

    Args:
        x: ``(N, *dims)`` samples; y: ``(M, *dims)`` samples (flattened per sample), N, M >= 2.

    Returns:
        The statistic, a float.
    """
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    y = y.reshape(y.shape[0], -1).to(torch.float64)
    if x.shape[1] != y.shape[1] or x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(f"need two samples of >= 2 points of one dimension, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    n, m = x.shape[0], y.shape[0]
    xy = torch.cdist(x, y).mean()
    xx = torch.cdist(x, x).sum() / (n * (n - 1))
    yy = torch.cdist(y, y).sum() / (m * (m - 1))
    return float(2 * xy - xx - yy)
