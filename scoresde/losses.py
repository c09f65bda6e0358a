"""Continuous-time weighted denoising score matching, per sample (Song et al. 2021, eq. 7).

For ``x_t = m(t) x_0 + s(t) z`` the conditional score is ``-z / s(t)``, so the loss of a score
function ``score`` at one sample is::

    lambda(t) || score(x_t, t) + z / s(t) ||^2 = w(t) || s(t) score(x_t, t) + z ||^2

with ``w = lambda / s^2``. Weightings: ``"sigma2"``, ``lambda = s^2`` (``w = 1``, the usual noise
prediction loss); ``"likelihood"``, ``lambda = g^2`` (Song et al. 2021b: the loss bounds the
negative log-likelihood); ``"flow"``, ``lambda = g^4 / 4`` (flow matching, below);
``"likelihood_is"``, the same objective as ``"likelihood"`` with ``t`` drawn with density
proportional to ``g^2 / s^2``. Since ``d log-SNR / dt = -g^2 / s^2`` for every Gaussian-linear SDE,
that density is uniform in log-SNR: ``t = t_from_log_snr(u)`` with ``u`` uniform between
``log_snr(T)`` and ``log_snr(eps)``, and the weight becomes the constant
``(log_snr(eps) - log_snr(T)) / (T - eps)``, so every weighting estimates its objective averaged
over ``t`` uniform on ``[eps, T]``.

``log_snr_share = p`` (with ``"sigma2"`` only) draws that share of each batch's times uniformly
in log-SNR instead, so the objective is averaged over ``t`` from the mixture density
``(1 - p) / (T - eps) + p (g^2 / s^2) / (log_snr(eps) - log_snr(T))``: the sum of the ``sigma2``
and ``likelihood`` objectives in proportions ``1 - p`` and ``p`` (up to a constant factor on the
second). Uniform ``t`` leaves small noise levels almost untrained: for VP with ``eps = 1e-5``,
``t < 1e-3`` is 0.1% of the draws but a fifth of the log-SNR range that the likelihood ODE
crosses, and the network's output there is then extrapolation. The mixture covers every level.

Flow matching (Lipman et al. 2023; Liu et al. 2022) regresses the velocity of the path,
``d x_t / dt = m'(t) x_0 + s'(t) z`` (``z - x_0`` for rectified flow, ``m = 1 - t``, ``s = t``),
with the probability-flow drift ``v(x, t) = f x - g^2 score / 2``. Since ``m' = f m`` and
``g^2 = 2 s s' - 2 f s^2``, the difference is ``v - (m' x_0 + s' z) = (g^2 / (2 s)) (s score +
z)``: velocity matching is the DSM loss with ``w = (g^2 / (2 s))^2``, ``lambda = g^4 / 4``, the
``"flow"`` weighting, on any SDE. For rectified flow ``w = 1 / (1 - t)^2`` and the loss is
``||v_theta(x_t, t) - (z - x_0)||^2`` exactly. Through :class:`~scoresde.models.ScoreModel`'s
preconditioning, whose output weight ``c_out = m sigma_data / sqrt(m^2 sigma_data^2 + s^2)``
falls like ``1 - t``, the weight on the network's own error, ``w c_out^2 = sigma_data^2 /
((1 - t)^2 sigma_data^2 + t^2)``, stays below ``1 + sigma_data^2`` at every ``t``.

``time_sampling="logit_normal"`` draws ``t = sigmoid(loc + scale n)``, ``n ~ N(0, 1)``, truncated
to ``[eps, T]`` (Esser et al. 2024, section 3.1; ``loc = 0, scale = 1`` is their choice): ``n``
is the inverse normal CDF of a uniform on the truncated range drawn by ``t_sampling``, so
stratified and antithetic draws keep their meaning. It needs ``T <= 1``. Nothing corrects for it:
the objective is the weighting's averaged over ``t`` from that density instead of uniformly, a
weighting that puts the middle times first, as theirs does. The log-SNR draws of
``"likelihood_is"`` and ``log_snr_share`` have their own density and do not combine with it.
"""

from __future__ import annotations

from typing import Callable

import torch

from .checks import check_choice, check_int, check_number
from .sde import SDE
from .utils import append_dims, batch_sum

__all__ = ["WEIGHTINGS", "T_SAMPLINGS", "TIME_SAMPLINGS", "sample_time", "time_weight",
           "dsm_loss", "classifier_loss", "check_log_snr_share", "check_time_sampling"]

