"""A small convolutional autoencoder for latent diffusion (Rombach et al. 2022, at toy scale).

The latent is a small-variance Gaussian: the encoder gives the mean ``mu(x)`` of a latent of
shape ``(latent_channels, H / 2^down, W / 2^down)``; training decodes ``mu(x) + latent_std eps``
and adds ``penalty * |mu|^2 / 2`` to the squared reconstruction error. That is the KL term of a
posterior ``N(mu, latent_std^2 I)`` of fixed variance against ``N(0, I)`` (up to a constant),
with a small weight, so the penalty only keeps the latent's scale from drifting, while the
fixed noise makes the decoder smooth at the latent scale ``latent_std``: a diffusion model's
small errors in latent space decode to small errors in images. Why not a learnt variance (the
KL-regularised VAE of Rombach et al.): with a small KL weight both serve only to bound the scale,
and a fixed variance has no log-variance to collapse or blow up on a short CPU training.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..checks import check_int, check_number

__all__ = ["ConvAutoencoder"]


class ConvAutoencoder(nn.Module):
    """``encode(x) -> mu``, ``decode(z) -> x`` for images ``(B, C, H, W)``.

    Args:
        event_shape: ``(C, H, W)`` of one image; ``H`` and ``W`` divisible by ``2 ** down``.
        ch: channels of the hidden convolutions.
        latent_channels: channels of the latent.
        down: number of stride-2 downsamplings (each halves ``H`` and ``W``).
        latent_std: the fixed standard deviation of the latent noise in training.
        penalty: weight of ``|mu|^2 / 2`` in the loss.
    """

    def __init__(self, event_shape=(1, 8, 8), ch: int = 32, latent_channels: int = 2,
                 down: int = 1, latent_std: float = 0.1, penalty: float = 1e-3):
        super().__init__()
        event_shape = tuple(int(n) for n in event_shape)
        ch, down = check_int("ch", ch, 1), check_int("down", down, 0)
        latent_channels = check_int("latent_channels", latent_channels, 1)
        factor = 2 ** down
        if len(event_shape) != 3 or event_shape[1] % factor or event_shape[2] % factor:
            raise ValueError(f"ConvAutoencoder needs images (C, H, W) with H and W divisible by "
                             f"{factor}, got {event_shape}")
        self.latent_shape = (latent_channels, event_shape[1] // factor,
                             event_shape[2] // factor)
        if math.prod(self.latent_shape) > math.prod(event_shape):
            raise ValueError(f"the latent {self.latent_shape} is larger than the images "
                             f"{event_shape}: lower latent_channels or raise down")
        self.latent_std = check_number("latent_std", latent_std, 0)
        self.penalty = check_number("penalty", penalty, 0)
        self._config = dict(event_shape=list(event_shape), ch=ch, latent_channels=latent_channels,
                            down=down, latent_std=self.latent_std, penalty=self.penalty)
        act, c = nn.SiLU, event_shape[0]
        enc = [nn.Conv2d(c, ch, 3, padding=1), act()]
        dec = [nn.Conv2d(latent_channels, ch, 3, padding=1), act()]
        for _ in range(down):
            enc += [nn.Conv2d(ch, ch, 3, stride=2, padding=1), act(),
                    nn.Conv2d(ch, ch, 3, padding=1), act()]
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1),
                    act(), nn.Conv2d(ch, ch, 3, padding=1), act()]
        self.encoder = nn.Sequential(*enc, nn.Conv2d(ch, latent_channels, 1))
        self.decoder = nn.Sequential(*dec, nn.Conv2d(ch, c, 3, padding=1))

    def config(self) -> dict:
        """The keyword arguments that rebuild this network, plus ``name``."""
        return {"name": "autoencoder", **self._config}

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The latent mean ``mu(x)``: ``(B, C, H, W)`` -> ``(B, *latent_shape)``."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` from latents ``(B, *latent_shape)``."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(reconstruction, mu)``: ``decode(mu + latent_std eps)`` (shape of ``x``) and the
        latent mean ``mu(x)``; ``eps`` is the first ``prod(latent_shape)`` entries of each
        sample's ``noise`` (any shape with that many entries per sample; the training loop
        draws it in the data's shape from its generator), 0 when ``noise`` is None."""
        mu = self.encode(x)
        if noise is None:
            return self.decode(mu), mu
        eps = noise.reshape(len(x), -1)[:, :mu[0].numel()].reshape(mu.shape)
        return self.decode(mu + self.latent_std * eps.to(mu.dtype)), mu
