"""Turn a network into a score function for any Gaussian-linear SDE (EDM-style preconditioning)."""

from __future__ import annotations

import torch
from torch import nn

from ..checks import check_number
from ..embeddings import check_embeddings
from ..labels import check_labels
from ..sde import SDE
from ..utils import append_dims

__all__ = ["ScoreModel", "Preconditioned", "preconditioning", "check_sigma_data"]


def check_sigma_data(sigma_data: float) -> float:
    """Return ``sigma_data`` as a float, or raise ``ValueError`` unless it is finite and > 0."""
    return check_number("sigma_data", sigma_data, 0, low_open=True)


def preconditioning(sde: SDE, t: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, ...]:
    """``(c_in, c_skip, c_out, c_noise, s)`` of :class:`ScoreModel` at times ``t`` ``(B,)``.

    With ``a = m(t) sigma_data``: ``c_in = 1 / sqrt(a^2 + s^2)``, ``c_skip = s c_in``,
    ``c_out = a c_in``, ``c_noise = log(s / m) / 4``; each of shape ``(B,)``.
    """
    m, s = sde.marginal_coeffs(t)
    a = m * sigma_data
    c_in = torch.rsqrt(a**2 + s**2)
    return c_in, s * c_in, a * c_in, (torch.log(s) - torch.log(m)) / 4, s


def _check_low_res(y, x: torch.Tensor, channels: int) -> torch.Tensor:
    """The condition of a super-resolution model: ``(B, channels + 1, H, W)`` for ``x``
    ``(B, C, H, W)`` (see :func:`scoresde.cascade.low_res_condition`)."""
    want = (x.shape[0], channels + 1, *x.shape[2:])
    if not isinstance(y, torch.Tensor) or tuple(y.shape) != want:
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"a super-resolution model needs its low-resolution condition y of "
                         f"shape {want} (scoresde.cascade.low_res_condition; sample it with "
                         f"cascade or scoresde sample --cascade), got {got}")
    return y.to(x.device)


class Preconditioned(nn.Module):
    """A network ``net`` seen through an SDE's ``(m(t), s(t))`` and the data's ``sigma_data``.

    What :class:`ScoreModel` and :class:`~scoresde.models.NoiseClassifier` share: the three
    attributes ``net``, ``sde``, ``sigma_data`` (the state dict holds ``net.*`` only), the
    network's number of classes and :func:`preconditioning` at given times.
    """

    def __init__(self, net: nn.Module, sde: SDE, sigma_data: float = 1.0):
        super().__init__()
        self.net, self.sde, self.sigma_data = net, sde, check_sigma_data(sigma_data)

    @property
    def num_classes(self) -> int:
        """Number of classes the network takes as labels or gives logits of (0: none)."""
        return int(getattr(self.net, "num_classes", 0))

    @property
    def cond_channels(self) -> int:
        """Channels of the low-resolution image a super-resolution network takes (0: none)."""
        return int(getattr(self.net, "cond_channels", 0))

    @property
    def embed_dim(self) -> int:
        """Size ``E`` of the embeddings ``y`` ``(B, E)`` the network is conditioned on (0: none)."""
        return int(getattr(self.net, "embed_dim", 0))

    def preconditioning(self, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(c_in, c_skip, c_out, c_noise, s)`` at times ``t`` of shape ``(B,)``, each ``(B,)``."""
        return preconditioning(self.sde, t, self.sigma_data)


class ScoreModel(Preconditioned):
    """A score function ``model(x, t, y=None)`` built from a network and an SDE's ``(m(t), s(t))``.

    Labels ``y`` (an integer or ``(B,)`` integers in ``[0, num_classes)``, -1 for "no label")
    reach networks built with ``num_classes > 0``, embeddings ``y`` (``(E,)`` or ``(B, E)``
    floats, rows of NaN for "none") those built with ``embed_dim = E > 0``; ``y=None`` is the
    unconditional score.

    With ``x_t = m x_0 + s z`` and data of standard deviation ``sigma_data`` (write
    ``a = m sigma_data``), the network ``F`` sees the input scaled to unit variance and a noise
    input, and predicts the noise ``z`` with a skip connection (Karras et al. 2022, section 5,
    written for the noise instead of the denoised data)::

        c_in = 1 / sqrt(a^2 + s^2)      c_skip = s c_in      c_out = a c_in
        c_noise = log(s / m) / 4
        eps_hat = c_skip (c_in x) + c_out F(c_in x, c_noise, y)
        score = -eps_hat / s

    ``c_skip (c_in x)`` is the exact noise prediction for Gaussian data ``N(0, sigma_data^2 I)``
    and ``F``'s target has unit variance at every ``t``, so one wrapper serves VP, VE and any
    other Gaussian-linear SDE without asking its class.

    Args:
        net: a module ``net(x, c_noise, y=None)`` returning a tensor of ``x``'s shape.
        sde: the forward SDE.
        sigma_data: standard deviation of the data entries.
    """

    def noise_prediction(self, x: torch.Tensor, t: torch.Tensor | float,
                         y: torch.Tensor | None = None) -> torch.Tensor:
        """``eps_hat(x, t)``, the predicted noise ``z`` of ``x_t = m x_0 + s z``; shape of ``x``."""
        return self._noise_and_std(x, t, y)[0]

    def forward(self, x: torch.Tensor, t: torch.Tensor | float,
                y: torch.Tensor | None = None) -> torch.Tensor:
        """The score ``grad_x log p_t(x)`` of shape ``(B, *dims)`` at ``t`` of shape ``(B,)``."""
        eps_hat, s = self._noise_and_std(x, t, y)
        return -eps_hat / append_dims(s, x.ndim)

    def _noise_and_std(self, x, t, y):
        """``eps_hat`` (shape of ``x``) and ``s(t)`` ``(B,)``: time checked and coefficients
        computed once per call."""
        t = self.sde.check_time(t, x)
        if self.cond_channels:
            y = _check_low_res(y, x, self.cond_channels)
        elif y is not None and self.embed_dim:
            y = check_embeddings(y, x.shape[0], self.embed_dim, allow_null=True).to(x.device)
        elif y is not None:
            if not self.num_classes:
                raise ValueError("this model is unconditional: call it without labels y")
            y = check_labels(y, x.shape[0], self.num_classes, allow_null=True).to(x.device)
        c_in, c_skip, c_out, c_noise, s = self.preconditioning(t)
        x_in = append_dims(c_in, x.ndim) * x
        f = self.net(x_in, c_noise, y) if y is not None else self.net(x_in, c_noise)
        return append_dims(c_skip, x.ndim) * x_in + append_dims(c_out, x.ndim) * f, s