WEIGHTINGS = ("sigma2", "likelihood", "likelihood_is", "flow")
T_SAMPLINGS = ("uniform", "stratified", "antithetic")
TIME_SAMPLINGS = ("uniform", "logit_normal")


def check_log_snr_share(share: float, weighting: str = "sigma2") -> float:
    """Return ``share`` as a float, or raise ``ValueError`` unless it lies in ``[0, 1]`` (and is
    0 unless the weighting is ``"sigma2"``: ``"likelihood"`` would weight the extra small times
    by ``g^2 / s^2`` uncorrected, and ``"likelihood_is"`` draws all its times in log-SNR)."""
    share = check_number("log_snr_share", share, 0, 1)
    if share and weighting != "sigma2":
        raise ValueError(f"log_snr_share must be 0 with weighting {weighting!r}; it mixes "
                         "log-SNR times into the 'sigma2' weighting only")
    return share


def check_time_sampling(time_sampling: str, loc: float = 0.0, scale: float = 1.0, *,
                        weighting: str = "sigma2", log_snr_share: float = 0.0,
                        T: float = 1.0) -> tuple[str, float, float]:
    """Return ``(time_sampling, loc, scale)`` checked: a name of :data:`TIME_SAMPLINGS`, a finite
    ``loc`` and ``scale > 0``; ``"logit_normal"`` also needs ``T <= 1``, a weighting other than
    ``"likelihood_is"`` and ``log_snr_share = 0`` (those draw their times in log-SNR).

    Raises:
        ValueError: any of these is not so.
    """
    check_choice("time_sampling", time_sampling, TIME_SAMPLINGS)
    loc = check_number("time_loc", loc)
    scale = check_number("time_scale", scale, 0, low_open=True)
    if time_sampling != "logit_normal" and (loc, scale) != (0.0, 1.0):
        raise ValueError(f"time_loc and time_scale shape the logit-normal times only: give "
                         f"time_sampling 'logit_normal' with them, got {time_sampling!r}")
    if time_sampling == "logit_normal":
        if weighting == "likelihood_is" or log_snr_share:
            raise ValueError("time_sampling 'logit_normal' draws every time itself: it takes "
                             "neither weighting 'likelihood_is' nor a log_snr_share")
        if T > 1:
            raise ValueError(f"time_sampling 'logit_normal' needs an SDE with T <= 1, got "
                             f"T = {T:g}")
    return time_sampling, loc, scale


def _check(weighting: str, t_sampling: str, eps: float, sde: SDE) -> None:
    check_choice("weighting", weighting, WEIGHTINGS)
    check_choice("t_sampling", t_sampling, T_SAMPLINGS)
    sde.check_eps(eps)


