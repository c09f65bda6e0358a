"""Log-likelihoods, bits/dim and latent codes through the probability-flow ODE.

The probability-flow ODE (Song et al. 2021, eq. 13) ``dx/dt = v(x, t) = f(t) x - g(t)^2 / 2
score(x, t)`` carries data ``x`` at ``t = eps`` to a latent ``z`` at ``t = T``, and the
instantaneous change of variables (Chen et al. 2018) gives

    log p_eps(x) = log p_T(z) + int_eps^T div v(x_t, t) dt,
    div v = f(t) D - g(t)^2 / 2 div score(x_t, t).

The drift ``v`` and its coefficients ``f`` and ``-g^2 / 2`` come from ``sde.reverse(score_fn,
probability_flow=True)``. Both integrals are solved together by the one scipy adapter
(:mod:`scoresde.scipy_ode`). ``div score`` is the exact trace of
the Jacobian (``D`` vector-Jacobian products, one per unit vector) or Hutchinson's estimate
``v^T J v`` with probes ``v`` drawn once and held fixed over the solve.

Error control is per sample: scipy measures the error of the whole state as one root mean square,
so a batch of ``B`` samples solved as one system lets a single sample's error be ``sqrt(B)`` times
the tolerance. Dividing the tolerances by ``sqrt(B)`` makes scipy's criterion imply that every
sample's own RMS error estimate is within ``rtol``/``atol`` at every step, as if each were solved
alone, for about ``B^(1/10)`` times more steps with RK45 (fifth order) instead of ``B`` solves.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .checks import check_choice, check_int, check_number
from .scipy_ode import solve_ode
from .sde import SDE, ReverseSDE
from .utils import CountedScore, batch_sum, time_vector

__all__ = ["log_likelihood", "bits_per_dim", "encode", "decode", "RowsOf", "DIVERGENCES",
           "HUTCHINSON", "ERROR_NORMS", "EXACT_DIVERGENCE_MAX_DIM"]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

DIVERGENCES = ("auto", "exact", "hutchinson")
HUTCHINSON = ("rademacher", "gaussian")
ERROR_NORMS = ("sample", "batch")
# divergence="auto" is exact up to this many entries per sample, Hutchinson above. The exact
# trace costs D backward passes per evaluation, Hutchinson one per probe: up to 64 that is the
# price of 64 probes, which buy only a standard error of |J|_F sqrt(2 / 64) (Rademacher), while
# the exact trace has none; above it (images) the exact trace's cost grows out of reach.
EXACT_DIVERGENCE_MAX_DIM = 64


# ----- input checks ---------------------------------------------------------------------------
def _check_tolerances(rtol, atol) -> None:
    check_number("rtol", rtol, 0, low_open=True)
    check_number("atol", atol, 0, low_open=True)


def _check_flow_inputs(score_fn, sde, x, eps, error_norm) -> float:
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable as score_fn(x, t), got {type(score_fn)}")
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scoresde.SDE, got {type(sde).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (B, *dims), got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}; "
                         "for integer images use bits_per_dim")
    if x.ndim < 2 or x.shape[0] == 0 or x[0].numel() == 0:
        raise ValueError(f"x must have shape (B, *dims) with B >= 1, got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x must be finite; it holds NaN or infinite values")
    check_choice("error_norm", error_norm, ERROR_NORMS)
    return sde.check_eps(eps)


def _tolerances(rtol: float, atol: float, batch: int, error_norm: str) -> tuple[float, float]:
    """scipy's tolerances giving per-sample control (``"sample"``) or scipy's own (``"batch"``)."""
    scale = math.sqrt(batch) if error_norm == "sample" else 1.0
    return rtol / scale, atol / scale


# ----- the divergence ----------------------------------------------------------------------------
class RowsOf:
    """The randomness of some rows of a larger batch, for :func:`log_likelihood` and
    :func:`bits_per_dim`'s ``generator``: each draw is the whole batch's from ``generator``, of
    which the rows ``index`` (a 1D index tensor into the ``batch`` rows) are kept. One rank's
    share of the points then gets the probes and the noise that the whole batch would give it.
    """

    def __init__(self, generator: torch.Generator | None, batch: int, index: torch.Tensor):
        self.generator, self.batch, self.index = generator, batch, torch.as_tensor(index)

    def rows(self, drawn: torch.Tensor, axis: int) -> torch.Tensor:
        return drawn.index_select(axis, self.index.to(drawn.device))


def _probe_vectors(kind: str, probes: int, x: torch.Tensor, generator) -> torch.Tensor:
    """Hutchinson probes of shape ``(probes, B, *dims)``, Rademacher or standard Gaussian."""
    share = generator if isinstance(generator, RowsOf) else None
    if share is not None:
        generator = share.generator
    shape = (probes, share.batch if share else x.shape[0], *x.shape[1:])
    if kind == "gaussian":
        drawn = torch.randn(shape, generator=generator, dtype=x.dtype, device=x.device)
    else:
        drawn = (2 * torch.randint(0, 2, shape, generator=generator, device=x.device) - 1)
        drawn = drawn.to(x.dtype)
    return drawn if share is None else share.rows(drawn, 1)


def _basis_vectors(x: torch.Tensor) -> torch.Tensor:
    """The ``D`` unit vectors of one sample, repeated over the batch: ``(D, B, *dims)``."""
    dim = x[0].numel()
    eye = torch.eye(dim, dtype=x.dtype, device=x.device).reshape(dim, 1, *x.shape[1:])
    return eye.expand(dim, *x.shape)


def _score_and_forms(
    score_fn: ScoreFn, x: torch.Tensor, t: torch.Tensor, vectors: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The score ``(B, *dims)`` and ``v_k^T J v_k`` for each vector ``(K, B)``, ``J = d score/dx``.

    Samples are independent, so one vector-Jacobian product of the batched score with cotangent
    ``v_k`` gives every sample's ``J_b^T v_kb`` at once: ``K`` backward passes through one graph.
    (Measured faster on CPU than ``torch.func.vmap`` over the VJP, and works for any module.)
    """
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        score = score_fn(x_in, t)
        forms = torch.zeros(vectors.shape[:2], dtype=x.dtype, device=x.device)
        if score.requires_grad:
            for k, v in enumerate(vectors):
                (vjp,) = torch.autograd.grad(score, x_in, v, retain_graph=k < len(vectors) - 1,
                                             allow_unused=True)
                if vjp is not None:
                    forms[k] = batch_sum(vjp * v)
    return score.detach(), forms


