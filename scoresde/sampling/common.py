"""Pieces every sampler shares: the grid's coefficients, noise, callbacks, Tweedie's estimate.

Noise: every sampler draws its ``N(0, I)`` through :func:`randn`, from a ``torch.Generator``
(one stream for the whole batch, so a sample's noise depends on the batch size) or from a
:class:`PerSampleGenerator` (one stream per sample, from ``seeds``: sample ``i``'s noise depends
only on ``seeds[i]``, whatever the batch size or the other seeds).

:class:`CountedScore` and :func:`time_vector` live in :mod:`scoresde.utils` (the likelihood
uses them too) and are re-exported here.

The callback contract (all fixed-grid samplers): after step ``i`` the sampler calls
``callback({"i": i, "t": t_cur, "t_next": t_next, "x": x, "denoised": x0_hat})`` where ``x`` is
the state at ``t_next`` and ``x0_hat`` the sampler's latest data estimate (``None`` when it made
none). If the callback returns a tensor, that tensor replaces ``x`` for the following steps. This
is the hook for imputation and inpainting: replace the known entries of ``x`` by a copy of the
data diffused to ``t_next`` with ``sde.marginal_prob``. Classifier-free guidance needs no hook:
it is a score function that mixes a conditional and an unconditional score.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch

from ..sde import SDE
from ..utils import CountedScore, time_vector

__all__ = ["CountedScore", "GridCoeffs", "Callback", "NoiseSampler", "PerSampleGenerator",
           "Randomness", "randn", "resolve_generator", "check_seeds", "run_callback",
           "offset_callback",
           "default_noise", "tweedie", "check_grid", "time_vector"]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[dict], Optional[torch.Tensor]]
NoiseSampler = Callable[[float, float], torch.Tensor]


@dataclass
class GridCoeffs:
    """The marginals' coefficients on a time grid, as Python floats (cheap inside the loop).

    ``t``, ``m``, ``s`` are lists of length ``steps + 1``; ``sigma = s / m``. (The drift and
    diffusion come from the reverse-time SDE, ``sde.reverse(score_fn, times=ts)``.)
    """

    t: list
    m: list
    s: list
    sigma: list

    @classmethod
    def build(cls, sde: SDE, ts: torch.Tensor) -> "GridCoeffs":
        ts = ts.detach().to("cpu", torch.float64)
        m, s = sde.marginal_coeffs(ts)
        return cls(ts.tolist(), m.tolist(), s.tolist(), (s / m).tolist())

    def transition(self, i: int) -> tuple[float, float]:
        """``(a, b^2)`` of the forward step from ``t[i+1]`` to ``t[i]``: ``x_i = a x_{i+1} + b z``.

        From the marginals: ``a = m_i / m_{i+1}`` and ``b^2 = s_i^2 - a^2 s_{i+1}^2``
        (DDPM's ``sqrt(1 - beta_i)`` and ``beta_i`` for VP; ``1`` and ``sigma_i^2 -
        sigma_{i+1}^2`` for VE).
        """
        a = self.m[i] / self.m[i + 1]
        return a, max(self.s[i] ** 2 - a**2 * self.s[i + 1] ** 2, 0.0)


class PerSampleGenerator:
    """One ``torch.Generator`` per sample: row ``i`` of every draw comes from ``seeds[i]`` only.

    It stands wherever a sampler takes ``generator``. Each sample's generator lives on
    ``device`` (CPU or CUDA) and fills a buffer of ``chunk`` normals at a time (or one draw's
    worth, if larger); draws are served from the buffers in order. The buffer's size depends on
    nothing but ``chunk``, so sample ``i``'s stream is the same in a batch of 1 or of 1000,
    while the cost is ``B`` generator calls per ``chunk / D`` draws of ``D`` entries a sample,
    not per draw.

    Args:
        seeds: one integer per sample, ``>= 0`` (duplicates give identical streams).
        device: where the generators and the draws live.
        chunk: normals drawn per generator call and sample.

    Raises:
        TypeError: ``seeds`` is not a sequence of integers.
        ValueError: ``seeds`` is empty or holds a negative integer.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu",
                 chunk: int = 4096):
        self.seeds = check_seeds(seeds)
        self.chunk = int(chunk)
        self.generators = []
        for seed in self.seeds:
            gen = torch.Generator(device=torch.device(device))
            gen.manual_seed(seed)
            self.generators.append(gen)
        self.device = self.generators[0].device  # "cuda" resolved to "cuda:N"
        self._buffers: dict[torch.dtype, torch.Tensor] = {}  # (B, n) normals not yet served

    def __len__(self) -> int:
        return len(self.seeds)

    def randn(self, shape, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``N(0, I)`` of ``shape = (B, *dims)``, ``B = len(seeds)``, on :attr:`device`."""
        shape = tuple(shape)
        if not shape or shape[0] != len(self):
            raise ValueError(f"a draw of shape {shape} from {len(self)} per-sample generators: "
                             f"the first axis must be {len(self)}")
        dtype = dtype or torch.get_default_dtype()
        per = math.prod(shape[1:])
        buf = self._buffers.get(dtype)
        if buf is None or buf.shape[1] < per:
            fresh = torch.stack([torch.randn(max(self.chunk, per), generator=g, dtype=dtype,
                                             device=self.device) for g in self.generators])
            buf = fresh if buf is None else torch.cat([buf, fresh], dim=1)
        self._buffers[dtype] = buf[:, per:]
        return buf[:, :per].reshape(shape)


def check_seeds(seeds) -> list[int]:
    """``seeds`` as a list of Python ints after checking it is a non-empty sequence of ints >= 0.

    Raises:
        TypeError: not a sequence of integers (a bool, float or string among them included).
        ValueError: empty, or a negative integer.
    """
    if isinstance(seeds, torch.Tensor):
        seeds = seeds.tolist()
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) or not all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in seeds):
        raise TypeError(f"seeds must be a sequence of integers, one per sample, got "
                        f"{seeds!r:.60}")
    if not seeds or min(seeds) < 0:
        raise ValueError(f"seeds must hold one integer >= 0 per sample, got {list(seeds)!r:.60}")
    return [int(s) for s in seeds]


Randomness = Union[torch.Generator, PerSampleGenerator, None]


def randn(shape, generator: Randomness, *, dtype: torch.dtype | None = None,
          device: torch.device | str | None = None) -> torch.Tensor:
    """``N(0, I)`` of ``shape`` from a ``torch.Generator``, a :class:`PerSampleGenerator`
    (on its own device; ``device`` must agree) or torch's global generator (``None``)."""
    if isinstance(generator, PerSampleGenerator):
        if device is not None and torch.device(device) != generator.device:
            raise ValueError(f"per-sample generators on {generator.device} cannot draw on "
                             f"{torch.device(device)}")
        return generator.randn(shape, dtype=dtype)
    return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)