def _uniforms(n, t_sampling, generator, device):
    """``n`` numbers in ``[0, 1)``: iid, one per stratum ``[i/n, (i+1)/n)``, or antithetic pairs."""
    if t_sampling == "antithetic":
        half = torch.rand((n + 1) // 2, generator=generator, device=device, dtype=torch.float64)
        return torch.cat([half, 1 - half])[:n]
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    if t_sampling == "stratified":
        u = (torch.arange(n, device=device, dtype=torch.float64) + u) / n
    return u


def sample_time(
    sde: SDE, n: int, *, eps: float = 1e-5, weighting: str = "sigma2",
    t_sampling: str = "uniform", generator: torch.Generator | None = None,
    device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
    log_snr_share: float = 0.0, time_sampling: str = "uniform", time_loc: float = 0.0,
    time_scale: float = 1.0,
) -> torch.Tensor:
    """Draw the times of a batch, shape ``(n,)``, in ``[eps, T]``.

    Uniform in ``t`` for ``"sigma2"`` and ``"likelihood"``; uniform in log-SNR, i.e. with density
    proportional to ``g(t)^2 / s(t)^2``, for ``"likelihood_is"``. ``t_sampling`` is ``"uniform"``
    (iid), ``"stratified"`` (one draw per ``1/n`` of the range, in order) or ``"antithetic"``
    (pairs ``u, 1 - u``). With ``log_snr_share = p`` (``"sigma2"`` only) the last ``round(p n)``
    times are drawn uniformly in log-SNR instead, each part with its own ``t_sampling`` (see the
    module); a batch of one or two points may therefore get none. ``time_sampling=
    "logit_normal"`` draws ``t = sigmoid(time_loc + time_scale n)`` truncated to ``[eps, T]``
    instead of uniform ``t`` (see the module).
    """
    _check(weighting, t_sampling, eps, sde)
    share = check_log_snr_share(log_snr_share, weighting)
    time_sampling, loc, scale = check_time_sampling(
        time_sampling, time_loc, time_scale, weighting=weighting, log_snr_share=share, T=sde.T)
    n = check_int("n", n, low=1)
    if device is None and generator is not None:
        device = generator.device
    if time_sampling == "logit_normal":
        u = _uniforms(n, t_sampling, generator, device)
        return _logit_normal(u, loc, scale, eps, sde.T).to(dtype)
    k = n if weighting == "likelihood_is" else round(share * n)
    parts = []
    if n - k:
        parts.append(eps + _uniforms(n - k, t_sampling, generator, device) * (sde.T - eps))
    if k:
        u = _uniforms(k, t_sampling, generator, device)
        ends = torch.tensor([eps, sde.T], dtype=torch.float64, device=u.device)
        lam_eps, lam_T = sde.log_snr(ends)
        parts.append(sde.t_from_log_snr(lam_eps + u * (lam_T - lam_eps)).clamp(eps, sde.T))
    return torch.cat(parts).to(dtype)


def _logit_normal(u: torch.Tensor, loc: float, scale: float, eps: float,
                  T: float) -> torch.Tensor:
    """``sigmoid(loc + scale n)`` with ``n`` the inverse normal CDF of ``u`` (float64, in
    ``[0, 1)``) put on the normal's range that ``[eps, T]`` allows: the truncated logit-normal."""
    ends = torch.tensor([eps, T], dtype=torch.float64, device=u.device)
    a, b = ((torch.logit(ends) - loc) / scale).tolist()
    # The normal's CDF in the tails, from its logarithm (ndtr rounds it to 0 below -8.3 and to
    # 1 above 8.3): a window right of loc is drawn from the left tail of -n instead (the same
    # map from u, mirrored), where its mass is not rounded away.
    side = -1.0 if a + b > 0 else 1.0
    lo, hi = torch.special.log_ndtr(torch.tensor([side * a, side * b], dtype=torch.float64,
                                                 device=u.device)).exp()
    if not hi != lo:
        raise ValueError(f"time_loc {loc:g} and time_scale {scale:g} put no probability on "
                         f"the times [{eps:g}, {T:g}]")
    n = side * torch.special.ndtri(lo + u * (hi - lo))
    return torch.sigmoid(loc + scale * n).clamp(eps, T)


def time_weight(sde: SDE, t: torch.Tensor, weighting: str = "sigma2",
                eps: float = 1e-5) -> torch.Tensor:
    """``w(t) = lambda(t) / s(t)^2`` for times drawn by :func:`sample_time`; shape of ``t``."""
    _check(weighting, "uniform", eps, sde)
    if weighting == "sigma2":
        return torch.ones_like(t)
    if weighting in ("likelihood", "flow"):
        _, s = sde.marginal_coeffs(t)
        g2 = sde.diffusion_coeff(t) ** 2
        return g2 / s**2 if weighting == "likelihood" else (g2 / (2 * s)) ** 2
    ends = torch.tensor([eps, sde.T], dtype=torch.float64)
    lam_eps, lam_T = sde.log_snr(ends)
    return torch.full_like(t, float(lam_eps - lam_T) / (sde.T - eps))


def _diffuse(sde, x0, generator, t, noise, draw):
    """``(t, z, x_t, s(t))`` of a batch: ``x_t = m(t) x0 + s(t) z``; ``t``, ``z`` drawn if None.
    ``draw``: the keywords of :func:`sample_time` that say how."""
    if t is None:  # sample_time checks the keywords
        t = sample_time(sde, x0.shape[0], generator=generator, device=x0.device, dtype=x0.dtype,
                        **draw)
    else:
        share = check_log_snr_share(draw["log_snr_share"], draw["weighting"])
        check_time_sampling(draw["time_sampling"], draw["time_loc"], draw["time_scale"],
                            weighting=draw["weighting"], log_snr_share=share, T=sde.T)
    t = sde.check_time(t, x0)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    elif noise.shape != x0.shape:
        raise ValueError(f"noise must have the shape of x0 {tuple(x0.shape)}, got "
                         f"{tuple(noise.shape)}")
    m, s = sde.marginal_coeffs(t)
    return t, noise, append_dims(m, x0.ndim) * x0 + append_dims(s, x0.ndim) * noise, s


def dsm_loss(
    score_fn: Callable[..., torch.Tensor],
    sde: SDE,
    x0: torch.Tensor,
    *,
    weighting: str = "sigma2",
    eps: float = 1e-5,
    t_sampling: str = "uniform",
    generator: torch.Generator | None = None,
    y: torch.Tensor | None = None,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    log_snr_share: float = 0.0,
    time_sampling: str = "uniform",
    time_loc: float = 0.0,
    time_scale: float = 1.0,
) -> torch.Tensor:
    """Weighted denoising score matching loss of each sample.

    Args:
        score_fn: ``score_fn(x, t)`` (or ``score_fn(x, t, y=y)`` when labels are given).
        sde: the forward SDE.
        x0: clean data, shape ``(B, *dims)``.
        weighting: ``"sigma2"``, ``"likelihood"``, ``"likelihood_is"`` or ``"flow"`` (see the
            module).
        eps: lower end of the times.
        t_sampling: ``"uniform"``, ``"stratified"`` or ``"antithetic"`` draws of ``t``.
        generator: drives the draws of ``t`` and of the noise.
        y: optional labels ``(B,)`` passed on to ``score_fn``.
        t: times ``(B,)`` to use instead of drawing them (drawn by :func:`sample_time` to match
            the weighting).
        noise: noise ``z`` of ``x0``'s shape to use instead of drawing it.
        log_snr_share: share of the drawn times taken uniformly in log-SNR (see the module).
        time_sampling, time_loc, time_scale: ``"logit_normal"`` draws ``t = sigmoid(time_loc +
            time_scale n)`` instead of uniform ``t`` (see the module).

    Returns:
        Loss per sample, shape ``(B,)``: ``w(t) ||s(t) score(x_t, t) + z||^2``.
    """
    draw = dict(weighting=weighting, eps=eps, t_sampling=t_sampling, log_snr_share=log_snr_share,
                time_sampling=time_sampling, time_loc=time_loc, time_scale=time_scale)
    t, noise, x_t, s = _diffuse(sde, x0, generator, t, noise, draw)
    score = score_fn(x_t, t) if y is None else score_fn(x_t, t, y=y)
    residual = append_dims(s, x0.ndim) * score + noise
    return time_weight(sde, t, weighting, eps).to(x0.dtype) * batch_sum(residual**2)


def classifier_loss(
    classifier: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sde: SDE,
    x0: torch.Tensor,
    *,
    y: torch.Tensor,
    weighting: str = "sigma2",
    eps: float = 1e-5,
    t_sampling: str = "uniform",
    generator: torch.Generator | None = None,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    log_snr_share: float = 0.0,
    time_sampling: str = "uniform",
    time_loc: float = 0.0,
    time_scale: float = 1.0,
) -> torch.Tensor:
    """Cross-entropy of a noise-conditional classifier at ``x_t = m(t) x0 + s(t) z``, per sample.

    The loss of classifier guidance (Dhariwal & Nichol 2021): ``-log p(y | x_t, t)`` with ``t``
    and ``z`` drawn as for :func:`dsm_loss` (``weighting`` only chooses how ``t`` is drawn).

    Args:
        classifier: ``classifier(x, t) -> logits (B, K)``.
        sde: the forward SDE.
        x0: clean data, shape ``(B, *dims)``.
        y: integer labels ``(B,)`` in ``[0, K)``.
        weighting, eps, t_sampling, generator, t, noise, log_snr_share, time_sampling,
            time_loc, time_scale: as :func:`dsm_loss`.

    Returns:
        Loss per sample, shape ``(B,)``.
    """
    if y is None or y.shape != x0.shape[:1] or y.dtype.is_floating_point:
        raise ValueError(f"classifier_loss needs integer labels y of shape ({x0.shape[0]},)")
    draw = dict(weighting=weighting, eps=eps, t_sampling=t_sampling, log_snr_share=log_snr_share,
                time_sampling=time_sampling, time_loc=time_loc, time_scale=time_scale)
    t, _, x_t, _ = _diffuse(sde, x0, generator, t, noise, draw)
    return torch.nn.functional.cross_entropy(classifier(x_t, t), y.long(), reduction="none")
