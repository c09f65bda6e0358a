"""DDPM++, the U-Net of Song et al. (2021), "Score-based generative modeling through SDEs".

The network of their DDPM++ configs (``ncsnpp`` with BigGAN residual blocks and no progressive
paths): a noise embedding (sinusoidal "positional" or random Fourier features) and a two-layer
MLP; per resolution ``num_res_blocks`` BigGAN-style residual blocks (GroupNorm, swish, dropout,
the noise added as a per-channel bias) with self-attention at the resolutions asked for; a
residual block that halves the resolution (average pooling inside the block) between levels;
a middle of block, attention, block; a mirrored decoder whose blocks take the encoder's outputs
concatenated, ending in GroupNorm, swish and a 3x3 convolution. Every residual sum is divided by
``sqrt(2)`` (skip rescaling). Weights start as the reference's: DDPM's variance scaling
(fan-average, uniform), with the last layer of each residual branch and of the network scaled by
``init_scale`` (0: almost zero).

The same class is the paper's NCSN++ of its CIFAR-10 continuous configs with two keywords:
``fir_kernel`` (FIR up- and downsampling inside the residual blocks, StyleGAN2's, instead of
nearest neighbour and 2x2 averages) and ``progressive_input="residual"`` (the input image is
carried down a pyramid of filtered, strided convolutions, each added to the encoder's output
after a downsampling block, ``(pyramid + h) / sqrt(2)``); with a Fourier noise embedding.

The layers are created in the reference's order with its tensor shapes, so that its checkpoints
(``all_modules.N.*``) map onto :meth:`DDPMpp.state_dict` one to one, in order
(:func:`~scoresde.models.from_score_sde`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_choice, check_int, check_number
from ..embeddings import EmbeddingConditioning
from .mlp import check_embed_dim, conditioning
from .resample import fir_conv_downsample, fir_downsample, fir_upsample
from .resample import fir_kernel as _fir_2d

__all__ = ["DDPMpp", "EMBEDDINGS", "PROGRESSIVE_INPUTS"]

EMBEDDINGS = ("positional", "fourier")
PROGRESSIVE_INPUTS = ("none", "residual")
_SKIP = 1 / math.sqrt(2)


def _variance_scaling_(weight: torch.Tensor, scale: float = 1.0, fan_in_axis: int = 1,
                      fan_out_axis: int = 0) -> torch.Tensor:
    """Fill ``weight`` uniformly with variance ``scale / fan_avg`` (DDPM's initialisation);
    ``scale = 0`` means a tiny 1e-10, as in the reference."""
    scale = scale or 1e-10
    receptive = weight[0, 0].numel() if weight.ndim > 2 else 1
    fan_avg = (weight.shape[fan_in_axis] + weight.shape[fan_out_axis]) * receptive / 2
    bound = math.sqrt(3 * scale / fan_avg)
    with torch.no_grad():
        return weight.uniform_(-bound, bound)


def _conv(c_in: int, c_out: int, kernel: int = 3, init_scale: float = 1.0) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2)
    _variance_scaling_(conv.weight, init_scale)
    nn.init.zeros_(conv.bias)
    return conv


def _linear(c_in: int, c_out: int) -> nn.Linear:
    lin = nn.Linear(c_in, c_out)
    _variance_scaling_(lin.weight)
    nn.init.zeros_(lin.bias)
    return lin


def _norm(ch: int) -> nn.GroupNorm:
    groups = min(ch // 4, 32)
    if groups < 1 or ch % groups:
        raise ValueError(f"DDPMpp needs channel counts that GroupNorm({groups}) divides "
                         f"(multiples of 4, and of 32 from 128 on), got {ch}; change nf or ch_mult")
    return nn.GroupNorm(groups, ch, eps=1e-6)


class _ChannelLinear(nn.Module):
    """A 1x1 linear map over the channels, weight of shape ``(C_in, C_out)`` (the reference's
    ``NIN``)."""

    def __init__(self, c_in: int, c_out: int, init_scale: float = 0.1):
        super().__init__()
        self.weight = nn.Parameter(_variance_scaling_(torch.empty(c_in, c_out), init_scale, 0, 1))
        self.bias = nn.Parameter(torch.zeros(c_out))

    def forward(self, x):
        return torch.einsum("bchw,cd->bdhw", x, self.weight) + self.bias[:, None, None]


class _Attention(nn.Module):
    """Single-head self-attention over the pixels, ``(x + out(attn(q, k, v))) / sqrt(2)``."""

    def __init__(self, ch: int, init_scale: float, skip_rescale: bool):
        super().__init__()
        self.norm = _norm(ch)
        self.q, self.k, self.v = (_ChannelLinear(ch, ch) for _ in range(3))
        self.out = _ChannelLinear(ch, ch, init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x, c=None):
        b, ch, hgt, wid = x.shape
        h = self.norm(x)
        q, k, v = (f(h).reshape(b, 1, ch, hgt * wid).transpose(2, 3) for f in (self.q, self.k,
                                                                                self.v))
        h = F.scaled_dot_product_attention(q, k, v).transpose(2, 3).reshape(b, ch, hgt, wid)
        h = x + self.out(h)
        return h * _SKIP if self.skip_rescale else h


class _ResBlock(nn.Module):
    """BigGAN-style residual block; ``resample`` ``"up"`` / ``"down"`` doubles / halves the
    resolution of both paths (nearest neighbour / 2x2 average, or the FIR filter ``fir``)
    before the first convolution."""

    def __init__(self, c_in: int, c_out: int, cond: int, dropout: float, init_scale: float,
                 skip_rescale: bool, resample: str | None = None, fir=None):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), _conv(c_in, c_out)
        self.emb = _linear(cond, c_out)
        self.norm2, self.dropout = _norm(c_out), nn.Dropout(dropout)
        self.conv2 = _conv(c_out, c_out, init_scale=init_scale)
        self.skip = _conv(c_in, c_out, 1) if c_in != c_out or resample else None
        self.resample, self.skip_rescale = resample, skip_rescale
        self.register_buffer("fir", _fir_2d(fir) if fir is not None and resample else None,
                             persistent=False)

    def forward(self, x, c=None):
        h = F.silu(self.norm1(x))
        if self.resample == "up":
            h, x = ((F.interpolate(z, scale_factor=2.0, mode="nearest") if self.fir is None
                     else fir_upsample(z, self.fir)) for z in (h, x))
        elif self.resample == "down":
            h, x = ((F.avg_pool2d(z, 2) if self.fir is None else fir_downsample(z, self.fir))
                    for z in (h, x))
        h = self.conv1(h)
        if c is not None:
            h = h + self.emb(F.silu(c))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        x = x if self.skip is None else self.skip(x)
        return (x + h) * _SKIP if self.skip_rescale else x + h


class _InputPyramid(nn.Module):
    """One step down the input pyramid: ``(down(pyramid) + h) / sqrt(2)``, ``down`` a filtered
    3x3 convolution of stride 2 from ``c_in`` to ``c_out`` channels (NCSN++'s "residual"
    progressive input)."""

    def __init__(self, c_in: int, c_out: int, fir, skip_rescale: bool):
        super().__init__()
        self.weight = nn.Parameter(_variance_scaling_(torch.empty(c_out, c_in, 3, 3)))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.register_buffer("fir", _fir_2d(fir), persistent=False)
        self.skip_rescale = skip_rescale

    def forward(self, pyramid, h):
        h = fir_conv_downsample(pyramid, self.fir, self.weight, self.bias) + h
        return h * _SKIP if self.skip_rescale else h


class _NoiseEmbedding(nn.Module):
    """``[sin, cos](c f)`` of the noise input ``c`` ``(B,)``: ``nf // 2`` geometric frequencies
    from 1 to 1e-4 (``"positional"``, DDPM's) or ``[sin, cos](2 pi c W)`` with ``nf`` fixed
    ``W ~ N(0, scale^2)`` (``"fourier"``, output ``2 nf``)."""

    def __init__(self, kind: str, nf: int, scale: float):
        super().__init__()
        self.kind = kind
        if kind == "fourier":
            gen = torch.Generator().manual_seed(0)
            self.register_buffer("W", torch.randn(nf, generator=gen) * scale)
            self.dim = 2 * nf
        else:
            half = nf // 2  # the reference's rounding: exp(k * -(log(1e4) / (half - 1)))
            self.register_buffer("freqs", torch.exp(torch.arange(half, dtype=torch.float32)
                                                    * -(math.log(1e4) / (half - 1))),
                                 persistent=False)
            self.dim = nf

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        if self.kind == "fourier":
            return _sin_cos(c[:, None].to(self.W.dtype) * self.W[None] * (2 * math.pi))
        return _sin_cos(c[:, None].to(self.freqs.dtype) * self.freqs[None])


def _sin_cos(arg: torch.Tensor) -> torch.Tensor:
    return torch.cat([arg.sin(), arg.cos()], dim=1)


class DDPMpp(nn.Module):
    """DDPM++ ``net(x, c_noise, y=None)`` for images ``x`` of shape ``(B, C, H, W)``.

    The defaults are the paper's CIFAR-10 DDPM++ (continuous time); the small presets of
    :data:`~scoresde.models.NET_PRESETS` shrink it for a CPU. ``H`` and ``W`` must be divisible by
    ``2 ** (len(ch_mult) - 1)`` and each of ``attn_resolutions`` must be one of the network's
    resolutions ``H, H / 2, ...``.

    Args:
        event_shape: ``(C, H, W)`` of one image.
        nf: base number of channels (the noise embedding's size too).
        ch_mult: channel multiplier per resolution; each after the first halves ``H`` and ``W``.
        num_res_blocks: residual blocks per resolution in the encoder (one more in the decoder).
        attn_resolutions: the heights at which self-attention follows the residual blocks.
        dropout: dropout rate inside the residual blocks (active in training mode only).
        embedding_type: ``"positional"`` (sinusoidal) or ``"fourier"`` (random features of scale
            ``fourier_scale``) embedding of ``c_noise``.
        fourier_scale: standard deviation of the Fourier frequencies.
        init_scale: scale of the initial weights of each branch's last layer (0: about 1e-5).
        skip_rescale: divide every residual sum by ``sqrt(2)``.
        fir_kernel: taps of the FIR filter of the resampling blocks (NCSN++: ``[1, 3, 3, 1]``);
            None for nearest-neighbour upsampling and 2x2 averages (DDPM++).
        progressive_input: ``"residual"`` adds the input pyramid after every downsampling
            block (NCSN++; needs ``fir_kernel``); ``"none"`` for none.
        noise_conditional: condition on ``c_noise`` at all (the reference's ``conditional``);
            ``False`` gives a network that ignores the noise level, and takes no labels.
        num_classes: labels ``y`` in ``[0, num_classes)`` are embedded and added to the noise
            embedding (the null label -1 adds nothing); 0 for an unconditional network.
        embed_dim: embeddings ``y`` ``(B, embed_dim)`` instead of labels (see
            :class:`~scoresde.ScoreMLP`); 0 for none.
    """

    def __init__(self, event_shape=(3, 32, 32), nf: int = 128, ch_mult=(1, 2, 2, 2),
                 num_res_blocks: int = 4, attn_resolutions=(16,), dropout: float = 0.1,
                 embedding_type: str = "positional", fourier_scale: float = 16.0,
                 init_scale: float = 0.0, skip_rescale: bool = True,
                 noise_conditional: bool = True, num_classes: int = 0, fir_kernel=None,
                 progressive_input: str = "none", embed_dim: int = 0):
        super().__init__()
        event_shape, ch_mult, attn_resolutions = _check_layout(event_shape, nf, ch_mult,
                                                               attn_resolutions)
        num_res_blocks = check_int("num_res_blocks", num_res_blocks, 1)
        dropout = check_number("dropout", dropout, 0, 1, high_open=True)
        check_choice("embedding_type", embedding_type, EMBEDDINGS)
        fourier_scale = check_number("fourier_scale", fourier_scale, 0, low_open=True)
        init_scale = check_number("init_scale", init_scale, 0)
        self.num_classes = check_int("num_classes", num_classes, 0)
        check_choice("progressive_input", progressive_input, PROGRESSIVE_INPUTS)
        if fir_kernel is not None:
            _fir_2d(fir_kernel)  # checks the taps
            fir_kernel = [float(v) for v in fir_kernel]
        if progressive_input != "none" and fir_kernel is None:
            raise ValueError("progressive_input='residual' needs a fir_kernel (NCSN++: "
                             "[1, 3, 3, 1])")
        self.embed_dim = check_embed_dim(embed_dim, self.num_classes)
        if (self.num_classes or self.embed_dim) and not noise_conditional:
            raise ValueError("DDPMpp takes labels only with noise_conditional=True")
        self._config = dict(event_shape=list(event_shape), nf=nf, ch_mult=list(ch_mult),
                            num_res_blocks=num_res_blocks, attn_resolutions=attn_resolutions,
                            dropout=dropout, embedding_type=embedding_type,
                            fourier_scale=fourier_scale, init_scale=init_scale,
                            skip_rescale=bool(skip_rescale),
                            noise_conditional=bool(noise_conditional),
                            num_classes=self.num_classes, fir_kernel=fir_kernel,
                            progressive_input=progressive_input,
                            embed_dim=self.embed_dim)
        cond = 4 * nf
        self.time = _NoiseEmbedding(embedding_type, nf, fourier_scale)
        self.cond = (nn.Sequential(_linear(self.time.dim, cond), nn.SiLU(), _linear(cond, cond))
                     if noise_conditional else None)
        block = dict(cond=cond, dropout=dropout, init_scale=init_scale,
                     skip_rescale=bool(skip_rescale), fir=fir_kernel)
        pyramid = (dict(c_in=event_shape[0], fir=fir_kernel, skip_rescale=bool(skip_rescale))
                   if progressive_input == "residual" else None)
        attn = dict(init_scale=init_scale, skip_rescale=bool(skip_rescale))
        self.inp = _conv(event_shape[0], nf)
        self.down, self.mid, self.up = self._layers(event_shape[1], nf, ch_mult, num_res_blocks,
                                                    attn_resolutions, block, attn, pyramid)
        self.out = nn.Sequential(_norm(nf * ch_mult[0]), nn.SiLU(),
                                 _conv(nf * ch_mult[0], event_shape[0], init_scale=init_scale))
        self.label = nn.Embedding(self.num_classes, cond) if self.num_classes else None
        self.embed = EmbeddingConditioning(self.embed_dim, cond) if self.embed_dim else None

    @staticmethod
    def _layers(res, nf, ch_mult, num_res_blocks, attn_resolutions, block, attn, pyramid):
        """The encoder's and decoder's stages (each a list of modules run in turn; the output of
        every encoder stage is a skip, and every decoder stage without ``resample`` takes one)
        and the middle, in the reference's order. With an input ``pyramid`` (the keywords of
        its first step) every downsampling stage ends in its next step."""
        down, chans, c_cur = nn.ModuleList(), [nf], nf
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                stage = [_ResBlock(c_cur, nf * mult, **block)]
                c_cur = nf * mult
                stage += [_Attention(c_cur, **attn)] if res in attn_resolutions else []
                down.append(nn.ModuleList(stage))
                chans.append(c_cur)
            if level < len(ch_mult) - 1:
                stage = [_ResBlock(c_cur, c_cur, resample="down", **block)]
                if pyramid is not None:
                    stage.append(_InputPyramid(c_out=c_cur, **pyramid))
                    pyramid = dict(pyramid, c_in=c_cur)
                down.append(nn.ModuleList(stage))
                chans.append(c_cur)
                res //= 2
        mid = nn.ModuleList([_ResBlock(c_cur, c_cur, **block), _Attention(c_cur, **attn),
                             _ResBlock(c_cur, c_cur, **block)])
        up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                up.append(nn.ModuleList([_ResBlock(c_cur + chans.pop(), nf * mult, **block)]))
                c_cur = nf * mult
            if res in attn_resolutions:  # once per level, after its last block
                up[-1].append(_Attention(c_cur, **attn))
            if level > 0:
                up.append(nn.ModuleList([_ResBlock(c_cur, c_cur, resample="up", **block)]))
                res *= 2
        return down, mid, up

    def config(self) -> dict:
        """The keyword arguments that rebuild this network, plus ``name``."""
        return {"name": "ddpmpp", **self._config}

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor,
                y: torch.Tensor | None = None) -> torch.Tensor:
        """Map images ``x`` ``(B, C, H, W)`` and ``c_noise`` ``(B,)`` to ``(B, C, H, W)``."""
        c = conditioning(self, c_noise, y, x.dtype) if self.cond is not None else None
        h, pyramid = self.inp(x), x
        skips = [h]
        for stage in self.down:
            if isinstance(stage[-1], _InputPyramid):
                h = pyramid = stage[-1](pyramid, _run(stage[:-1], h, c))
            else:
                h = _run(stage, h, c)
            skips.append(h)
        h = _run(self.mid, h, c)
        for stage in self.up:
            h = _run(stage, h if stage[0].resample else torch.cat([h, skips.pop()], dim=1), c)
        return self.out(h)


def _run(stage: nn.ModuleList, h: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    for layer in stage:
        h = layer(h, c)
    return h


def _check_layout(event_shape, nf, ch_mult, attn_resolutions):
    """``(event_shape, ch_mult, attn_resolutions)`` as tuples and a list of ints, after checking
    that the image fits the levels and the attention resolutions exist."""
    event_shape = tuple(int(n) for n in event_shape)
    check_int("nf", nf, 2)
    if nf % 2:
        raise ValueError(f"nf must be an even integer >= 2, got {nf!r}")
    ch_mult = tuple(check_int("ch_mult entries", m, 1) for m in ch_mult)
    if not ch_mult:
        raise ValueError("ch_mult must name at least one resolution")
    factor = 2 ** (len(ch_mult) - 1)
    if len(event_shape) != 3 or event_shape[1] % factor or event_shape[2] % factor:
        raise ValueError(f"DDPMpp with {len(ch_mult)} levels (ch_mult) needs images (C, H, W) "
                         f"with H and W divisible by {factor}, got {event_shape}")
    resolutions = [event_shape[1] // 2**i for i in range(len(ch_mult))]
    attn = sorted({int(r) for r in attn_resolutions}, reverse=True)
    missing = [r for r in attn if r not in resolutions]
    if missing:
        raise ValueError(f"attn_resolutions {missing} are not resolutions of this network on "
                         f"{event_shape[1]}x{event_shape[2]} images ({resolutions}); choose "
                         "among those")
    return event_shape, ch_mult, attn
