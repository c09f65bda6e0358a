"""Write the test fixtures of the score_sde_pytorch converter from the reference code itself.

Not run by the tests or CI: it needs a copy of yang-song/score_sde_pytorch (read, never imported
by scoresde). For two small configurations (a VP DDPM++ and a VE NCSN++ of the reference's
CIFAR-10 continuous configs, shrunk to a few channels) it builds the reference ``NCSNpp`` on the
CPU with random weights, draws an EMA state unlike the raw weights, and saves, in one file each:
a checkpoint as the reference writes it (``model`` with DataParallel's ``module.`` prefix, ``ema``
with ``shadow_params``), fixed inputs and times, the network's outputs and the reference
``get_score_fn`` scores (both with the EMA weights, as the reference evaluates). For the CIFAR-10
DDPM++ (VP) and NCSN++ (VE) configs and their deep variants it writes the parameter names,
shapes and counts (one JSON file, no weights).

Usage::

    git clone https://github.com/yang-song/score_sde_pytorch /tmp/score_sde_pytorch
    python tools/score_sde_fixtures.py /tmp/score_sde_pytorch

The reference compiles CUDA kernels (``op``) when imported; the import is given a ``load`` that
compiles nothing, so that its own CPU code path (``upfirdn2d_native``) runs. ``ml_collections``
only holds the configs and is replaced by a namespace.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"

# name -> (reference config module, the changes that shrink it)
SMALL = {
    "score_sde_vp_ddpmpp_small": ("configs.vp.cifar10_ddpmpp_continuous",
                                  dict(nf=8, ch_mult=(1, 2), num_res_blocks=1,
                                       attn_resolutions=(4,), image_size=8)),
    "score_sde_ve_ncsnpp_small": ("configs.ve.cifar10_ncsnpp_continuous",
                                  dict(nf=8, ch_mult=(1, 2, 2), num_res_blocks=1,
                                       attn_resolutions=(8,), image_size=16)),
}
SMALL_CONFIGS = {"score_sde_vp_ddpmpp_small": "small_ddpmpp_continuous",  # convert.py's names
                 "score_sde_ve_ncsnpp_small": "small_ncsnpp_continuous"}
FULL = ["vp.cifar10_ddpmpp_continuous", "vp.cifar10_ddpmpp_deep_continuous",
        "ve.cifar10_ncsnpp_continuous", "ve.cifar10_ncsnpp_deep_continuous"]
COMPARED = {  # the reference's config -> the name in scoresde.SCORE_SDE_CONFIGS
    "vp.cifar10_ddpmpp_continuous": "cifar10_ddpmpp_continuous",
    "vp.cifar10_ddpmpp_deep_continuous": "cifar10_ddpmpp_deep_continuous",
    "subvp.cifar10_ddpmpp_continuous": "subvp_cifar10_ddpmpp_continuous",
    "ve.cifar10_ncsnpp_continuous": "cifar10_ncsnpp_continuous",
    "ve.cifar10_ncsnpp_deep_continuous": "cifar10_ncsnpp_deep_continuous",
    "vp.cifar10_ncsnpp_continuous": "vp_cifar10_ncsnpp_continuous",
    "subvp.cifar10_ncsnpp_deep_continuous": "subvp_cifar10_ncsnpp_deep_continuous",
}


def _import_reference(repo: Path) -> None:
    sys.path.insert(0, str(repo))
    collections = types.ModuleType("ml_collections")
    collections.ConfigDict = types.SimpleNamespace
    sys.modules.setdefault("ml_collections", collections)
    import torch.utils.cpp_extension as ext
    ext.load = lambda *args, **kwargs: None  # the CPU path never calls the compiled ops


def _config(module: str, changes: dict | None = None):
    config = importlib.import_module(module).get_config()
    for key, value in (changes or {}).items():
        setattr(config.data if key == "image_size" else config.model, key, value)
    config.model.dropout = 0.1
    return config


def _randomise(net: torch.nn.Module, gen: torch.Generator) -> None:
    """Every trainable tensor drawn at a scale where it matters to the output: weights with
    variance 1 / fan-in, biases and GroupNorm scales and shifts away from 0 and 1."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            if not p.requires_grad:
                continue
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * noise)
            else:
                fan_in = p[0].numel() if not name.endswith(".W") else p.shape[0]
                p.copy_(noise / fan_in**0.5)


def small_fixture(name: str, module: str, changes: dict) -> dict:
    """The reference network of a shrunk config, its checkpoint, inputs, outputs and scores."""
    ncsnpp, utils, sde_lib = (importlib.import_module(m)
                              for m in ("models.ncsnpp", "models.utils", "sde_lib"))
    config = _config(module, changes)
    torch.manual_seed(0)  # the reference draws its Fourier features from the global generator
    gen = torch.Generator().manual_seed(0)
    net = ncsnpp.NCSNpp(config)
    _randomise(net, gen)
    raw = {k: v.clone() for k, v in net.state_dict().items()}
    shadow = [p.detach() + 0.05 * torch.randn(p.shape, generator=gen)
              for p in net.parameters() if p.requires_grad]
    with torch.no_grad():  # the EMA weights into the network, as the reference's evaluation
        for p, s in zip([p for p in net.parameters() if p.requires_grad], shadow):
            p.copy_(s)
    net.eval()
    if config.training.sde == "vpsde":
        sde = sde_lib.VPSDE(config.model.beta_min, config.model.beta_max, config.model.num_scales)
    else:
        sde = sde_lib.VESDE(config.model.sigma_min, config.model.sigma_max,
                            config.model.num_scales)
    size, ch = config.data.image_size, config.data.num_channels
    x = torch.randn(4, ch, size, size, generator=gen) * 0.5
    if not config.data.centered:
        x = x + 0.5
    t = torch.tensor([0.05, 0.3, 0.7, 1.0])
    labels = t * 999 if config.training.sde == "vpsde" else sde.marginal_prob(x, t)[1]
    score_fn = utils.get_score_fn(sde, net, train=False, continuous=True)
    with torch.no_grad():
        output, score = net(x, labels), score_fn(x, t)
    m = config.model
    return {"source": f"yang-song/score_sde_pytorch {module.replace('.', '/')}.py with "
                      f"{changes}, built by tools/score_sde_fixtures.py",
            "config": name, "checkpoint": {
                "model": {f"module.{k}": v for k, v in raw.items()},
                "ema": {"decay": m.ema_rate, "num_updates": 10, "shadow_params": shadow},
                "step": 10},
            "x": x, "t": t, "labels": labels, "output": output, "score": score}


