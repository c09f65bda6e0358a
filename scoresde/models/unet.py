"""A small U-Net for images (residual blocks, GroupNorm, self-attention at low resolution).

The layout follows DDPM/DDPM++ at small scale: per resolution ``num_res_blocks`` residual blocks
conditioned on the noise level (and label), downsampling between resolutions, self-attention at
the resolutions in ``attn_resolutions``, and a mirrored decoder with skip connections.
"""

from __future__ import annotations

import torch
from torch import nn

from ..checks import check_int
from ..embeddings import EmbeddingConditioning
from .mlp import TIME_FEATURES, TIME_SCALE, TimeFeatures, check_embed_dim, conditioning

__all__ = ["UNet"]


def _norm(ch: int) -> nn.GroupNorm:
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if ch % g == 0 and ch // g >= 2 or g == 1)
    return nn.GroupNorm(groups, ch)


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, cond: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(cond, c_out)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.act = nn.SiLU()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x, c):
        h = self.conv1(self.act(self.norm1(x)))
        h = h + self.emb(c)[:, :, None, None]
        h = self.conv2(self.act(self.norm2(h)))
        return self.skip(x) + h


class _Attention(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.norm = _norm(ch)
        self.attn = nn.MultiheadAttention(ch, num_heads=1, batch_first=True)

    def forward(self, x, c=None):
        b, ch, hgt, wid = x.shape
        h = self.norm(x).reshape(b, ch, hgt * wid).transpose(1, 2)
        h, _ = self.attn(h, h, h, need_weights=False)
        return x + h.transpose(1, 2).reshape(b, ch, hgt, wid)


class UNet(nn.Module):
    """U-Net ``net(x, c_noise, y=None)`` for images ``x`` of shape ``(B, C, H, W)``.

    ``H`` and ``W`` must be divisible by ``2 ** (len(ch_mult) - 1)``.

    Args:
        event_shape: ``(C, H, W)`` of one image.
        ch: base number of channels.
        ch_mult: channel multiplier per resolution; each after the first halves ``H`` and ``W``.
        num_res_blocks: residual blocks per resolution.
        attn_resolutions: spatial sizes (``H``) at which self-attention is applied.
        time_dim: size of the noise-level features; num_classes: 0 for unconditional (labels
            ``y`` in ``[0, num_classes)``, the null label -1 adds nothing).
        embed_dim: embeddings ``y`` ``(B, embed_dim)`` instead of labels (see
            :class:`~scoresde.ScoreMLP`); 0 for none.
        cond_channels: a super-resolution network (:mod:`scoresde.cascade`): ``y`` is
            ``(B, cond_channels + 1, H, W)``, the upsampled low-resolution image as extra input
            channels and a constant channel holding its augmentation level, embedded and added
            to the conditioning; 0 for none. Exclusive with labels and embeddings.
    """

    def __init__(self, event_shape=(1, 8, 8), ch: int = 32, ch_mult=(1, 2),
                 num_res_blocks: int = 2, attn_resolutions=(4,), time_dim: int = 64,
                 num_classes: int = 0, embed_dim: int = 0, cond_channels: int = 0):
        super().__init__()
        event_shape = tuple(int(n) for n in event_shape)
        ch_mult = tuple(int(m) for m in ch_mult)
        factor = 2 ** (len(ch_mult) - 1)
        if len(event_shape) != 3 or event_shape[1] % factor or event_shape[2] % factor:
            raise ValueError("UNet needs event_shape (C, H, W) with H and W divisible by "
                             f"{factor}, got {event_shape}")
        self._config = dict(event_shape=list(event_shape), ch=ch, ch_mult=list(ch_mult),
                            num_res_blocks=num_res_blocks, attn_resolutions=list(attn_resolutions),
                            time_dim=time_dim, num_classes=num_classes)
        cond, self.num_classes = 4 * ch, int(num_classes)
        self.embed_dim = self._config["embed_dim"] = check_embed_dim(embed_dim, num_classes)
        self.cond_channels = self._config["cond_channels"] = check_int("cond_channels",
                                                                       cond_channels, 0)
        if self.cond_channels and (num_classes or self.embed_dim):
            raise ValueError("a super-resolution UNet (cond_channels > 0) takes no labels or "
                             "embeddings")
        self.time = TimeFeatures(time_dim, TIME_FEATURES, TIME_SCALE)
        self.cond = nn.Sequential(nn.Linear(time_dim, cond), nn.SiLU(), nn.Linear(cond, cond))
        self.label = nn.Embedding(num_classes, cond) if num_classes else None
        self.embed = EmbeddingConditioning(self.embed_dim, cond) if self.embed_dim else None
        self.aug = (nn.Sequential(TimeFeatures(time_dim, TIME_FEATURES, TIME_SCALE),
                                  nn.Linear(time_dim, cond), nn.SiLU(), nn.Linear(cond, cond))
                    if self.cond_channels else None)
        self.inp = nn.Conv2d(event_shape[0] + self.cond_channels, ch, 3, padding=1)
        res, chans, c_cur = event_shape[1], [ch], ch
        self.down = nn.ModuleList()
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                self.down.append(self._stage(c_cur, ch * mult, cond, res in attn_resolutions))
                c_cur = ch * mult
                chans.append(c_cur)
            if level < len(ch_mult) - 1:
                self.down.append(nn.Conv2d(c_cur, c_cur, 3, stride=2, padding=1))
                chans.append(c_cur)
                res //= 2
        self.mid = nn.ModuleList([_ResBlock(c_cur, c_cur, cond), _Attention(c_cur),
                                  _ResBlock(c_cur, c_cur, cond)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(self._stage(c_cur + chans.pop(), ch * mult, cond,
                                           res in attn_resolutions))
                c_cur = ch * mult
            if level > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(c_cur, c_cur, 3, padding=1)))
                res *= 2
        self.out = nn.Sequential(_norm(c_cur), nn.SiLU(), nn.Conv2d(c_cur, event_shape[0], 3,
                                                                      padding=1))
        nn.init.zeros_(self.out[2].weight)
        nn.init.zeros_(self.out[2].bias)

    @staticmethod
    def _stage(c_in, c_out, cond, attn):
        return nn.ModuleList([_ResBlock(c_in, c_out, cond)] + ([_Attention(c_out)] if attn else []))

    def config(self) -> dict:
        """The keyword arguments that rebuild this network, plus ``name``."""
        return {"name": "unet", **self._config}

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor,
                y: torch.Tensor | None = None) -> torch.Tensor:
        """Map images ``x`` ``(B, C, H, W)`` and ``c_noise`` ``(B,)`` to ``(B, C, H, W)``."""
        if self.cond_channels:  # the low-resolution image and its augmentation level
            c = conditioning(self, c_noise, None, x.dtype) + self.aug(y[:, -1, 0, 0]).to(x.dtype)
            x = torch.cat([x, y[:, :-1].to(x.dtype)], dim=1)
        else:
            c = conditioning(self, c_noise, y, x.dtype)
        h = self.inp(x)
        skips = [h]
        for layer in self.down:
            h = self._run(layer, h, c)
            skips.append(h)
        for layer in self.mid:
            h = layer(h, c)
        for layer in self.up:
            if isinstance(layer, nn.ModuleList):
                h = self._run(layer, torch.cat([h, skips.pop()], dim=1), c)
            else:
                h = layer(h)
        return self.out(h)

    @staticmethod
    def _run(layer, h, c):
        if isinstance(layer, nn.ModuleList):
            for sub in layer:
                h = sub(h, c)
            return h
        return layer(h)
