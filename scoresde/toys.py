"""2D toy densities: seeded samplers, exact log-densities where known, differential entropies.

:data:`TOYS` is the one table of toy names: ``TOYS[name](n, generator) -> (n, 2)``, a fresh draw
from a seeded ``torch.Generator`` on the generator's device. :func:`toy_log_prob` gives the exact
data log-density where one is known and :func:`toy_entropy` the differential entropy in nats, the
floor that a model's held-out negative log-likelihood can reach. :mod:`scoresde.data` builds
data sets from these tables.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import torch

from .checks import check_choice, check_int
from .targets import GaussianMixture
from .utils import seed_from

__all__ = ["TOYS", "LABELLED_TOYS", "EIGHT_GAUSSIANS", "TEST_SEED", "toy_log_prob",
           "toy_entropy", "entropy_estimate"]

Sampler = Callable[[int, "torch.Generator | None"], torch.Tensor]
TEST_SEED = 2**31 - 1  # held-out points come from this seed; training never uses it


def _dev(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


# ----- noisy curves: the toys whose density is a 1D integral ------------------------------------
@dataclass(frozen=True)
class _Curves:
    """Points ``c_k(u) + noise * z`` with branch ``k`` chosen by ``weights`` and ``u ~ U(0, 1)``.

    The density is ``sum_k w_k int_0^1 N(x; c_k(u), noise^2 I) du``, computed by the midpoint rule.
    """

    curves: tuple[Callable[[torch.Tensor], torch.Tensor], ...]
    weights: tuple[float, ...]
    noise: float

    def log_prob(self, x: torch.Tensor, nodes: int = 1024) -> torch.Tensor:
        u = (torch.arange(nodes, dtype=torch.float64) + 0.5) / nodes
        x = x.to(torch.float64)
        terms = []
        for w, curve in zip(self.weights, self.curves):
            c = curve(u)  # (nodes, 2)
            d2 = torch.cdist(x, c) ** 2  # (B, nodes)
            terms.append(torch.logsumexp(-d2 / (2 * self.noise**2), 1) + math.log(w / nodes))
        return torch.logsumexp(torch.stack(terms, 1), 1) - math.log(2 * math.pi * self.noise**2)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        n, dev = check_int("n", n, low=1), _dev(generator)
        w = torch.tensor(self.weights, dtype=torch.float64, device=dev)
        k = torch.multinomial(w, n, replacement=True, generator=generator)
        u = torch.rand(n, dtype=torch.float64, generator=generator, device=dev).cpu()
        x = torch.zeros(n, 2, dtype=torch.float64)
        for i, curve in enumerate(self.curves):
            sel = (k == i).cpu()
            x[sel] = curve(u[sel])
        z = torch.randn(n, 2, dtype=torch.float64, generator=generator, device=dev).cpu()
        return (x + self.noise * z).float().to(dev)


def _arc(fn):
    return lambda u: torch.stack(fn(u), 1)


# moons: scikit-learn's two half circles, centred and scaled by 2.
_MOONS_SHIFT, _MOONS_SCALE = (0.5, 0.25), 2.0
_MOONS = _Curves(
    (_arc(lambda u: ((torch.cos(math.pi * u) - 0.5) * 2, (torch.sin(math.pi * u) - 0.25) * 2)),
     _arc(lambda u: ((0.5 - torch.cos(math.pi * u)) * 2, (0.25 - torch.sin(math.pi * u)) * 2))),
    (0.5, 0.5), 0.1 * _MOONS_SCALE)
# circles: scikit-learn's two concentric circles (factor 0.5), scaled by 3.
_CIRCLES = _Curves(
    (_arc(lambda u: (3 * torch.cos(2 * math.pi * u), 3 * torch.sin(2 * math.pi * u))),
     _arc(lambda u: (1.5 * torch.cos(2 * math.pi * u), 1.5 * torch.sin(2 * math.pi * u)))),
    (0.5, 0.5), 0.08 * 3)
# swissroll: scikit-learn's roll (noise 1) seen from above, divided by 5.
_SWISS_T = lambda u: 1.5 * math.pi * (1 + 2 * u)  # noqa: E731
_SWISSROLL = _Curves(
    (_arc(lambda u: (_SWISS_T(u) * torch.cos(_SWISS_T(u)) / 5, _SWISS_T(u) * torch.sin(_SWISS_T(u))
                     / 5)),), (1.0,), 1.0 / 5)
# rings: four concentric circles of radii 1, 2, 3, 4 (times 0.9) with equal mass.
_RINGS = _Curves(tuple(
    _arc(lambda u, r=r: (0.9 * r * torch.cos(2 * math.pi * u),
                         0.9 * r * torch.sin(2 * math.pi * u)))
    for r in (1, 2, 3, 4)), (0.25,) * 4, 0.08)
# 2spirals: two arms of 540 degrees, arm length ~ sqrt(u), Gaussian noise, divided by 3.
_SPIRAL_N = lambda u: torch.sqrt(u) * 3 * math.pi  # noqa: E731
_SPIRALS = _Curves(
    (_arc(lambda u: (-torch.cos(_SPIRAL_N(u)) * _SPIRAL_N(u) / 3,
                     torch.sin(_SPIRAL_N(u)) * _SPIRAL_N(u) / 3)),
     _arc(lambda u: (torch.cos(_SPIRAL_N(u)) * _SPIRAL_N(u) / 3,
                     -torch.sin(_SPIRAL_N(u)) * _SPIRAL_N(u) / 3))),
    (0.5, 0.5), 0.3 / 3)

EIGHT_GAUSSIANS = GaussianMixture.ring(k=8, radius=4 / math.sqrt(2), std=0.5 / math.sqrt(2))


def _moons(n, generator=None):
    from sklearn.datasets import make_moons
    x, _ = make_moons(check_int("n", n, low=1), noise=0.1, random_state=seed_from(generator))
    x = (torch.from_numpy(x) - torch.tensor(_MOONS_SHIFT, dtype=torch.float64)) * _MOONS_SCALE
    return x.float().to(_dev(generator))


def _circles(n, generator=None):
    from sklearn.datasets import make_circles
    x, _ = make_circles(check_int("n", n, low=1), noise=0.08, factor=0.5,
                        random_state=seed_from(generator))
    return (3 * torch.from_numpy(x)).float().to(_dev(generator))


def _swissroll(n, generator=None):
    from sklearn.datasets import make_swiss_roll
    x, _ = make_swiss_roll(check_int("n", n, low=1), noise=1.0, random_state=seed_from(generator))
    return (torch.from_numpy(x[:, [0, 2]]) / 5).float().to(_dev(generator))


def _checkerboard(n, generator=None):
    """Uniform on 8 of the 16 squares of side 2 tiling ``[-4, 4]^2`` (area 32)."""
    n, dev = check_int("n", n, low=1), _dev(generator)
    x1 = torch.rand(n, generator=generator, device=dev) * 4 - 2
    col = torch.randint(0, 2, (n,), generator=generator, device=dev) * 2
    x2 = torch.rand(n, generator=generator, device=dev) - col + torch.floor(x1) % 2
    return torch.stack([x1, x2], 1) * 2


def _checkerboard_log_prob(x):
    squares = torch.floor(x[:, 0] / 2) + torch.floor(x[:, 1] / 2)
    inside = (x.abs() <= 4).all(1) & (squares % 2 == 0)
    out = torch.full(inside.shape, -math.inf, dtype=torch.float64, device=x.device)
    return out.masked_fill(inside, -math.log(32.0))


def _pinwheel(n, generator=None):
    """Five arms: Gaussian blobs bent by an angle growing exponentially with the radius."""
    n, dev = check_int("n", n, low=1), _dev(generator)
    feats = torch.randn(n, 2, generator=generator, device=dev) * torch.tensor([0.3, 0.1],
                                                                               device=dev)
    feats[:, 0] += 1.0
    arm = torch.randint(0, 5, (n,), generator=generator, device=dev)
    angle = arm * 2 * math.pi / 5 + 0.25 * torch.exp(feats[:, 0])
    rot = torch.stack([torch.cos(angle), -torch.sin(angle), torch.sin(angle), torch.cos(angle)], 1)
    return 2 * torch.einsum("bij,bj->bi", rot.reshape(n, 2, 2), feats)


TOYS: dict[str, Sampler] = {
    "8gaussians": EIGHT_GAUSSIANS.sample,
    "checkerboard": _checkerboard,
    "swissroll": _swissroll,
    "moons": _moons,
    "circles": _circles,
    "rings": _RINGS.sample,
    "pinwheel": _pinwheel,
    "2spirals": _SPIRALS.sample,
}

# Toys with class labels: name -> (``sampler(n, generator) -> (x, labels)``, number of classes).
# 8gaussians' classes are its components.
LABELLED_TOYS: dict[str, tuple[Callable, int]] = {
    "8gaussians": (functools.partial(EIGHT_GAUSSIANS.sample, return_labels=True), 8),
}

_LOG_PROBS = {
    "8gaussians": EIGHT_GAUSSIANS.log_prob, "checkerboard": _checkerboard_log_prob,
    "swissroll": _SWISSROLL.log_prob, "moons": _MOONS.log_prob, "circles": _CIRCLES.log_prob,
    "rings": _RINGS.log_prob, "2spirals": _SPIRALS.log_prob,
}


def toy_log_prob(name: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The exact data log-density ``(B, 2) -> (B,)`` of a toy, or None where it is not known.

    Curve toys (moons, circles, swissroll, rings, 2spirals) integrate the Gaussian noise along the
    curve by the midpoint rule; moons and circles use the continuous limit of scikit-learn's evenly
    spaced points. Pinwheel has no closed form: None.

    Raises:
        ValueError: ``name`` is not one of :data:`TOYS`.
    """
    return _LOG_PROBS.get(check_choice("toy", name, TOYS))


