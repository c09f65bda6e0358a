"""Named networks: the paper's DDPM++ and NCSN++ on CIFAR-10, small DDPM++ for a CPU, in one table.

``train(net="ddpmpp_cifar10")`` builds the preset's network; ``net_params`` override single
keywords of it. A run's ``config.json`` holds the resolved network (``"name": "ddpmpp"`` and every
keyword), so a preset changed later never changes a saved run.
"""

from __future__ import annotations

__all__ = ["NET_PRESETS", "resolve_net"]

_PAPER = dict(name="ddpmpp", nf=128, ch_mult=[1, 2, 2, 2], num_res_blocks=4,
              attn_resolutions=[16], dropout=0.1, embedding_type="positional", fourier_scale=16.0,
              init_scale=0.0, skip_rescale=True)
_SMALL = dict(name="ddpmpp", nf=32, num_res_blocks=1, dropout=0.1, embedding_type="fourier",
              fourier_scale=16.0, init_scale=0.0, skip_rescale=True)

# Parameter counts for 3 channels without labels (tests/test_ddpmpp.py checks them).
NET_PRESETS: dict[str, dict] = {
    # Song et al. 2021, configs/vp/cifar10_ddpmpp_continuous.py: 61,804,419 parameters.
    "ddpmpp_cifar10": _PAPER,
    # ... cifar10_ddpmpp_deep_continuous.py (8 blocks per resolution): 106,632,579 parameters.
    "ddpmpp_cifar10_deep": dict(_PAPER, num_res_blocks=8),
    # configs/ve/cifar10_ncsnpp_continuous.py: NCSN++ cont., DDPM++ with FIR resampling, the
    # residual input pyramid and Fourier features: 62,758,787 parameters (+ 128 fixed features).
    "ncsnpp_cifar10": dict(_PAPER, embedding_type="fourier", fir_kernel=[1, 3, 3, 1],
                           progressive_input="residual"),
    # ... cifar10_ncsnpp_deep_continuous.py: 107,586,947 parameters.
    "ncsnpp_cifar10_deep": dict(_PAPER, num_res_blocks=8, embedding_type="fourier",
                                fir_kernel=[1, 3, 3, 1], progressive_input="residual"),
    # Small DDPM++ for two CPU cores: 8x8 (digits), 16x16 and 32x32 images.
    "ddpmpp_small8": dict(_SMALL, ch_mult=[1, 2], attn_resolutions=[4]),
    "ddpmpp_small16": dict(_SMALL, ch_mult=[1, 2, 2], attn_resolutions=[8]),
    "ddpmpp_small32": dict(_SMALL, ch_mult=[1, 2, 2, 2], attn_resolutions=[8]),
}


def resolve_net(net: str, net_params: dict | None = None) -> tuple[str, dict]:
    """``(name, keywords)`` of a network name of ``NETS`` or a preset of :data:`NET_PRESETS`,
    with ``net_params`` over the preset's keywords."""
    if net in NET_PRESETS:
        params = dict(NET_PRESETS[net])
        return params.pop("name"), {**params, **(net_params or {})}
    return net, dict(net_params or {})
