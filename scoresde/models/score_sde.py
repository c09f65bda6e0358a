"""score_sde_pytorch's own score function, for its networks converted into ours.

The reference (Song et al. 2021, ``models/utils.py``, ``get_score_fn`` with ``continuous=True``)
turns its network ``F`` into a score in one of two ways, and :class:`ScoreSDEModel` does the
same, so that its checkpoints give the scores it gave:

- ``conditioning="time"`` (VP and sub-VP): ``F`` sees ``999 t`` and predicts the noise;
  ``score = -F(x, 999 t) / s(t)`` with ``s(t)`` the SDE's marginal standard deviation.
- ``conditioning="sigma"`` (VE): ``F`` sees ``log sigma(t)`` (the reference's Fourier layer
  takes ``log`` of the ``sigma`` it is given), ``sigma(t) = sigma_min (sigma_max /
  sigma_min)^(t / T)``, and the reference divides its output by ``sigma`` (``scale_by_sigma``):
  ``score = F(x, log sigma(t)) / sigma(t)``. This ``sigma(t)`` is the reference's marginal
  standard deviation, which exceeds :class:`~scoresde.VESDE`'s exact one by ``sigma_min^2``
  in the variance; the network was trained on it, so the score uses it.

Data the reference did not centre (its VE configs: pixels in ``[0, 1]``) enter the network as
``2 x - 1``, as inside the reference's network.

:func:`reference_names` gives, for each tensor of our :class:`~scoresde.models.DDPMpp`, the
name it has in the reference's ``NCSNpp.state_dict()``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..checks import check_choice, check_number
from ..sde import SDE
from ..utils import append_dims
from .ddpmpp import DDPMpp, _Attention, _ChannelLinear, _InputPyramid, _ResBlock

__all__ = ["ScoreSDEModel", "CONDITIONINGS", "reference_names"]

CONDITIONINGS = ("time", "sigma")


class ScoreSDEModel(nn.Module):
    """A score function ``model(x, t)`` that is score_sde_pytorch's ``score_fn`` of ``net``.

    Args:
        net: a network ``net(x, c_noise)``, e.g. a converted :class:`~scoresde.models.DDPMpp`.
        sde: the forward SDE of the reference's config.
        conditioning: ``"time"`` or ``"sigma"`` (see the module's description).
        centered: whether the data is in ``[-1, 1]`` (the reference's ``data.centered``); if
            not, the network sees ``2 x - 1``.
        time_scale: the factor on ``t`` of ``"time"`` conditioning (the reference's 999).
        sigma_min, sigma_max: the ``sigma(t)`` of ``"sigma"`` conditioning.
    """

    num_classes = 0

    def __init__(self, net: nn.Module, sde: SDE, *, conditioning: str, centered: bool,
                 time_scale: float = 999.0, sigma_min: float | None = None,
                 sigma_max: float | None = None):
        super().__init__()
        check_choice("conditioning", conditioning, CONDITIONINGS)
        self.net, self.sde = net, sde
        self._config = dict(conditioning=conditioning, centered=bool(centered),
                            time_scale=check_number("time_scale", time_scale, 0, low_open=True))
        if conditioning == "sigma":
            lo = check_number("sigma_min", sigma_min, 0, low_open=True)
            hi = check_number("sigma_max", sigma_max, lo, low_open=True)
            self._config.update(sigma_min=lo, sigma_max=hi)

    def config(self) -> dict:
        """The keywords (besides ``net`` and ``sde``) that rebuild this wrapper."""
        return dict(self._config)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float,
                y: torch.Tensor | None = None) -> torch.Tensor:
        """The score ``(B, C, H, W)`` at ``x`` ``(B, C, H, W)`` and times ``t`` ``(B,)``."""
        if y is not None:
            raise ValueError("this model is unconditional: call it without labels y")
        t = self.sde.check_time(t, x)
        cfg = self._config
        x_in = x if cfg["centered"] else 2 * x - 1
        if cfg["conditioning"] == "time":
            s = self.sde.marginal_coeffs(t)[1]
            return -self.net(x_in, cfg["time_scale"] * t) / append_dims(s, x.ndim)
        # sigma as the reference computes it: the Fourier features (of scale 16) amplify the
        # round-off of log sigma a hundredfold
        sigma = cfg["sigma_min"] * torch.pow(cfg["sigma_max"] / cfg["sigma_min"], t / self.sde.T)
        return self.net(x_in, torch.log(sigma)) / append_dims(sigma, x.ndim)


# Our attribute -> the reference's, inside each kind of layer (layerspp.py's names).
_LAYER_NAMES = {
    _ResBlock: {"norm1": "GroupNorm_0", "conv1": "Conv_0", "emb": "Dense_0",
                "norm2": "GroupNorm_1", "conv2": "Conv_1", "skip": "Conv_2"},
    _Attention: {"norm": "GroupNorm_0", "q": "NIN_0", "k": "NIN_1", "v": "NIN_2",
                 "out": "NIN_3"},
    _InputPyramid: {"weight": "Conv2d_0.weight", "bias": "Conv2d_0.bias"},
}
_NIN_NAMES = {"weight": "W", "bias": "b"}


def _top_layers(net: DDPMpp) -> list[nn.Module]:
    """Our modules in the order of the reference's ``all_modules``."""
    layers = [net.time] if net.time.kind == "fourier" else []
    layers += [net.cond[0], net.cond[2]] if net.cond is not None else []
    layers.append(net.inp)
    for stages in (net.down, [net.mid], net.up):
        layers += [layer for stage in stages for layer in stage]
    return layers + [net.out[0], net.out[2]]


def reference_names(net: DDPMpp) -> dict[str, tuple[str, bool]]:
    """``{reference name: (our name, trainable)}`` for every tensor of ``net``'s state dict,
    in the reference's order; ``trainable`` is False for the fixed Fourier features, which the
    reference's EMA does not hold.

    Raises:
        ValueError: ``net`` takes labels (the reference's networks take none).
    """
    if not isinstance(net, DDPMpp) or net.num_classes:
        raise ValueError("only an unconditional DDPMpp has score_sde_pytorch's layout")
    ours = {id(module): name for name, module in net.named_modules()}
    names = {}
    for i, layer in enumerate(_top_layers(net)):
        prefix, table = ours[id(layer)], _LAYER_NAMES.get(type(layer))
        for local in layer.state_dict():
            head, _, tail = local.partition(".")
            if table is not None:
                if isinstance(getattr(layer, head), _ChannelLinear):
                    tail = _NIN_NAMES[tail]
                head = table[head]
            ref = ".".join(p for p in (f"all_modules.{i}", head, tail) if p)
            names[ref] = (f"{prefix}.{local}", local != "W")
    return names