# ----- the flow ----------------------------------------------------------------------------------
def _clamp(flow: ReverseSDE, t: float) -> float:
    """scipy's time, clamped into ``[0, T]`` (its last stage can overshoot by a rounding)."""
    return min(max(t, 0.0), flow.T)


def _integrate_flow(score_fn, sde, x, t0, t1, method, rtol, atol, error_norm) -> torch.Tensor:
    """Carry ``x`` (shape ``(B, *dims)``) along the probability-flow ODE from ``t0`` to ``t1``."""
    _check_tolerances(rtol, atol)
    rtol, atol = _tolerances(rtol, atol, x.shape[0], error_norm)
    flow = sde.reverse(score_fn, probability_flow=True)

    def rhs(t: float, y: torch.Tensor) -> torch.Tensor:
        return flow.drift(y, _clamp(flow, t))

    y1, _ = solve_ode(rhs, x, t0, t1, method=method, rtol=rtol, atol=atol)
    return y1


def log_likelihood(
    score_fn: ScoreFn,
    sde: SDE,
    x: torch.Tensor,
    eps: float = 1e-5,
    method: str = "RK45",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    divergence: str = "auto",
    probes: int = 1,
    hutchinson: str = "rademacher",
    generator: torch.Generator | None = None,
    prior_logp: Callable[[torch.Tensor], torch.Tensor] | None = None,
    error_norm: str = "sample",
    callback: Callable[[dict], None] | None = None,
) -> tuple[torch.Tensor, dict]:
    """Log-density of ``x`` at ``t = eps`` through the probability-flow ODE (Song et al. 2021, D.2).

    Args:
        score_fn: score function ``score_fn(x, t)``, ``x`` of shape ``(B, *dims)``, ``t`` ``(B,)``.
        sde: the forward SDE the score belongs to.
        x: data, floating point, shape ``(B, *dims)``.
        eps: start time of the flow, in ``(0, T)``; ``logp`` is the density of ``p_eps``.
        method: scipy ``solve_ivp`` method (``RK45``, ``DOP853``, ...).
        rtol, atol: tolerances of each sample's error (see ``error_norm``).
        divergence: ``"exact"`` trace of the Jacobian, ``"hutchinson"`` estimate, or ``"auto"``:
            exact when a sample has at most ``EXACT_DIVERGENCE_MAX_DIM`` (64) entries.
        probes: number of Hutchinson probes, fixed over the solve (ignored when exact).
        hutchinson: probe distribution, ``"rademacher"`` or ``"gaussian"``.
        generator: random source of the probes.
        prior_logp: ``z -> (B,)`` log-density at ``T``; ``sde.prior_logp`` when None.
        error_norm: ``"sample"`` holds every sample's error within the tolerances (they are
            divided by ``sqrt(B)`` for scipy); ``"batch"`` gives them to scipy as they are, so
            they bound the RMS over the whole batch, as score_sde does.
        callback: ``callback({"t": t, "nfe": nfe})`` after each evaluation of the flow at time
            ``t`` (the solver's trial points go back and forth a little), for progress.

    Returns:
        ``(logp, info)``: ``logp`` in nats, shape ``(B,)``, in ``x``'s dtype; ``info`` has
        ``nfe`` (calls of ``score_fn``), ``prior_logp`` and ``divergence_integral`` (``(B,)``,
        summing to ``logp``), ``stderr`` (``(B,)``: the Hutchinson standard error from the spread
        over probes, NaN with one probe, 0 when exact), ``z`` (the latent), ``divergence``,
        ``probes``, ``steps``.

    Raises:
        ValueError: integer or non-finite ``x``, ``eps`` outside ``(0, T)``, unknown
            ``divergence``/``hutchinson``/``error_norm``/``method``, ``probes`` < 1.
        TypeError: ``score_fn`` or ``prior_logp`` is not callable.
    """
    eps = _check_flow_inputs(score_fn, sde, x, eps, error_norm)
    _check_tolerances(rtol, atol)
    check_choice("divergence", divergence, DIVERGENCES)
    check_choice("hutchinson", hutchinson, HUTCHINSON)
    probes = check_int("probes", probes, 1)
    prior_logp = sde.prior_logp if prior_logp is None else prior_logp
    if not callable(prior_logp):
        raise TypeError(f"prior_logp must be callable as prior_logp(z) -> (B,), got {prior_logp!r}")
    batch, dim = x.shape[0], x[0].numel()
    if divergence == "auto":
        divergence = "exact" if dim <= EXACT_DIVERGENCE_MAX_DIM else "hutchinson"
    exact = divergence == "exact"
    vectors = _basis_vectors(x) if exact else _probe_vectors(hutchinson, probes, x, generator)
    counted = CountedScore(score_fn)
    flow = sde.reverse(counted, probability_flow=True)
    n_int = 1 if exact else probes  # integrals carried: the trace, or one per probe

    def rhs(t: float, y: torch.Tensor) -> torch.Tensor:
        t = _clamp(flow, t)
        x_t = y[:, :dim].reshape(x.shape)
        score, forms = _score_and_forms(counted, x_t, time_vector(t, x_t), vectors)
        velocity = flow.drift(x_t, t, score=score)  # f x + c score, c = -g^2 / 2
        f, c, _ = flow.coeffs(t)
        div_score = forms.sum(0, keepdim=True) if exact else forms  # (n_int, B)
        div_v = f * dim + c * div_score
        if callback is not None:
            callback({"t": t, "nfe": counted.calls})
        return torch.cat([velocity.reshape(batch, dim), div_v.T], dim=1)

    y0 = torch.cat([x.detach().reshape(batch, dim), x.new_zeros(batch, n_int)], dim=1)
    rtol_s, atol_s = _tolerances(rtol, atol, batch, error_norm)
    y1, ode = solve_ode(rhs, y0, eps, sde.T, method=method, rtol=rtol_s, atol=atol_s)
    z, integrals = y1[:, :dim].reshape(x.shape), y1[:, dim:]
    prior = prior_logp(z)
    delta = integrals.mean(1)
    if exact:
        stderr = torch.zeros_like(delta)
    elif n_int > 1:
        stderr = integrals.std(1) / math.sqrt(n_int)
    else:
        stderr = torch.full_like(delta, math.nan)
    info = {"nfe": counted.calls, "prior_logp": prior, "divergence_integral": delta,
            "stderr": stderr, "z": z, "divergence": divergence, "probes": 0 if exact else probes,
            "steps": ode["steps"]}
    return prior + delta, info