def compare_full(config_name: str) -> tuple[float, int, int]:
    """The largest difference between the reference's scores and ours, relative to each sample's
    largest score, for the full-size config with every weight random (two images, t = 0.1 and
    0.6), loaded through :func:`scoresde.from_score_sde`; and the trainable parameters of the
    reference's network and of ours."""
    sys.path.insert(0, str(ROOT))
    from scoresde import from_score_sde

    utils, sde_lib = (importlib.import_module(m) for m in ("models.utils", "sde_lib"))
    config = _config(f"configs.{config_name}")
    torch.manual_seed(0)
    net = importlib.import_module("models.ncsnpp").NCSNpp(config)
    _randomise(net, torch.Generator().manual_seed(1))
    net.eval()
    m = config.model
    sde = (sde_lib.VPSDE(m.beta_min, m.beta_max, m.num_scales) if config.training.sde == "vpsde"
           else sde_lib.subVPSDE(m.beta_min, m.beta_max, m.num_scales)
           if config.training.sde == "subvpsde" else sde_lib.VESDE(m.sigma_min, m.sigma_max,
                                                                  m.num_scales))
    ours, _ = from_score_sde(net.state_dict(), COMPARED[config_name])
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    x = x if not config.data.centered else 2 * x - 1
    t = torch.tensor([0.1, 0.6])
    with torch.no_grad():
        ref = utils.get_score_fn(sde, net, continuous=True)(x, t)
        counts = (sum(p.numel() for p in net.parameters() if p.requires_grad),
                  sum(p.numel() for p in ours.net.parameters()))
        return _relative(ours(x, t), ref), *counts


def _relative(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest difference relative to each sample's largest entry."""
    return float(((ours - ref).abs().flatten(1).amax(1) / ref.abs().flatten(1).amax(1)).max())


def check_small(record: dict, config: str) -> tuple[float, float]:
    """How far our converted network's output and score are from the fixture's."""
    sys.path.insert(0, str(ROOT))
    from scoresde import from_score_sde

    model, _ = from_score_sde(record["checkpoint"], config)
    x, t, labels = record["x"], record["t"], record["labels"]
    with torch.no_grad():
        if model.config()["conditioning"] == "time":
            out = model.net(x, labels)
        else:  # the reference's network takes sigma and divides its output by it
            out = model.net(2 * x - 1, labels.log()) / labels[:, None, None, None]
        return _relative(out, record["output"]), _relative(model(x, t), record["score"])


def full_shapes(config_name: str) -> dict:
    ncsnpp = importlib.import_module("models.ncsnpp")
    net = ncsnpp.NCSNpp(_config(f"configs.{config_name}"))
    return {"source": f"yang-song/score_sde_pytorch configs/{config_name}.py, models/ncsnpp.py",
            "num_parameters": sum(p.numel() for p in net.parameters() if p.requires_grad),
            "tensors": [[k, list(v.shape)] for k, v in net.state_dict().items()]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path, help="a copy of yang-song/score_sde_pytorch")
    parser.add_argument("--compare", action="store_true",
                        help="only compare the full-size CIFAR-10 scores with ours (no files)")
    args = parser.parse_args()
    _import_reference(args.repo)
    if args.compare:
        for name in COMPARED:
            diff, theirs, ours = compare_full(name)
            print(f"{name}: largest score difference {diff:.1e} of the largest score; "
                  f"parameters {theirs:,} (reference), {ours:,} (ours)")
        return
    DATA.mkdir(parents=True, exist_ok=True)
    for name, (module, changes) in SMALL.items():
        record = small_fixture(name, module, changes)
        torch.save(record, DATA / f"{name}.pt")
        count = sum(v.numel() for v in record["checkpoint"]["model"].values())
        net, score = check_small(record, SMALL_CONFIGS[name])
        print(f"{name}: {count:,} numbers -> tests/data/{name}.pt; ours against it: network "
              f"{net:.1e}, score {score:.1e} of the largest entry")
    shapes = {name.split(".")[1]: full_shapes(name) for name in FULL}
    out = DATA / "score_sde_cifar10_shapes.json"
    lines = ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in shapes.items())
    out.write_text("{\n" + lines + "\n}\n")
    for name, record in shapes.items():
        print(f"{name}: {record['num_parameters']:,} parameters, {len(record['tensors'])} tensors")


if __name__ == "__main__":
    main()