def entropy_estimate(sampler: Callable[[int, torch.Generator], torch.Tensor],
                     log_prob: Callable[[torch.Tensor], torch.Tensor],
                     samples: int = 50_000) -> float:
    """``-mean log p(x)`` in nats over ``samples`` points of ``sampler`` drawn with a fixed seed.

    Args:
        sampler: ``sampler(n, generator) -> (n, *event_shape)``.
        log_prob: the exact log-density ``(B, *event_shape) -> (B,)`` of what ``sampler`` draws.
        samples: number of points; the Monte Carlo standard error is
            ``std(log p) / sqrt(samples)``.
    """
    x = sampler(samples, torch.Generator().manual_seed(TEST_SEED - 1))
    return -float(torch.cat([log_prob(c).double() for c in x.split(4096)]).mean())


@functools.lru_cache(maxsize=None)
def toy_entropy(name: str, samples: int = 50_000) -> float | None:
    """Differential entropy of a toy in nats, or None where it is not known (pinwheel).

    Checkerboard: ``ln 32`` exactly (uniform on area 32). The others: :func:`entropy_estimate`
    with the exact density of :func:`toy_log_prob`, a standard error of 0.003-0.005 nats.
    Computed on first use (seconds) and cached.

    Raises:
        ValueError: ``name`` is not one of :data:`TOYS`.
    """
    log_prob = toy_log_prob(name)
    if name == "checkerboard":
        return math.log(32.0)
    return None if log_prob is None else entropy_estimate(TOYS[name], log_prob, samples)