def encode(
    score_fn: ScoreFn, sde: SDE, x: torch.Tensor, eps: float = 1e-5, method: str = "RK45",
    rtol: float = 1e-6, atol: float = 1e-6, error_norm: str = "sample",
) -> torch.Tensor:
    """Latent code of ``x``: the probability-flow ODE solved from ``t = eps`` to ``T``.

    Args:
        score_fn, sde, eps, method, error_norm: as in :func:`log_likelihood`.
        rtol, atol: per-sample tolerances, tighter than the likelihood's by default so that
            ``decode(encode(x))`` returns ``x`` to about 1e-5.
        x: data, floating point, shape ``(B, *dims)``.

    Returns:
        ``z`` of the shape and dtype of ``x``; :func:`decode` maps it back.
    """
    eps = _check_flow_inputs(score_fn, sde, x, eps, error_norm)
    return _integrate_flow(score_fn, sde, x, eps, sde.T, method, rtol, atol, error_norm)


def decode(
    score_fn: ScoreFn, sde: SDE, z: torch.Tensor, eps: float = 1e-5, method: str = "RK45",
    rtol: float = 1e-6, atol: float = 1e-6, error_norm: str = "sample",
) -> torch.Tensor:
    """Data from a latent code: the probability-flow ODE solved from ``T`` down to ``t = eps``.

    Args:
        score_fn, sde, eps, method, rtol, atol, error_norm: as in :func:`encode`.
        z: latent codes, floating point, shape ``(B, *dims)`` (e.g. from :func:`encode`, or
            ``sde.prior_sampling``).

    Returns:
        ``x`` of the shape and dtype of ``z``.
    """
    eps = _check_flow_inputs(score_fn, sde, z, eps, error_norm)
    return _integrate_flow(score_fn, sde, z, sde.T, eps, method, rtol, atol, error_norm)


