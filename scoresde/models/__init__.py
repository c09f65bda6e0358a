"""Networks that know nothing of SDEs, and the wrapper that makes them score functions."""

from __future__ import annotations

from torch import nn

from .autoencoder import ConvAutoencoder
from .classifier import ClassifierMLP, ClassifierUNet, NoiseClassifier
from .ddpmpp import DDPMpp
from .mlp import InputFeatures, ScoreMLP, TimeFeatures
from .presets import NET_PRESETS, resolve_net
from .score_model import ScoreModel
from .score_sde import ScoreSDEModel
from .unet import UNet

__all__ = ["ScoreMLP", "UNet", "DDPMpp", "ScoreModel", "TimeFeatures", "InputFeatures", "NETS",
           "NET_PRESETS", "TRAIN_NETS", "build_net", "resolve_net", "ClassifierMLP",
           "ClassifierUNet", "NoiseClassifier", "ScoreSDEModel", "ConvAutoencoder"]

NETS: dict[str, type[nn.Module]] = {"mlp": ScoreMLP, "unet": UNet, "ddpmpp": DDPMpp,
                                    "mlp_classifier": ClassifierMLP,
                                    "unet_classifier": ClassifierUNet,
                                    "autoencoder": ConvAutoencoder}

# What ``train(net=...)`` accepts: "auto" (by the data), a score network of NETS, or a preset.
TRAIN_NETS: tuple[str, ...] = ("auto", *(n for n in NETS if not n.endswith("_classifier")
                                          and n != "autoencoder"),
                               *NET_PRESETS)


def build_net(config: dict) -> nn.Module:
    """Rebuild a network from its ``config()``: ``{"name": <a key of NETS>, **keywords}``.

    Raises:
        ValueError: unknown name or keywords the network does not take.
    """
    params = dict(config)
    name = params.pop("name", None)
    if name not in NETS:
        raise ValueError(f"unknown network {name!r}; choose one of {', '.join(NETS)}")
    try:
        return NETS[name](**params)
    except TypeError as err:
        raise ValueError(f"bad parameters for network {name!r}: {err}") from err
