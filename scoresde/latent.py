"""Latent diffusion: a score model on an autoencoder's latents, scaled to unit variance.

``train(run, objective="autoencoder")`` trains a :class:`~scoresde.models.ConvAutoencoder`
through the same run machinery (``config.json``, atomic checkpoints, resume) with its own loss
(:func:`autoencoder_loss`). ``train(run, latent=AE_RUN)`` then encodes the autoencoder's data
once (the latent means), multiplies them by ``latent_scale = 1 / std`` (recorded in the run's
``config.json``) so that they have unit variance, and trains an ordinary score model on them.
:func:`~scoresde.load_run` of such a run gives a :class:`LatentDiffusion`: a score function in
latent space (every sampler and the likelihood take it) that also decodes and samples images.

What a latent run's likelihood is: the probability-flow ODE gives the exact density of the
model over *scaled latents*; it is not a density over images (the decoder is not invertible),
so it must never be reported as image bits/dim. :meth:`LatentDiffusion.reconstruction_error`
gives the other half, how far decoding the encoding is from the image.
"""

from __future__ import annotations

import torch

from .data import Dataset
from .sampling import sample
from .sde import SDE

__all__ = ["autoencoder_loss", "latent_dataset", "LatentDiffusion"]


def autoencoder_loss(model, sde: SDE, x0: torch.Tensor, *, weighting=None, eps=None, y=None,
                     t=None, noise=None) -> torch.Tensor:
    """The autoencoder's per-sample loss ``(B,)``, ``|decode(mu + latent_std eps) - x0|^2 +
    penalty |mu|^2 / 2`` (see :class:`~scoresde.models.ConvAutoencoder`), in the signature of
    the score losses: the SDE, weighting, times and labels are not used, ``noise`` gives the
    latent noise. ``model`` may be wrapped (DistributedDataParallel, ``torch.compile``): the
    forward pass goes through the wrapper."""
    recon, mu = model(x0, noise)
    net = getattr(model, "_orig_mod", model)
    net = getattr(net, "module", net)
    return ((recon - x0) ** 2).flatten(1).sum(1) + 0.5 * net.penalty * (mu ** 2).flatten(1).sum(1)


@torch.no_grad()
def _encode_all(autoencoder, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    return torch.cat([autoencoder.encode(x[i:i + batch]) for i in range(0, len(x), batch)])


def latent_dataset(dataset: Dataset, autoencoder) -> tuple[Dataset, float]:
    """The latents of ``dataset`` (train and test), scaled to unit variance.

    Returns:
        ``(latents, latent_scale)``: a :class:`~scoresde.data.Dataset` of the scaled latent
        means (its ``raw_scale``/``raw_offset`` those of the images, which decoded samples
        have) and ``latent_scale = 1 / std`` of the unscaled training latents.

    Raises:
        ValueError: a data set without training images held in memory.
    """
    if dataset.train is None:
        raise ValueError(f"latent training encodes the training images once; data "
                         f"{dataset.name!r} has none in memory")
    autoencoder = autoencoder.eval()
    train = _encode_all(autoencoder, dataset.train)
    scale = float(1.0 / train.double().std())
    test = _encode_all(autoencoder, dataset.test)
    latents = Dataset(f"latents of {dataset.name}", tuple(train.shape[1:]), test * scale,
                      train=train * scale, train_labels=dataset.train_labels,
                      test_labels=dataset.test_labels, num_classes=dataset.num_classes,
                      class_names=dataset.class_names, embed_dim=dataset.embed_dim,
                      is_image=True, raw_scale=dataset.raw_scale, raw_offset=dataset.raw_offset)
    return latents, scale


class LatentDiffusion:
    """A latent score model with its decoder: samples images, scores latents.

    Calling it is the score model's call, ``model(z, t, y=None)`` on scaled latents, so every
    sampler and :func:`~scoresde.log_likelihood` work in latent space unchanged.

    Attributes:
        score: the :class:`~scoresde.ScoreModel` of the scaled latents.
        autoencoder: the :class:`~scoresde.models.ConvAutoencoder`.
        latent_scale: the factor that scaled the latents to unit variance.
        sde: the SDE of the score model.
    """

    def __init__(self, score, autoencoder, latent_scale: float, sde: SDE):
        self.score, self.autoencoder, self.sde = score, autoencoder, sde
        self.latent_scale = float(latent_scale)
        self.latent_shape = tuple(autoencoder.latent_shape)

    def __call__(self, z, t, y=None):
        return self.score(z, t) if y is None else self.score(z, t, y)

    @property
    def num_classes(self) -> int:
        return self.score.num_classes

    @property
    def embed_dim(self) -> int:
        return self.score.embed_dim

    @property
    def cond_channels(self) -> int:
        return self.score.cond_channels

    @property
    def net(self):
        return self.score.net

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``(B, *latent_shape)`` of images ``x`` ``(B, C, H, W)``."""
        return self.autoencoder.encode(x) * self.latent_scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` of scaled latents ``z``."""
        return self.autoencoder.decode(z / self.latent_scale)

    def reconstruction_error(self, x: torch.Tensor) -> torch.Tensor:
        """Mean squared error per entry of ``decode(encode(x))``, shape ``(B,)``."""
        return ((self.autoencoder(x)[0] - x) ** 2).flatten(1).mean(1)

    def sample(self, n: int, **kwargs) -> tuple[torch.Tensor, dict]:
        """``n`` images: :func:`~scoresde.sample` in latent space (``kwargs`` are its keywords),
        then decoded. ``info["latents"]`` holds the latent samples."""
        z, info = sample(self, self.sde, (n, *self.latent_shape), **kwargs)
        return self.decode(z), dict(info, latents=z)

    def to(self, device) -> "LatentDiffusion":
        self.score.to(device)
        self.autoencoder.to(device)
        return self
