"""Feature extractors for sample quality: ``features(images) -> (N, F)``.

An extractor is a module (or any callable) that maps images to feature vectors. Every extractor
sees images the same way: float32 ``(N, C, H, W)`` in ``0..255`` (the data's raw range mapped
linearly onto the 8-bit one; :func:`to_extractor_range`). The library calls it only through
:func:`extract_features`, which puts a module in eval mode for the call (whatever mode the caller
left it in) and puts the caller's mode back afterwards, under ``torch.no_grad``.

- :func:`digits_extractor`: a small convolutional classifier of scikit-learn's 8x8 digits,
  trained on the digits' training split with a fixed seed by ``tools/train_digits_features.py``;
  its weights ship inside the package (``scoresde/weights/digits_features.pt``, a state dict
  read with ``torch.load(weights_only=True)``). Its 64 features are the input of the last layer.
- :func:`torchscript_extractor`: any TorchScript file (``torch.jit.load``), such as the
  TorchScript Inception network of the standard FID. TorchScript runs code: load only files you
  trust.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .checks import check_int
from .utils import file_digest, raw_values

__all__ = ["DigitsFeatures", "DIGITS_WEIGHTS", "FEATURE_BATCH", "digits_extractor",
           "torchscript_extractor", "extract_features", "extractor_digest",
           "to_extractor_range", "get_extractor", "EXTRACTORS"]

DIGITS_WEIGHTS = Path(__file__).parent / "weights" / "digits_features.pt"
FEATURE_BATCH = 500  # images per call of the extractor


class DigitsFeatures(nn.Module):
    """A convolutional classifier of ``(N, 1, 8, 8)`` digits in ``0..255``; ``features(x)`` is
    the 64-vector before its last layer, ``forward(x)`` the 10 logits.

    Three 3x3 convolutions (32, 64, 64 channels; the last two of stride 2, to 2x2), dropout,
    a linear layer to 64 features with ReLU, and a linear head.
    """

    num_features = 64
    image_shape = (1, 8, 8)

    def __init__(self, dropout: float = 0.2):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(256, self.num_features), nn.ReLU())
        self.head = nn.Linear(self.num_features, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``(N, 64)`` of images ``(N, 1, 8, 8)`` in ``0..255``."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"the digits feature network takes images of shape (N, 1, 8, 8), "
                             f"got {tuple(x.shape)}")
        return self.body(x / 127.5 - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, 10)`` of images ``(N, 1, 8, 8)`` in ``0..255``."""
        return self.head(self.features(x))


class _Features(nn.Module):
    """A module's ``features`` method as its forward (what :func:`extract_features` calls)."""

    def __init__(self, net: nn.Module, digest: str):
        super().__init__()
        self.net, self.digest = net, digest

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)


def digits_extractor(path: str | os.PathLike | None = None) -> nn.Module:
    """The digits feature network with its shipped weights (or those at ``path``), ``(N, 1, 8,
    8)`` in ``0..255`` -> ``(N, 64)``.

    Raises:
        FileNotFoundError: no weights file (rebuild it: ``python tools/train_digits_features.py``).
    """
    path = Path(path) if path is not None else DIGITS_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"no digits feature weights at {path}; build them with "
                                "python tools/train_digits_features.py")
    net = DigitsFeatures()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return _Features(net.requires_grad_(False), "digits:" + file_digest(path)[:16])