def resolve_generator(generator: Randomness, seeds: Sequence[int] | None, shape,
                      device: torch.device | str | None = None) -> Randomness:
    """``generator``, or a :class:`PerSampleGenerator` from ``seeds`` on ``device`` (default
    CPU), after checking that it fits ``shape = (B, *dims)`` and ``device``.

    Raises:
        ValueError: both ``seeds`` and ``generator``; not one seed per sample; another device.
        TypeError: ``generator`` of another type; ``seeds`` not a sequence of integers.
    """
    if seeds is not None:
        if generator is not None:
            raise ValueError("give seeds (one per sample) or generator (one for the batch), "
                             "not both")
        generator = PerSampleGenerator(seeds, "cpu" if device is None else device)
    if isinstance(generator, PerSampleGenerator):
        if len(generator) != tuple(shape)[0]:
            raise ValueError(f"seeds must hold one integer per sample: {len(generator)} seeds "
                             f"for shape {tuple(shape)}")
        if device is not None and torch.empty(0, device=device).device != generator.device:
            raise ValueError(f"device {device} differs from the per-sample generators' "
                             f"{generator.device}")
    elif generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or a PerSampleGenerator, got "
                        f"{type(generator).__name__}")
    return generator


def default_noise(x: torch.Tensor, generator: Randomness) -> NoiseSampler:
    """A noise sampler drawing fresh ``N(0, I)`` of ``x``'s shape, dtype and device each call."""

    def noise(t_cur: float, t_next: float) -> torch.Tensor:
        return randn(x.shape, generator, dtype=x.dtype, device=x.device)

    return noise


def offset_callback(callback: Callback | None, start: int) -> Callback | None:
    """The callback with the step index ``i`` counted from ``start``: for a solver whose steps
    come after others' (the few-step head's one, an earlier segment's)."""
    if callback is None or start == 0:
        return callback
    return lambda d: callback({**d, "i": d["i"] + start})


def chain_callbacks(*callbacks: Callback | None) -> Callback:
    """One callback running ``callbacks`` in turn (``None`` skipped), each seeing the ``x`` the
    one before returned; it returns the last ``x``."""

    def call(d: dict) -> torch.Tensor:
        for cb in callbacks:
            if cb is not None:
                out = cb(d)
                d = d if out is None else {**d, "x": out}
        return d["x"]

    return call


def run_callback(callback: Callback | None, x: torch.Tensor, **fields) -> torch.Tensor:
    """Call ``callback`` with ``x`` and ``fields``; return its tensor if it gave one, else ``x``."""
    if callback is None:
        return x
    out = callback({"x": x, **fields})
    if out is None:
        return x
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        raise TypeError(f"a callback may return None or a tensor of shape {tuple(x.shape)}, "
                        f"got {type(out).__name__}")
    return out


def tweedie(score_fn: ScoreFn, x: torch.Tensor, t: float, m: float, s: float) -> torch.Tensor:
    """Tweedie's posterior mean ``E[x_0 | x_t = x] = (x + s^2 score(x, t)) / m``; shape of ``x``."""
    return (x + s**2 * score_fn(x, time_vector(t, x))) / m


def check_grid(sde: SDE, ts: torch.Tensor) -> torch.Tensor:
    """Return ``ts`` as float64 on the CPU after checking it decreases inside ``(0, T]``."""
    ts = torch.as_tensor(ts).detach().to("cpu", torch.float64)
    ok = ts.ndim == 1 and ts.numel() >= 2 and bool((ts[1:] < ts[:-1]).all())
    if not ok or float(ts[-1]) <= 0 or float(ts[0]) > sde.T * (1 + 1e-12):
        raise ValueError(f"ts must be a 1D grid of >= 2 strictly decreasing times in (0, T] = "
                         f"(0, {sde.T:g}], got {ts.tolist()[:6]}")
    return ts

