"""A residual MLP for vector data, conditioned on a noise level (and optionally a class label)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..checks import check_choice, check_int, check_number
from ..embeddings import EmbeddingConditioning

__all__ = ["ScoreMLP", "TimeFeatures", "InputFeatures", "conditioning", "check_embed_dim",
           "HIDDEN", "DEPTH",
           "TIME_DIM", "TIME_FEATURES", "TIME_SCALE", "INPUT_SCALE"]

# The MLPs' defaults (ScoreMLP and ClassifierMLP), tuned on the 2D toys
# (docs/benchmarks/training.md): the width and blocks of the residual stream and the noise-level
# features.
HIDDEN, DEPTH, TIME_DIM, TIME_FEATURES, TIME_SCALE = 128, 3, 64, "fourier", 4.0
INPUT_SCALE = 0.3  # of the input's random Fourier features, when there are any


def conditioning(net: nn.Module, c_noise: torch.Tensor, y: torch.Tensor | None,
                 dtype: torch.dtype) -> torch.Tensor:
    """The conditioning vector ``cond(time(c_noise)) + E[y]`` of a network, shape ``(B, C)``.

    ``net`` has noise-level features ``time``, an MLP ``cond`` and, when conditional, a label
    embedding ``label``; the null label (-1) and ``y=None`` add nothing. A network conditioned
    on embeddings ``y`` ``(B, E)`` has ``embed`` instead (an
    :class:`~scoresde.embeddings.EmbeddingConditioning`): null rows and ``y=None`` add its
    learnt null embedding.
    """
    c = net.cond(net.time(c_noise).to(dtype))
    embed = getattr(net, "embed", None)
    if embed is not None:
        return c + embed(y, c.shape[0], c.dtype)
    embedding = getattr(net, "label", None)
    if embedding is None or y is None:
        return c
    keep = (y >= 0).to(c.dtype)[:, None]
    return c + keep * embedding(y.clamp(min=0))


def check_embed_dim(embed_dim: int, num_classes: int) -> int:
    """``embed_dim`` as an int >= 0; a network takes labels or embeddings, not both."""
    embed_dim = check_int("embed_dim", embed_dim, 0)
    if embed_dim and num_classes:
        raise ValueError(f"a network is conditioned on class labels (num_classes = "
                         f"{num_classes}) or on embeddings (embed_dim = {embed_dim}), not both")
    return embed_dim


class TimeFeatures(nn.Module):
    """Features of the scalar noise input ``c`` (shape ``(B,)``) -> ``(B, dim)``.

    ``"fourier"``: ``[sin, cos](2 pi c w)`` with fixed random ``w ~ N(0, scale^2)`` (Tancik et al.;
    score_sde's Gaussian Fourier projection). ``"sinusoidal"``: ``[sin, cos](c f_k)`` with
    frequencies ``f_k`` geometric from 1 to ``scale`` (the transformer's positional encoding).
    """

    def __init__(self, dim: int = 64, kind: str = "fourier", scale: float = 16.0):
        super().__init__()
        if check_int("time_dim", dim, 2) % 2:
            raise ValueError(f"time_dim must be an even integer >= 2, got {dim!r}")
        check_choice("time_features", kind, ("fourier", "sinusoidal"))
        scale = check_number("time_scale", scale, 0, low_open=True)
        if kind == "fourier":
            freqs = 2 * math.pi * scale * torch.randn(dim // 2, generator=torch.Generator()
                                                      .manual_seed(0))
        else:
            freqs = torch.exp(torch.linspace(0, math.log(scale), dim // 2))
        self.register_buffer("freqs", freqs)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        arg = c[:, None].to(self.freqs.dtype) * self.freqs[None]
        return torch.cat([arg.sin(), arg.cos()], dim=1)


class InputFeatures(nn.Module):
    """A flat input and its random Fourier features: ``(B, *event_shape)`` -> ``(B, out_dim)``.

    ``[x, sin(2 pi x W), cos(2 pi x W)]`` with fixed ``W ~ N(0, scale^2)`` of shape ``(dim, k)``
    (Tancik et al. 2020, "Fourier features let networks learn high frequency functions in low
    dimensional domains"). A plain MLP on a 2D input learns sharp structure, such as the edges
    of a checkerboard, only slowly; these features give the first layer a ready basis of
    oscillations. ``W`` is drawn from a fixed seed and saved with the weights. With ``k = 0`` the
    module only flattens and holds nothing, so runs saved before the features existed still load.
    """

    def __init__(self, dim: int, features: int = 0, scale: float = 0.3):
        super().__init__()
        features = check_int("input_features", features, 0)
        scale = check_number("input_scale", scale, 0, low_open=True)
        if features:
            gen = torch.Generator().manual_seed(1)
            self.register_buffer("freqs", 2 * math.pi * scale * torch.randn(dim, features,
                                                                             generator=gen))
        self.out_dim = dim + 2 * features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1)
        if not hasattr(self, "freqs"):
            return x
        arg = x @ self.freqs.to(x.dtype)
        return torch.cat([x, arg.sin(), arg.cos()], dim=1)


class _Block(nn.Module):
    """``h + W2 act(W1 act(h) + E c)``: a pre-activation residual block with conditioning."""

    def __init__(self, hidden: int, cond: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.cond = nn.Linear(cond, hidden)
        self.act = nn.SiLU()

    def forward(self, h, c):
        return h + self.fc2(self.act(self.fc1(self.act(h)) + self.cond(c)))


class ScoreMLP(nn.Module):
    """Residual MLP ``net(x, c_noise, y=None)`` for data of shape ``(B, *event_shape)``.

    The network knows nothing of SDEs: it maps a (preconditioned) input and a scalar noise input
    ``c_noise`` of shape ``(B,)`` to an output of the input's shape. :class:`ScoreModel` turns it
    into a score function. The defaults are the tuned ones that :func:`~scoresde.train` uses
    (docs/benchmarks/training.md): 128 wide, 3 blocks, 64 Fourier features of scale 4 for the noise
    level; about a minute of training on the 2D toys on one CPU thread.

    Args:
        event_shape: shape of one data point (flattened inside), e.g. ``(2,)``.
        hidden: width of the residual stream.
        depth: number of residual blocks.
        time_dim: size of the noise-level features.
        time_features: ``"fourier"`` or ``"sinusoidal"``.
        time_scale: frequency scale of the features (see :class:`TimeFeatures`).
        num_classes: labels ``y`` in ``[0, num_classes)`` are embedded and added to the
            conditioning (the null label -1 adds nothing); 0 for an unconditional network.
        input_features: number of random Fourier features of the input (see
            :class:`InputFeatures`) fed to the first layer beside the input; 0 for none.
        input_scale: frequency scale of those features, for an input of unit variance (0.3 was
            best on checkerboard of 0.2, 0.3, 0.5 and 1; docs/benchmarks/training.md).
        embed_dim: embeddings ``y`` of shape ``(B, embed_dim)`` are projected and added to the
            conditioning (rows of NaN and ``y=None``: a learnt null embedding); 0 for none.
            Exclusive with ``num_classes``.
    """

    def __init__(self, event_shape=(2,), hidden: int = HIDDEN, depth: int = DEPTH,
                 time_dim: int = TIME_DIM, time_features: str = TIME_FEATURES,
                 time_scale: float = TIME_SCALE, num_classes: int = 0, input_features: int = 0,
                 input_scale: float = INPUT_SCALE, embed_dim: int = 0):
        super().__init__()
        self.event_shape = tuple(int(n) for n in event_shape)
        dim = math.prod(self.event_shape)
        if dim < 1:
            raise ValueError(f"ScoreMLP needs a non-empty event_shape, got {event_shape!r}")
        hidden, depth = check_int("hidden", hidden, 1), check_int("depth", depth, 0)
        num_classes = check_int("num_classes", num_classes, 0)
        self.num_classes = int(num_classes)
        self.embed_dim = check_embed_dim(embed_dim, num_classes)
        self._config = dict(event_shape=list(self.event_shape), hidden=hidden, depth=depth,
                            time_dim=time_dim, time_features=time_features,
                            time_scale=time_scale, num_classes=num_classes,
                            input_features=input_features, input_scale=input_scale,
                            embed_dim=self.embed_dim)
        self.time = TimeFeatures(time_dim, time_features, time_scale)
        cond = hidden
        self.cond = nn.Sequential(nn.Linear(time_dim, cond), nn.SiLU(), nn.Linear(cond, cond))
        self.label = nn.Embedding(num_classes, cond) if num_classes else None
        self.embed = EmbeddingConditioning(self.embed_dim, cond) if self.embed_dim else None
        self.features = InputFeatures(dim, input_features, input_scale)
        self.inp = nn.Linear(self.features.out_dim, hidden)
        self.blocks = nn.ModuleList(_Block(hidden, cond) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.out[1].weight)
        nn.init.zeros_(self.out[1].bias)

    def config(self) -> dict:
        """The keyword arguments that rebuild this network, plus ``name``."""
        return {"name": "mlp", **self._config}

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor,
                y: torch.Tensor | None = None) -> torch.Tensor:
        """Map ``x`` of shape ``(B, *event_shape)`` and ``c_noise`` ``(B,)`` to ``x``'s shape."""
        c = conditioning(self, c_noise, y, x.dtype)
        h = self.inp(self.features(x))
        for block in self.blocks:
            h = block(h, c)
        return self.out(h).reshape(x.shape)
