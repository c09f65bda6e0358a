"""Write the parameter names and shapes of score_sde_pytorch's DDPM++ networks as JSON fixtures.

Not run by the tests or CI: it needs a checkout of yang-song/score_sde_pytorch. The tests compare
our :class:`~scoresde.models.DDPMpp` with the fixtures, so that the reference's checkpoints map
onto our parameters one to one (same shapes, same order).

Usage::

    git clone https://github.com/yang-song/score_sde_pytorch /tmp/score_sde_pytorch
    python tools/ddpmpp_reference_shapes.py /tmp/score_sde_pytorch

The reference's CUDA kernels (``op``) serve only ``fir=True``, which DDPM++ does not use, and
``ml_collections`` only holds the configs: both are replaced by stand-ins before the import.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import types
from pathlib import Path

CONFIGS = {"cifar10_ddpmpp_continuous": "tests/data/ddpmpp_cifar10_shapes.json",
           "cifar10_ddpmpp_deep_continuous": "tests/data/ddpmpp_cifar10_deep_shapes.json"}


def _stand_ins() -> None:
    """Modules the reference imports but DDPM++ does not need: ``op`` and ``ml_collections``."""
    op = types.ModuleType("op")
    op.upfirdn2d = None  # only reached with fir=True
    collections = types.ModuleType("ml_collections")
    collections.ConfigDict = types.SimpleNamespace
    sys.modules.setdefault("op", op)
    sys.modules.setdefault("ml_collections", collections)


def reference_shapes(repo: Path, config_name: str) -> dict:
    """Build the reference network of ``configs/vp/<config_name>.py`` on the CPU and list its
    state dict (the ``sigmas`` buffer aside: it is the SDE's, not the network's)."""
    sys.path.insert(0, str(repo))
    _stand_ins()
    config = importlib.import_module(f"configs.vp.{config_name}").get_config()
    ncsnpp = importlib.import_module("models.ncsnpp")
    net = ncsnpp.NCSNpp(config)
    tensors = [(name, list(t.shape)) for name, t in net.state_dict().items() if name != "sigmas"]
    model = config.model
    return {"source": f"yang-song/score_sde_pytorch configs/vp/{config_name}.py, models/ncsnpp.py",
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(model).items()
                       if isinstance(v, (int, float, str, bool, tuple, list))},
            "image_size": config.data.image_size, "num_channels": config.data.num_channels,
            "num_parameters": sum(p.numel() for p in net.parameters()),
            "tensors": tensors}


def compare_outputs(repo: Path, config_name: str = "cifar10_ddpmpp_continuous") -> None:
    """Print how far our network's output is from the reference's with the reference's weights
    copied over in order (positional and Fourier embeddings, ``init_scale=1`` so that every
    branch counts). The reference's positional embedding takes ``999 t``, its Fourier embedding
    ``log(sigma)``: we pass the same numbers as ``c_noise``."""
    import torch

    from scoresde.models import build_net, resolve_net

    sys.path.insert(0, str(repo))
    _stand_ins()
    for embedding in ("positional", "fourier"):
        config = importlib.import_module(f"configs.vp.{config_name}").get_config()
        config.model.embedding_type, config.model.init_scale = embedding, 1.0
        ref = importlib.import_module("models.ncsnpp").NCSNpp(config).eval()
        name, params = resolve_net("ddpmpp_cifar10", {"embedding_type": embedding})
        net = build_net({"name": name, "event_shape": [3, 32, 32], **params}).eval()
        theirs = [t for key, t in ref.state_dict().items() if key != "sigmas"]
        net.load_state_dict(dict(zip(net.state_dict(), theirs)))
        x, noise = torch.randn(2, 3, 32, 32), torch.tensor([3.0, 700.0])
        if embedding == "fourier":
            noise = torch.tensor([0.05, 20.0])  # sigmas
        with torch.no_grad():
            diff = ref(x, noise) - net(x, noise.log() if embedding == "fourier" else noise)
        print(f"{embedding}: largest difference of the outputs {diff.abs().max():.2e}")


def _dumps(record: dict) -> str:
    """JSON with one tensor a line, so that a diff of the fixture reads."""
    head = {k: v for k, v in record.items() if k != "tensors"}
    lines = ",\n".join(json.dumps(t) for t in record["tensors"])
    return json.dumps(head, indent=1)[:-2] + f',\n "tensors": [\n{lines}\n]\n}}\n'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path, help="a checkout of yang-song/score_sde_pytorch")
    parser.add_argument("--compare", action="store_true",
                        help="also compare our outputs with the reference's on its weights")
    args = parser.parse_args()
    root = Path(__file__).resolve().parent.parent
    for name, out in CONFIGS.items():
        record = reference_shapes(args.repo, name)
        (root / out).parent.mkdir(parents=True, exist_ok=True)
        (root / out).write_text(_dumps(record))
        print(f"{name}: {record['num_parameters']:,} parameters, "
              f"{len(record['tensors'])} tensors -> {out}")
    if args.compare:
        compare_outputs(args.repo)


if __name__ == "__main__":
    main()
