"""FIR resampling of images by a factor of 2 (StyleGAN2's ``upfirdn2d``, as NCSN++ uses it).

A separable filter of taps ``k`` (``[1, 3, 3, 1]`` in the paper's NCSN++) is normalised to sum 1
in 2D. Downsampling filters, then keeps every second pixel; upsampling inserts a zero after every
pixel, then filters with the kernel times 4 (so a constant image stays constant). Pixels outside
the image count as zeros, with the padding that keeps the result aligned with the input grid.
Each function takes ``(B, C, H, W)`` and acts on every channel alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["fir_kernel", "upfirdn", "fir_downsample", "fir_upsample", "fir_conv_downsample"]


def fir_kernel(taps) -> torch.Tensor:
    """The 2D kernel ``outer(k, k) / sum`` of separable taps ``k``, shape ``(len(k), len(k))``."""
    try:
        if isinstance(taps, (str, bytes)):
            raise TypeError
        k = torch.as_tensor([float(v) for v in taps], dtype=torch.float32)
    except (TypeError, ValueError):  # not a sequence of numbers
        k = torch.zeros(0)
    if k.ndim != 1 or len(k) < 2 or not torch.isfinite(k).all() or float(k.sum()) <= 0:
        raise ValueError(f"fir_kernel must be at least 2 finite taps with a positive sum, got "
                         f"{taps!r}")
    k2 = torch.outer(k, k)
    return k2 / k2.sum()


def upfirdn(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
            pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Insert ``up - 1`` zeros after every pixel, zero-pad ``pad = (before, after)`` on both
    axes, convolve with ``kernel`` (a true convolution: the kernel flipped), keep every
    ``down``-th pixel. ``(B, C, H, W)`` -> ``(B, C, H', W')``."""
    b, c, h, w = x.shape
    if up > 1:
        x = F.pad(x.reshape(b, c, h, 1, w, 1), (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(b, c, h * up, w * up)
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    weight = kernel.flip(0, 1).to(x.dtype)[None, None].expand(c, 1, *kernel.shape)
    return F.conv2d(x, weight, stride=down, groups=c)


def fir_downsample(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Filter with ``kernel`` and halve the resolution."""
    p = kernel.shape[0] - 2
    return upfirdn(x, kernel, down=2, pad=((p + 1) // 2, p // 2))


def fir_upsample(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Double the resolution: zeros inserted, filtered with ``4 kernel``."""
    p = kernel.shape[0] - 2
    return upfirdn(x, kernel * 4, up=2, pad=((p + 1) // 2 + 1, p // 2))


def fir_conv_downsample(x: torch.Tensor, kernel: torch.Tensor, weight: torch.Tensor,
                        bias: torch.Tensor | None = None) -> torch.Tensor:
    """Filter with ``kernel``, then a convolution of ``weight`` ``(C_out, C, k, k)`` (``k`` odd)
    with stride 2: the fused filtered downsampling convolution of StyleGAN2."""
    p = kernel.shape[0] - 2 + weight.shape[-1] - 1
    x = upfirdn(x, kernel, pad=((p + 1) // 2, p // 2))
    return F.conv2d(x, weight, bias, stride=2)
