"""Imputation and inpainting by replacement (Song et al. 2021, section 5 and appendix I.2).

After each step of a fixed-grid sampler, the known entries of ``x`` are replaced by a copy of
the known values diffused to the step's end, ``m(t_next) x_known + s(t_next) z``, so the unknown
entries are drawn by the reverse process alongside data that agrees with the observation; the
known entries of the result are the observed values. It works for data of any shape and any
mask, through the samplers' per-step callback.

Where it applies: the solvers with a per-step hook in :data:`~scoresde.sampling.api.SOLVERS`,
:data:`IMPUTATION_SOLVERS` (``em``, ``pc`` with every predictor and corrector, ``euler``,
``heun``, ``dpmpp_2m``, ``unipc``). Where it does not: ``ode`` and ``torchsde`` integrate the
whole interval in one call to scipy or torchsde, which have no hook between steps to replace the
known entries.

The replacement method is an approximation: the unknown entries follow the joint score at a
freshly noised copy of the known ones, not the exact conditional score, so a residual bias
remains where the known and unknown entries are strongly dependent at high noise
(``benchmarks/conditional.py`` measures it against exact conditionals of Gaussian mixtures).

:func:`~scoresde.sampling.inverse.solve_inverse` generalises it to any linear measurement
``y = A x + noise`` and adds methods without this bias (``smc``); ``impute`` is the mask
shorthand of its ``replacement`` method: the same replacement step
(:func:`~scoresde.sampling.inverse.replacement_callback` on
:class:`~scoresde.observe.KnownEntries`), with per-sample masks, per-sample seeds and the
few-step defaults of :func:`~scoresde.sample`.

The few-step defaults apply as in :func:`~scoresde.sample`: with the data's statistics
(``data_mean`` and ``data_cov`` or ``data_std``), ``unipc`` or ``dpmpp_2m`` at ``steps=10`` is
10 score calls. Their Gaussian head is the data's, not conditioned on the known entries (the
replacement after it puts those in place); at 10 calls it reaches what 50 Euler steps reach
(docs/benchmarks/few-step.md).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..observe import KnownEntries
from ..sde import SDE
from .api import IMPUTATION_SOLVERS, sample
from .common import Callback, Randomness, chain_callbacks, resolve_generator
from .inverse import replacement_callback

__all__ = ["impute", "imputation_callback", "IMPUTATION_SOLVERS"]


def imputation_callback(sde: SDE, values: torch.Tensor, mask,
                        generator: Randomness = None,
                        callback: Callback | None = None) -> Callback:
    """A sampler callback that replaces the known entries by ``m(t_next) values + s(t_next) z``:
    :func:`~scoresde.sampling.inverse.replacement_callback` for a mask, then ``callback``.

    Args:
        sde: the forward SDE.
        values: ``(B, *dims)``, the observed values (entries outside the mask are ignored).
        mask: booleans (or 0/1) of shape ``(B, *dims)`` or ``dims``, True where known.
        generator: randomness for the noise ``z`` (a ``torch.Generator`` or a
            :class:`~scoresde.sampling.PerSampleGenerator`).
        callback: a user callback to run after the replacement (it may return a new ``x``).

    Returns:
        ``callback(info) -> x``, to pass to a fixed-grid sampler.
    """
    return chain_callbacks(replacement_callback(sde, KnownEntries(values, mask), generator),
                           callback)


def impute(
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sde: SDE,
    values: torch.Tensor,
    mask,
    solver: str = "pc",
    steps: int = 1000,
    eps: float | None = None,
    generator: Randomness = None,
    callback: Callback | None = None,
    seeds: Sequence[int] | None = None,
    **kwargs,
) -> tuple[torch.Tensor, dict]:
    """Draw the unknown entries of ``values`` given the known ones (imputation, inpainting).

    Args:
        score_fn: score function ``score_fn(x, t)`` of the data (a guided one works too).
        sde: the forward SDE.
        values: ``(B, *dims)``: the observations, one per sample (repeat one observation ``B``
            times for ``B`` draws); entries outside the mask are ignored.
        mask: booleans (or 0/1) of shape ``(B, *dims)`` or ``dims``, True where known.
        solver: one of :data:`IMPUTATION_SOLVERS`.
        steps, eps, generator: as :func:`~scoresde.sample`.
        callback: called after each step, after the replacement (see
            :mod:`scoresde.sampling.common`).
        seeds: one integer per sample, instead of ``generator``: sample ``i`` (its prior, its
            solver noise and its replacement noise) depends only on ``seeds[i]``.
        **kwargs: passed to :func:`~scoresde.sample` (``denoise``, ``grid``, the solver's options,
            the data's statistics ``data_mean``, ``data_cov``, ``data_std`` for the few-step
            defaults).

    Returns:
        ``(x, info)``: ``x`` of ``values``' shape, equal to ``values`` where known, and the
        sampler's ``info``.

    Raises:
        ValueError: a solver without per-step hook (``ode``, ``torchsde``), a mask of the wrong
            shape or values, or the sampler's own errors.
    """
    if solver not in IMPUTATION_SOLVERS:
        raise ValueError(f"imputation needs a sampler with a per-step hook: one of "
                         f"{', '.join(IMPUTATION_SOLVERS)}, got {solver!r} (ode and torchsde "
                         "integrate in one call)")
    known = KnownEntries(values, mask)
    device = kwargs.pop("device", values.device)
    dtype = kwargs.pop("dtype", values.dtype)
    generator = resolve_generator(generator, seeds, values.shape, device)
    replace = chain_callbacks(replacement_callback(sde, known, generator), callback)
    x, info = sample(score_fn, sde, tuple(values.shape), solver=solver, steps=steps, eps=eps,
                     generator=generator, device=device, dtype=dtype, callback=replace, **kwargs)
    return torch.where(known.known, values.to(x.dtype), x), info
