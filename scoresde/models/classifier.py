"""Noise-conditional classifiers ``p(y | x_t, t)`` for classifier guidance (Dhariwal & Nichol 2021).

The networks are the score networks' families ending in class logits: :class:`ClassifierMLP`
reuses ScoreMLP's residual blocks, :class:`ClassifierUNet` the U-Net's encoder (residual blocks,
downsampling, attention in the middle) with global average pooling. :class:`NoiseClassifier`
turns one into a classifier of noisy data for a given SDE, scaling the input as
:class:`~scoresde.models.ScoreModel` does.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..checks import check_int
from ..utils import append_dims
from .mlp import (DEPTH, HIDDEN, INPUT_SCALE, TIME_DIM, TIME_FEATURES, TIME_SCALE,
                  InputFeatures, TimeFeatures, _Block, conditioning)
from .score_model import Preconditioned
from .unet import _Attention, _ResBlock, _norm

__all__ = ["ClassifierMLP", "ClassifierUNet", "NoiseClassifier"]


class ClassifierMLP(nn.Module):
    """Residual MLP ``net(x, c_noise) -> logits (B, num_classes)`` for ``x`` ``(B, *event_shape)``.

    Keywords as :class:`~scoresde.models.ScoreMLP`, whose blocks it shares; the head maps the
    residual stream to ``num_classes`` logits.
    """

    def __init__(self, event_shape=(2,), num_classes: int = 2, hidden: int = HIDDEN,
                 depth: int = DEPTH, time_dim: int = TIME_DIM, time_features: str = TIME_FEATURES,
                 time_scale: float = TIME_SCALE, input_features: int = 0,
                 input_scale: float = INPUT_SCALE):
        super().__init__()
        self.event_shape = tuple(int(n) for n in event_shape)
        self.num_classes = check_int("a classifier's num_classes", num_classes, low=2)
        self._config = dict(event_shape=list(self.event_shape), num_classes=num_classes,
                            hidden=hidden, depth=depth, time_dim=time_dim,
                            time_features=time_features, time_scale=time_scale,
                            input_features=input_features, input_scale=input_scale)
        self.time = TimeFeatures(time_dim, time_features, time_scale)
        self.cond = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.features = InputFeatures(math.prod(self.event_shape), input_features, input_scale)
        self.inp = nn.Linear(self.features.out_dim, hidden)
        self.blocks = nn.ModuleList(_Block(hidden, hidden) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, num_classes))

    def config(self) -> dict:
        """The keyword arguments that rebuild this network, plus ``name``."""
        return {"name": "mlp_classifier", **self._config}

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` of ``x`` ``(B, *event_shape)`` at noise input ``(B,)``."""
        c = conditioning(self, c_noise, None, x.dtype)
        h = self.inp(self.features(x))
        for block in self.blocks:
            h = block(h, c)
        return self.out(h)


class ClassifierUNet(nn.Module):
    """The U-Net's encoder ``net(x, c_noise) -> logits (B, num_classes)`` for ``(B, C, H, W)``.

    Per resolution ``num_res_blocks`` residual blocks (conditioned on the noise level), strided
    downsampling between resolutions, a middle block with self-attention, then GroupNorm, SiLU,
    global average pooling and a linear head.
    """

    def __init__(self, event_shape=(1, 8, 8), num_classes: int = 10, ch: int = 32,
                 ch_mult=(1, 2), num_res_blocks: int = 1, time_dim: int = 64):
        super().__init__()
        event_shape = tuple(int(n) for n in event_shape)
        if len(event_shape) != 3:
            raise ValueError(f"ClassifierUNet needs event_shape (C, H, W), got {event_shape}")
        self.num_classes = check_int("a classifier's num_classes", num_classes, low=2)
        self._config = dict(event_shape=list(event_shape), num_classes=num_classes, ch=ch,
                            ch_mult=list(ch_mult), num_res_blocks=num_res_blocks,
                            time_dim=time_dim)
        cond = 4 * ch
        self.time = TimeFeatures(time_dim, TIME_FEATURES, TIME_SCALE)
        self.cond = nn.Sequential(nn.Linear(time_dim, cond), nn.SiLU(), nn.Linear(cond, cond))
        self.inp = nn.Conv2d(event_shape[0], ch, 3, padding=1)
        layers, c_cur = [], ch
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                layers.append(_ResBlock(c_cur, ch * mult, cond))
                c_cur = ch * mult
            if level < len(ch_mult) - 1:
                layers.append(nn.Conv2d(c_cur, c_cur, 3, stride=2, padding=1))
        self.down = nn.ModuleList(layers)
        self.mid = nn.ModuleList([_ResBlock(c_cur, c_cur, cond), _Attention(c_cur)])
        self.out = nn.Sequential(_norm(c_cur), nn.SiLU())
        self.head = nn.Linear(c_cur, num_classes)

    def config(self) -> dict:
        """The keyword arguments that rebuild this network, plus ``name``."""
        return {"name": "unet_classifier", **self._config}

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` of images ``x`` ``(B, C, H, W)`` at noise input ``(B,)``."""
        c = conditioning(self, c_noise, None, x.dtype)
        h = self.inp(x)
        for layer in list(self.down) + list(self.mid):
            h = layer(h) if isinstance(layer, nn.Conv2d) else layer(h, c)
        return self.head(self.out(h).mean(dim=(2, 3)))


class NoiseClassifier(Preconditioned):
    """A classifier of noisy data, ``model(x, t) -> logits (B, K)``, from a network and an SDE.

    With ``x_t = m x_0 + s z`` the network sees ``c_in x`` with ``c_in = 1 / sqrt(m^2
    sigma_data^2 + s^2)`` (unit variance at every ``t``) and the noise input ``c_noise = log(s /
    m) / 4``, as in :class:`~scoresde.models.ScoreModel`. ``log_softmax`` of the logits is
    ``log p(y | x_t, t)``; its gradient in ``x`` is what classifier guidance adds to the score.

    Args:
        net: a module ``net(x, c_noise)`` returning logits ``(B, K)``.
        sde: the forward SDE.
        sigma_data: standard deviation of the data entries.
    """

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """Logits ``(B, K)`` of ``x`` ``(B, *dims)`` at times ``t`` ``(B,)``."""
        t = self.sde.check_time(t, x)
        c_in, _, _, c_noise, _ = self.preconditioning(t)
        return self.net(append_dims(c_in, x.ndim) * x, c_noise)