def bits_per_dim(
    score_fn: ScoreFn,
    sde: SDE,
    x: torch.Tensor,
    *,
    bits: int = 8,
    data_range: tuple[float, float] = (-1.0, 1.0),
    dequant_samples: int = 1,
    dtype: torch.dtype | None = None,
    generator: torch.Generator | None = None,
    **likelihood_kwargs,
) -> tuple[torch.Tensor, dict]:
    """Bits per dimension of discrete data (8-bit images by default) under the flow's density.

    Levels ``x_int`` in ``{0, ..., K - 1}``, ``K = 2^bits``, are dequantised with uniform noise
    and mapped affinely to the model's range ``[lo, hi]``:
    ``x_model = lo + (hi - lo) / K * (x_int + u)``, ``u ~ U[0, 1)^D``. The discrete probability
    ``P(x_int) = int_[0,1)^D p(x_model(u)) ((hi - lo) / K)^D du`` is bounded below by the
    importance-weighted dequantisation bound with ``S = dequant_samples`` draws of ``u``,
    ``log P >= E[log (1/S) sum_s p(x_model(u_s)) ((hi - lo) / K)^D]`` (Jensen's bound at
    ``S = 1``, tightening to ``log P`` as ``S`` grows), so the result is an upper bound on
    ``-log P(x_int) / (D ln 2)``, with the log-Jacobian ``D log((hi - lo) / K)`` counted.

    Args:
        score_fn, sde: the score function and its SDE, as in :func:`log_likelihood`.
        x: integer levels, shape ``(B, *dims)`` (e.g. ``uint8`` images).
        bits: bits per entry, ``K = 2^bits`` levels.
        data_range: ``(lo, hi)``, the range the model was trained on (``(-1, 1)`` or ``(0, 1)``).
        dequant_samples: draws ``S`` of the dequantisation noise per sample.
        dtype: floating dtype of ``x_model``; the default dtype when None.
        generator: random source of the noise ``u`` and of Hutchinson probes.
        **likelihood_kwargs: passed to :func:`log_likelihood` (``eps``, ``method``, ``rtol``,
            ``atol``, ``divergence``, ``probes``, ``hutchinson``, ``prior_logp``, ``error_norm``).

    Returns:
        ``(bpd, info)``: ``bpd`` of shape ``(B,)``; ``info`` has ``log_prob_bound`` (the bound on
        ``log P(x_int)`` in nats, ``(B,)``), ``bpd_jensen`` (``(B,)``, the looser mean-of-logs
        bound over the same draws), ``dequant_samples``, ``log_jacobian`` and ``nfe``.

    Raises:
        ValueError: non-integer ``x`` or levels outside ``[0, K)``, bad ``bits``, ``data_range``
            or ``dequant_samples``, or any error of :func:`log_likelihood`.
    """
    if not isinstance(x, torch.Tensor) or x.is_floating_point() or x.is_complex():
        raise ValueError("x must be an integer tensor of levels 0..2^bits-1 (e.g. uint8 images), "
                         f"got {getattr(x, 'dtype', type(x).__name__)}")
    bits = check_int("bits", bits, 1, 16)
    levels = 2**bits
    if x.ndim < 2 or x.shape[0] == 0 or int(x.min()) < 0 or int(x.max()) >= levels:
        raise ValueError(f"x must have shape (B, *dims) with levels in [0, {levels - 1}], got "
                         f"shape {tuple(x.shape)}")
    lo, hi = (float(v) for v in data_range)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"data_range must be (lo, hi) with finite lo < hi, got {data_range!r}")
    dequant_samples = check_int("dequant_samples", dequant_samples, 1)
    dtype = torch.get_default_dtype() if dtype is None else dtype
    batch, dim, draws = x.shape[0], x[0].numel(), dequant_samples
    width = (hi - lo) / levels
    # Dequantise: S draws of u per sample, stacked as one batch of S * B.
    levels_rep = x.to(dtype).unsqueeze(0).expand(draws, *x.shape).reshape(draws * batch,
                                                                          *x.shape[1:])
    share, inner = (generator, None) if isinstance(generator, RowsOf) else (None, generator)
    rows = batch if share is None else share.batch
    u = torch.rand((draws * rows, *x.shape[1:]), generator=share.generator if share else generator,
                   dtype=dtype, device=x.device)
    if share is not None:  # the rows of this share in each draw, and the probes' likewise
        index = (torch.arange(draws)[:, None] * rows + share.index[None].cpu()).reshape(-1)
        inner = RowsOf(share.generator, draws * rows, index)
        u = inner.rows(u, 0)
    x_model = lo + width * (levels_rep + u)
    logp, info = log_likelihood(score_fn, sde, x_model, generator=inner, **likelihood_kwargs)
    log_jacobian = dim * math.log(width)
    log_q = (logp + log_jacobian).reshape(draws, batch)  # density of x_int + u on [0, K)^D
    log_prob = torch.logsumexp(log_q, dim=0) - math.log(draws)
    per_dim = dim * math.log(2)
    return -log_prob / per_dim, {
        "log_prob_bound": log_prob, "bpd_jensen": -log_q.mean(0) / per_dim,
        "dequant_samples": draws, "log_jacobian": log_jacobian, "nfe": info["nfe"],
    }
