"""Guided score functions: bind labels, classifier-free guidance, classifier guidance.

Each function here returns a plain score function ``score(x, t)``, so guidance works with every
sampler (and the likelihood) without their knowing:

    ``conditional_score``: ``s(x, t, y)``, the class-conditional score with the labels bound.
    ``classifier_free_guidance``: ``(1 + w) s(x, t, y) - w s(x, t, None)`` (Ho & Salimans 2021);
        ``w = 0`` is the conditional score, larger ``w`` trades diversity for class fidelity.
    ``classifier_guidance``: ``s(x, t) + scale * grad_x log p(y | x_t, t)`` (Dhariwal & Nichol
        2021; Song et al. 2021, eq. 14); with the exact noisy classifier and ``scale = 1`` it is
        exactly the conditional score, by Bayes' rule.
    ``function_guidance``: ``s(x, t) + scale * grad_x f(x, t)`` for any differentiable ``f``
        (GLIDE's CLIP guidance is ``f = similarity(image_encoder(x_t), text_embedding)``);
        classifier guidance is the case ``f = log p(y | x_t)``.

Labels are an integer (the same class for every sample) or ``(B,)`` integers, checked against
the number of classes when the wrapper is made and against the batch at every call. A score
function conditioned on embeddings (``embed_dim = E > 0``, :mod:`scoresde.embeddings`) takes
``(E,)`` or ``(B, E)`` floats in their place, in ``conditional_score`` and
``classifier_free_guidance`` alike.
"""

from __future__ import annotations

from typing import Callable

import torch

from .checks import check_int, check_number
from .embeddings import check_embeddings
from .labels import check_labels

__all__ = ["conditional_score", "classifier_free_guidance", "classifier_guidance",
           "function_guidance"]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _num_classes(model, num_classes: int | None) -> int | None:
    if num_classes is None:
        num_classes = getattr(model, "num_classes", None)
    if num_classes is None:
        return None
    if check_int("num_classes", num_classes, low=0) < 1:
        raise ValueError(f"{type(model).__name__} is unconditional (num_classes = "
                         f"{num_classes}): train one with conditional=True to pass labels")
    return int(num_classes)


def _bind(y, num_classes: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Check ``y`` now (type, range); return ``labels(x)`` that checks its count against ``x``."""
    try:
        t = y if isinstance(y, torch.Tensor) else torch.as_tensor(y)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"labels must be integers or a (B,) integer tensor, got {y!r}") from None
    check_labels(t, t.numel() if t.ndim else 1, num_classes)

    def labels(x: torch.Tensor) -> torch.Tensor:
        return check_labels(t, x.shape[0], num_classes).to(x.device)

    return labels


def _conditions(score_fn, y, num_classes: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``conditions(x)``: the labels ``y`` bound (see :func:`_bind`), or for a score function
    conditioned on embeddings (``score_fn.embed_dim > 0``) the embeddings ``y``, ``(E,)`` or
    ``(B, E)``, checked now and against the batch at every call."""
    embed_dim = int(getattr(score_fn, "embed_dim", 0) or 0)
    if not embed_dim:
        return _bind(y, _num_classes(score_fn, num_classes))
    try:
        t = y if isinstance(y, torch.Tensor) else torch.as_tensor(
            y, dtype=torch.get_default_dtype())
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"embeddings must be floats of shape (B, {embed_dim}), got {y!r}"
                         ) from None
    check_embeddings(t, t.shape[0] if t.ndim == 2 else 1, embed_dim)

    def embeddings(x: torch.Tensor) -> torch.Tensor:
        return check_embeddings(t, x.shape[0], embed_dim).to(x.device, x.dtype)

    return embeddings


def conditional_score(score_fn: Callable[..., torch.Tensor], y,
                      num_classes: int | None = None) -> ScoreFn:
    """The score function ``(x, t) -> score_fn(x, t, y)`` with labels ``y`` bound.

    Args:
        score_fn: a class-conditional score function ``score_fn(x, t, y)`` (a conditional
            :class:`~scoresde.ScoreModel`, ``GaussianMixture.conditional_score_fn(sde)``).
        y: an integer class or ``(B,)`` integer labels.
        num_classes: the number of classes; read from ``score_fn.num_classes`` when it has one.

    Returns:
        A score function ``score(x, t)``: ``x`` ``(B, *dims)``, ``t`` ``(B,)``, shape of ``x``.

    Raises:
        ValueError: labels that are not integers or lie outside ``[0, num_classes)`` (now), or
            whose count is neither 1 nor the batch (at the call).
    """
    labels = _conditions(score_fn, y, num_classes)
    return lambda x, t: score_fn(x, t, labels(x))


