"""score_sde_pytorch's checkpoints as scoresde models and run folders.

The reference (yang-song/score_sde_pytorch) saves ``{"model": state_dict, "ema": {"decay",
"num_updates", "shadow_params"}, "optimizer", "step"}``, the state dict of its ``NCSNpp`` under
DataParallel (``module.`` in front of every name) and the EMA's averages as a list in the order
of the network's trainable parameters. :func:`from_score_sde` maps such a file, or its model
state dict alone, onto our :class:`~scoresde.models.DDPMpp` of the same architecture, every
tensor by name and shape, and wraps it in :class:`~scoresde.models.ScoreSDEModel`, whose score is
the reference's ``score_fn``. :func:`convert_score_sde` writes it as a run folder that
:func:`~scoresde.load_run`, ``scoresde sample`` and ``scoresde likelihood`` read.

Pixels: the reference trains on ``p / 255`` (``[0, 1]``) or its centred ``2 p / 255 - 1``, and
measures bits/dim on ``(p + u) / 256`` (or ``2 (p + u) / 256 - 1``), ``u ~ U[0, 1)``. A run
converted here records the pixel scale of that measurement: for centred data our
:data:`~scoresde.images.PIXELS` (level ``p`` at ``(p - 127.5) / 128``, bins of width ``1 / 128``
on ``[-1, 1]``), for ``[0, 1]`` data the same map halved and shifted (level ``p`` at ``(p + 0.5)
/ 256``). Bits/dim then dequantise exactly as the reference does; a sample ``x`` becomes level
``128 x + 127.5`` where the reference writes ``127.5 x + 127.5`` (at most half a level apart).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from .checks import check_choice
from .images import PIXELS
from .models import NET_PRESETS, ScoreSDEModel, build_net, resolve_net
from .models.score_sde import reference_names
from .runs import CHECKPOINT, is_run, load_checkpoint, save_checkpoint, write_config
from .sde import SDE, get_sde
from .hardware import count_params
from .utils import resolve_device

__all__ = ["SOURCES", "SCORE_SDE_CONFIGS", "from_score_sde", "convert_score_sde", "pixel_scale"]

SOURCES = ("score_sde",)  # the codes whose checkpoints convert (yang-song/score_sde_pytorch)

_VP = dict(sde=dict(name="vp", beta_min=0.1, beta_max=20.0), conditioning="time", centered=True)
_SUBVP = dict(_VP, sde=dict(name="subvp", beta_min=0.1, beta_max=20.0))
_VE = dict(sde=dict(name="ve", sigma_min=0.01, sigma_max=50.0), conditioning="sigma",
           centered=False)
_SMALL = dict(name="ddpmpp", nf=8, num_res_blocks=1, dropout=0.1, fourier_scale=16.0,
              init_scale=0.0, skip_rescale=True)

# The reference's configs (configs/<sde>/<name>.py) that we convert: our network (a preset of
# NET_PRESETS or keywords), the image shape, the SDE, how the score is formed, the data's range.
SCORE_SDE_CONFIGS: dict[str, dict] = {
    "cifar10_ddpmpp_continuous": dict(_VP, net="ddpmpp_cifar10", shape=[3, 32, 32]),
    "cifar10_ddpmpp_deep_continuous": dict(_VP, net="ddpmpp_cifar10_deep", shape=[3, 32, 32]),
    "subvp_cifar10_ddpmpp_continuous": dict(_SUBVP, net="ddpmpp_cifar10", shape=[3, 32, 32]),
    "subvp_cifar10_ddpmpp_deep_continuous": dict(_SUBVP, net="ddpmpp_cifar10_deep",
                                                 shape=[3, 32, 32]),
    "cifar10_ncsnpp_continuous": dict(_VE, net="ncsnpp_cifar10", shape=[3, 32, 32]),
    "cifar10_ncsnpp_deep_continuous": dict(_VE, net="ncsnpp_cifar10_deep", shape=[3, 32, 32]),
    # configs/vp/ and configs/subvp/cifar10_ncsnpp_(deep_)continuous.py: NCSN++, positional.
    **{f"{kind}_cifar10_ncsnpp{deep}_continuous": dict(
        sde_kind, shape=[3, 32, 32],
        net=dict(NET_PRESETS[f"ncsnpp_cifar10{deep}"], embedding_type="positional"))
       for kind, sde_kind in (("vp", _VP), ("subvp", _SUBVP)) for deep in ("", "_deep")},
    # The shrunk configs of the tests' fixtures (tools/score_sde_fixtures.py).
    "small_ddpmpp_continuous": dict(_VP, shape=[3, 8, 8], net=dict(
        _SMALL, ch_mult=[1, 2], attn_resolutions=[4], embedding_type="positional")),
    "small_ncsnpp_continuous": dict(_VE, shape=[3, 16, 16], net=dict(
        _SMALL, ch_mult=[1, 2, 2], attn_resolutions=[8], embedding_type="fourier",
        fir_kernel=[1, 3, 3, 1], progressive_input="residual")),
}
_BUFFERS = ("sigmas",)  # the reference's network also holds its noise levels; the SDE has them


def _network(config: str):
    spec = SCORE_SDE_CONFIGS[config]
    net = spec["net"]
    name, params = resolve_net(net) if isinstance(net, str) else (net["name"], dict(net))
    params.pop("name", None)
    return build_net({"name": name, "event_shape": spec["shape"], **params})


def _read(checkpoint) -> tuple[dict, dict | None, str]:
    """``(model state dict, ema state or None, what it is called in errors)``."""
    if isinstance(checkpoint, (str, os.PathLike)):
        what = os.fspath(checkpoint)
        state = load_checkpoint(checkpoint, map_location="cpu")
    elif isinstance(checkpoint, dict):
        what, state = "the state dict", checkpoint
    else:
        raise TypeError("from_score_sde takes a checkpoint path or a state dict, got "
                        f"{type(checkpoint).__name__}")
    if isinstance(state.get("model"), dict):
        model, ema = state["model"], state.get("ema")
    elif state and all(isinstance(v, torch.Tensor) for v in state.values()):
        model, ema = state, None
    else:
        raise ValueError(f"{what} is not a score_sde_pytorch checkpoint: expected a 'model' "
                         f"state dict (found keys {list(state)[:6]})")
    model = {k.removeprefix("module."): v for k, v in model.items()}
    return {k: v for k, v in model.items() if k not in _BUFFERS}, ema, what


def _names(items, most: int = 4) -> str:
    items = list(items)
    more = f" and {len(items) - most} more" if len(items) > most else ""
    return ", ".join(items[:most]) + more


def _match(model: dict, names: dict, net, what: str, config: str) -> None:
    """Raise one ValueError naming the missing, unexpected and mis-shaped tensors."""
    shapes = {ours: tuple(t.shape) for ours, t in net.state_dict().items()}
    missing = [k for k in names if k not in model]
    extra = [k for k in model if k not in names]
    wrong = [f"{ref} {_shape(model[ref])} (expected {shapes[ours]})"
             for ref, (ours, _) in names.items()
             if ref in model and _shape(model[ref]) != shapes[ours]]
    problems = [f"missing {len(missing)} tensors ({_names(missing)})"] if missing else []
    problems += [f"{len(extra)} unexpected tensors ({_names(extra)})"] if extra else []
    problems += [f"wrong shapes of {_names(wrong, 3)}"] if wrong else []
    if problems:
        raise ValueError(f"{what} is not score_sde_pytorch's {config}: " + "; ".join(problems))


def _shape(value) -> tuple | str:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def _weights(model: dict, ema, names: dict, what: str, use_ema: bool) -> dict:
    """Our state dict from the reference's tensors (matched already), with the EMA's averages
    over the trainable ones when ``use_ema`` and the checkpoint has them."""
    weights = {ours: model[ref] for ref, (ours, _) in names.items()}
    if use_ema and ema is not None:
        if not isinstance(ema, dict) or "shadow_params" not in ema:
            raise ValueError(f"{what}: its 'ema' is not score_sde_pytorch's (a dict with "
                             "'shadow_params'); convert with ema=False for the raw weights")
        trainable = [ref for ref in model if names[ref][1]]  # the reference's order
        shadow = list(ema["shadow_params"])
        if len(shadow) != len(trainable) or any(
                not isinstance(s, torch.Tensor) or s.shape != model[ref].shape
                for s, ref in zip(shadow, trainable)):
            raise ValueError(f"{what}: its EMA holds {len(shadow)} tensors that do not match "
                             f"the network's {len(trainable)} trainable parameters")
        weights.update({names[ref][0]: s for ref, s in zip(trainable, shadow)})
    return weights


def _build(config: str, net) -> tuple[ScoreSDEModel, SDE]:
    spec = SCORE_SDE_CONFIGS[config]
    sde = get_sde(**spec["sde"])
    sigmas = {k: spec["sde"][k] for k in ("sigma_min", "sigma_max") if k in spec["sde"]}
    return ScoreSDEModel(net, sde, conditioning=spec["conditioning"], centered=spec["centered"],
                         **sigmas), sde


def from_score_sde(checkpoint, config: str, *, ema: bool = True,
                   device=None) -> tuple[ScoreSDEModel, SDE]:
    """Load a score_sde_pytorch checkpoint into our network, with the reference's score.

    Args:
        checkpoint: a checkpoint file of the reference (read with ``weights_only=True``, so
            it runs no code), its dict, or the ``model`` state dict alone; ``module.``
            prefixes are dropped.
        config: the reference's config, a key of :data:`SCORE_SDE_CONFIGS`.
        ema: take the EMA's averages when the checkpoint has them (as the reference samples
            and evaluates); False for the raw weights. A bare state dict has no EMA.
        device: where to put the model (CPU by default).

    Returns:
        ``(model, sde)``: a :class:`~scoresde.models.ScoreSDEModel` in eval mode (its network
        ``model.net``), whose ``model(x, t)`` is the reference's ``score_fn(x, t)`` for images
        ``(B, C, H, W)`` on the reference's data scale, and the config's SDE.

    Raises:
        ValueError: unknown config, unreadable or truncated file, or a checkpoint whose tensors
            do not all match the config's network by name and shape (the message names them).
        TypeError: ``checkpoint`` is neither a path nor a dict.
    """
    check_choice("config", config, SCORE_SDE_CONFIGS)
    model, sde = _convert(_read(checkpoint), config, ema)
    return model.to(resolve_device(device)).eval().requires_grad_(False), sde


def _convert(read: tuple, config: str, use_ema: bool) -> tuple[ScoreSDEModel, SDE]:
    """The model and SDE of what :func:`_read` read, for a known ``config``."""
    model_sd, ema_state, what = read
    net = _network(config)
    names = reference_names(net)
    _match(model_sd, names, net, what, config)
    net.load_state_dict(_weights(model_sd, ema_state, names, what, use_ema))
    return _build(config, net)


def pixel_scale(centered: bool) -> dict:
    """``raw_scale``, ``raw_offset``, ``pixel_bits`` of a converted run (see the module)."""
    if centered:
        return dict(PIXELS)
    return dict(PIXELS, raw_scale=2 * PIXELS["raw_scale"],
                raw_offset=PIXELS["raw_offset"] - PIXELS["raw_scale"])


def convert_score_sde(checkpoint, config: str, out: str | os.PathLike, *,
                      ema: bool = True) -> Path:
    """Write a score_sde_pytorch checkpoint as a run folder ``out`` (``config.json``,
    ``checkpoint.pt``) for :func:`~scoresde.load_run` and the CLI's ``sample`` and
    ``likelihood``.

    The checkpoint's raw weights go to the run's ``model``, the EMA's (or, without an EMA, the
    raw ones again) to its ``ema``. Nothing is written unless the whole checkpoint converts;
    ``out`` must not exist yet, or be an empty folder.

    Returns:
        The run folder.

    Raises:
        ValueError: as :func:`from_score_sde`, or ``out`` exists and is not an empty folder.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} already exists{' as a run' if is_run(out) else ''}: give a new "
                         "folder")
    check_choice("config", config, SCORE_SDE_CONFIGS)
    read = _read(checkpoint)
    ema = bool(ema) and read[1] is not None  # a bare state dict has no EMA
    raw, _ = _convert(read, config, use_ema=False)
    averaged, sde = _convert(read, config, use_ema=ema)
    spec = SCORE_SDE_CONFIGS[config]
    run_config = dict(
        source={"format": "score_sde_pytorch", "config": config,
                "checkpoint": (os.path.abspath(checkpoint)
                               if isinstance(checkpoint, (str, os.PathLike)) else None),
                "ema": ema},
        data=None, data_shape=list(spec["shape"]), is_image=True, num_classes=0,
        conditional=False, objective="score", **pixel_scale(spec["centered"]),
        sde=sde.config(), net=averaged.net.config(), num_params=count_params(averaged.net),
        score_sde=averaged.config())
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        save_checkpoint(out / CHECKPOINT, {"model": raw.state_dict(),
                                           "ema": averaged.state_dict(), "step": 0})
        write_config(out, run_config)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return out