class _TorchScript(nn.Module):
    """A TorchScript module as an extractor: one-channel images repeated to RGB, and the
    ``return_features=True`` of the standard FID Inception file passed where it is taken."""

    def __init__(self, module, digest: str, path: str):
        super().__init__()
        self.module, self.digest, self.path = module, digest, path
        schema = getattr(getattr(module, "forward", None), "schema", None)
        names = [a.name for a in schema.arguments] if schema is not None else []
        self.keywords = {"return_features": True} if "return_features" in names else {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        try:
            return self.module(x, **self.keywords)
        except (RuntimeError, TypeError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"the TorchScript extractor {self.path} failed on images of shape "
                             f"{tuple(x.shape)}: {first}") from None


def torchscript_extractor(path: str | os.PathLike) -> nn.Module:
    """A TorchScript file as an extractor (``torch.jit.load`` on the CPU). TorchScript runs code:
    load only files you trust. It receives float32 ``(N, 3, H, W)`` in ``0..255``
    (one-channel images repeated to three) and must return ``(N, F)``.

    Raises:
        ValueError: no such file, or not a TorchScript file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"feature extractor file {path!r} does not exist")
    try:
        module = torch.jit.load(path, map_location="cpu")
    except (RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path} is not a TorchScript file: {first}") from None
    return _TorchScript(module, "torchscript:" + file_digest(path)[:16], path)


# The named extractors (the CLI's --features takes one of these names or a TorchScript path).
EXTRACTORS: dict[str, Callable[[], nn.Module]] = {"digits": digits_extractor}


def get_extractor(features: str | os.PathLike | nn.Module | Callable) -> nn.Module | Callable:
    """An extractor from a name of :data:`EXTRACTORS`, a TorchScript path, or an extractor.

    Raises:
        ValueError: a string that is neither a name nor a file.
    """
    if callable(features) and not isinstance(features, (str, os.PathLike)):
        return features
    name = os.fspath(features)
    if name in EXTRACTORS:
        return EXTRACTORS[name]()
    if os.path.isfile(name):
        return torchscript_extractor(name)
    raise ValueError(f"features {name!r}: use one of {', '.join(EXTRACTORS)} or the path of a "
                     "TorchScript file")


def _owner(extractor) -> nn.Module | None:
    """The module an extractor runs: itself, or the module of a bound method; else None."""
    if isinstance(extractor, nn.Module):
        return extractor
    owner = getattr(extractor, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


def extractor_digest(extractor) -> str | None:
    """What identifies an extractor in a cache key: its ``digest`` attribute when it has one
    (ours: the digest of its file); for another module (or its method), a SHA-256 of its class
    (and the method's name), its ``repr`` (which holds the settings of PyTorch's layers, such
    as a pooling's kernel size) and its parameters and buffers; None for a plain function,
    which nothing identifies across calls (its reference statistics are then not cached). A
    module whose features depend on anything else should carry its own ``digest`` string."""
    digest = getattr(extractor, "digest", None)
    if isinstance(digest, str):
        return digest
    owner = _owner(extractor)
    if owner is None:
        return None
    cls = type(owner)
    method = "" if owner is extractor else "." + getattr(
        getattr(extractor, "__func__", None), "__qualname__", type(extractor).__name__)
    h = hashlib.sha256(f"{cls.__module__}.{cls.__qualname__}{method}\n{owner!r}".encode())
    for key, value in sorted(owner.state_dict().items()):
        value = value.detach().cpu().contiguous()
        h.update(f"\n{key}:{value.dtype}:{tuple(value.shape)}:".encode())
        h.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "module:" + h.hexdigest()[:16]


def to_extractor_range(x: torch.Tensor, *, raw_scale: float, raw_offset: float,
                       pixel_bits: int | None) -> torch.Tensor:
    """Model values ``(N, *dims)`` as extractor input: raw values ``x * raw_scale + raw_offset``
    clipped to the data's range (8-bit data: rounded to its levels 0..255, as a saved image
    would be; other data: ``raw_offset +- raw_scale``), mapped linearly onto ``0..255``."""
    raw = raw_values(x.float(), raw_scale, raw_offset)
    if pixel_bits is not None:
        top = 2 ** pixel_bits - 1
        return raw.round().clamp(0, top) * (255 / top)
    low, high = raw_offset - raw_scale, raw_offset + raw_scale
    return (raw.clamp(low, high) - low) * (255 / (high - low))


@torch.no_grad()
def extract_features(extractor, images: torch.Tensor, *, batch_size: int = FEATURE_BATCH
                     ) -> torch.Tensor:
    """Features ``(N, F)`` (float64, CPU) of ``images`` ``(N, C, H, W)`` in ``0..255``.

    A module extractor runs in eval mode for the call (dropout off, batch norm on its running
    statistics) whatever mode it was in; its own mode is put back afterwards, so the caller sees
    no change. ``batch_size`` images go in at a time, on the device of the module's parameters.

    Raises:
        ValueError: images the extractor does not take (its message), or an answer that is not
            one finite row of features per image.

    A method of a module (``net.features``) counts as that module: it too runs in eval mode.
    """
    batch_size = check_int("batch_size", batch_size, low=1)
    if images.ndim < 2 or images.shape[0] == 0:
        raise ValueError(f"need a batch of images (N, C, H, W), got shape {tuple(images.shape)}")
    owner = _owner(extractor)
    modules = list(owner.modules()) if owner is not None else []
    modes = [m.training for m in modules]  # in pre-order: a parent's train() comes first
    if modules:
        owner.eval()
    params = next(iter(owner.parameters()), None) if modules else None
    device = params.device if params is not None else images.device  # where the module is
    try:
        out = [extractor(images[i:i + batch_size].to(device))
               for i in range(0, images.shape[0], batch_size)]
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)
    feats = torch.cat([torch.as_tensor(o) for o in out]).detach().to("cpu", torch.float64)
    if feats.ndim != 2 or feats.shape[0] != images.shape[0]:
        raise ValueError(f"an extractor must return features (N, F); for {images.shape[0]} "
                         f"images it returned shape {tuple(feats.shape)}")
    if not torch.isfinite(feats).all():
        raise ValueError("the extractor returned NaN or infinite features")
    return feats