def classifier_free_guidance(score_fn: Callable[..., torch.Tensor], y, w: float = 1.0,
                             num_classes: int | None = None) -> ScoreFn:
    """Classifier-free guidance: ``(1 + w) s(x, t, y) - w s(x, t, None)`` (Ho & Salimans 2021).

    ``s(x, t, None)`` is the unconditional score, learnt by the same network from the labels
    dropped in training (``train(..., conditional=True, label_dropout=0.1)``). The guided score
    is that of ``p_t(x | y)^(1 + w) / p_t(x)^w``, which sharpens ``p_t(y | x)^w`` onto class
    ``y``. Each call makes one conditional and (when ``w != 0``) one unconditional call.

    Args:
        score_fn: a class-conditional score function ``score_fn(x, t, y)`` that gives the
            unconditional score for ``y=None``.
        y: an integer class or ``(B,)`` integer labels; for a score function conditioned on
            embeddings (``embed_dim > 0``), one embedding ``(E,)`` or ``(B, E)`` floats.
        w: guidance weight; 0 is plain conditional sampling, negative values down to -1 move
            towards the unconditional model.
        num_classes: the number of classes; read from ``score_fn.num_classes`` when it has one.

    Returns:
        A score function ``score(x, t)`` of ``x``'s shape.

    Raises:
        ValueError: bad labels (see :func:`conditional_score`) or a non-finite ``w``.
    """
    w = check_number("guidance weight w", w)
    labels = _conditions(score_fn, y, num_classes)

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cond = score_fn(x, t, labels(x))
        if w == 0:
            return cond
        return (1 + w) * cond - w * score_fn(x, t, None)

    return guided


def classifier_guidance(score_fn: ScoreFn, classifier: Callable[[torch.Tensor, torch.Tensor],
                        torch.Tensor], y, scale: float = 1.0,
                        num_classes: int | None = None) -> ScoreFn:
    """Classifier guidance: ``s(x, t) + scale * grad_x log p(y | x_t = x, t)``.

    Args:
        score_fn: the unconditional score function ``score_fn(x, t)``.
        classifier: ``classifier(x, t) -> logits (B, K)`` of noisy data, differentiable in ``x``
            (a :class:`~scoresde.NoiseClassifier`, or ``lambda x, t: mixture.class_log_prob(x,
            t, sde)``); ``log_softmax`` of its output is taken as ``log p(y | x_t)``.
        y: an integer class or ``(B,)`` integer labels.
        scale: the classifier's weight; 1 gives the conditional score of an exact classifier.
        num_classes: ``K``; read from ``classifier.num_classes`` when it has one.

    Returns:
        A score function ``score(x, t)`` of ``x``'s shape (one score call, one classifier
        forward and backward pass per call; works inside ``torch.no_grad``).

    Raises:
        ValueError: bad labels or a non-finite ``scale``; logits that are not ``(B, K)``.
    """
    scale = check_number("classifier scale", scale)
    labels = _bind(y, _num_classes(classifier, num_classes))

    def log_p(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = classifier(x, t)
        if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
            raise ValueError(f"the classifier must return logits of shape (B, K), got "
                             f"{tuple(logits.shape)}")
        return torch.log_softmax(logits, dim=1).gather(1, labels(x)[:, None])[:, 0]

    return function_guidance(score_fn, log_p, scale)


def function_guidance(score_fn: ScoreFn, f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                      scale: float = 1.0) -> ScoreFn:
    """Guidance by a differentiable function: ``s(x, t) + scale * grad_x f(x, t)``.

    ``f`` scores how well each noisy sample ``x_t`` meets the wish: the guided sampler draws
    from ``p_t(x) exp(scale * f(x, t))`` at every noise level (exactly so when ``f`` is defined
    at each ``t`` as the log of such a tilt). With ``f = log p(y | x_t)`` of an exact classifier
    this is :func:`classifier_guidance`; GLIDE's CLIP guidance is ``f = cos(image_encoder(x_t,
    t), text_embedding)``; a hand-written ``f`` (minus the squared distance to a region, say)
    steers samples there. The gradient is taken by autograd on a detached copy of ``x``, so the
    guided score works inside ``torch.no_grad`` (as samplers call it) and returns no graph.

    Args:
        score_fn: the score function ``score_fn(x, t)`` to guide.
        f: ``f(x, t) -> (B,)`` (or a scalar: its gradient is then that of the sum),
            differentiable in ``x`` of shape ``(B, *dims)``; sample ``i``'s value may depend on
            ``x[i]`` only, since the gradient is that of the sum over the batch.
        scale: the guidance weight; 0 gives ``score_fn`` back unchanged in value.

    Returns:
        A score function ``score(x, t)`` of ``x``'s shape (one score call and one forward and
        backward pass of ``f`` per call).

    Raises:
        ValueError: a non-finite ``scale`` (now); ``f`` returning neither a scalar nor ``(B,)``
            values, or values that do not depend on ``x`` (at the call).
        TypeError: ``f`` is not callable.
    """
    scale = check_number("guidance scale", scale)
    if not callable(f):
        raise TypeError(f"f must be a function f(x, t) -> (B,), got {type(f).__name__}")

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            value = f(x_in, t)
            if not isinstance(value, torch.Tensor) or value.shape not in ((), (x.shape[0],)):
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value)
                raise ValueError(f"f must return a scalar or one value per sample, shape "
                                 f"({x.shape[0]},); got {shape}")
            if not value.requires_grad:
                raise ValueError("f(x, t) does not depend on x differentiably: it has no "
                                 "gradient to guide with")
            (grad,) = torch.autograd.grad(value.sum(), x_in)
        return score_fn(x, t) + scale * grad.detach().to(x.dtype)

    return guided
