"""Exact test targets: Gaussian mixtures whose every diffused marginal is known in closed form.

Under any Gaussian-linear SDE ``x_t = m(t) x_0 + s(t) z``, a mixture ``sum_k w_k N(mu_k, S_k)``
diffuses into ``sum_k w_k N(m mu_k, m^2 S_k + s^2 I)``. Writing ``S_k = U_k diag(l_k) U_k^T`` once,
the marginal covariance is ``U_k diag(m^2 l_k + s^2) U_k^T`` at every ``t``, so log-densities and
scores cost one rotation per component and sample, in any dimension.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from .checks import check_int
from .labels import check_labels
from .observe import LinearObservation, mask_matrix
from .sde import SDE

__all__ = ["GaussianMixture", "LinearPosterior", "MIXTURES", "get_mixture"]


class GaussianMixture:
    """A mixture of Gaussians with full covariances, in ``D`` dimensions.

    Args:
        means: ``(K, D)`` component means.
        covs: ``(K, D, D)`` symmetric positive-definite covariances.
        weights: ``(K,)`` non-negative weights (normalised here); equal weights when omitted.
        event_shape: shape of one sample, ``(D,)`` by default; ``(1, 4, 4)`` makes a mixture over
            tiny images with ``D = 16``. Inputs of shape ``(B, *event_shape)`` are accepted.

    Raises:
        ValueError: shapes disagree, weights are negative or sum to zero, a covariance is not
            symmetric positive definite, or a value is not finite.
    """

    def __init__(
        self,
        means,
        covs,
        weights=None,
        event_shape: Sequence[int] | None = None,
    ):
        means = torch.as_tensor(means, dtype=torch.float64)
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, D), got {tuple(means.shape)}")
        k, d = means.shape
        if covs.shape != (k, d, d):
            raise ValueError(f"covs must have shape ({k}, {d}, {d}), got {tuple(covs.shape)}")
        weights = torch.ones(k, dtype=torch.float64) if weights is None else torch.as_tensor(
            weights, dtype=torch.float64)
        if weights.shape != (k,):
            raise ValueError(f"weights must have shape ({k},), got {tuple(weights.shape)}")
        for name, v in (("means", means), ("covs", covs), ("weights", weights)):
            if not torch.isfinite(v).all():
                raise ValueError(f"{name} must be finite")
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("weights must be non-negative with a positive sum")
        if not torch.allclose(covs, covs.transpose(1, 2), atol=1e-10, rtol=1e-8):
            raise ValueError("covs must be symmetric")
        evals, evecs = torch.linalg.eigh(covs)
        if (evals <= 0).any():
            raise ValueError("covs must be positive definite (an eigenvalue is <= 0)")
        event_shape = (d,) if event_shape is None else tuple(int(n) for n in event_shape)
        if math.prod(event_shape) != d:
            raise ValueError(f"event_shape {event_shape} has {math.prod(event_shape)} entries, "
                             f"the mixture has D = {d}")
        self.means, self.covs, self.weights = means, covs, weights / weights.sum()
        self.evals, self.evecs = evals, evecs
        self.event_shape = event_shape
        self.num_components, self.dim = k, d

    # ----- sampling and the data density -----------------------------------------------------
    def sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
        return_labels: bool = False,
    ):
        """``n`` samples, shape ``(n, *event_shape)``, with their component labels if asked."""
        n = check_int("n", n, low=1)
        device = generator.device if generator is not None else torch.device("cpu")
        labels = torch.multinomial(self.weights.to(device), int(n), replacement=True,
                                   generator=generator)
        z = torch.randn(int(n), self.dim, generator=generator, device=device, dtype=torch.float64)
        evecs, evals = self.evecs.to(device)[labels], self.evals.to(device)[labels]
        x = self.means.to(device)[labels] + torch.einsum("bij,bj->bi", evecs, evals.sqrt() * z)
        x = x.to(dtype).reshape(int(n), *self.event_shape)
        return (x, labels) if return_labels else x

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log-density of the data: shape ``(B,)`` for ``x`` ``(B, *event_shape)``."""
        one = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
        return self._log_prob(x, one, torch.zeros_like(one))

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The data's exact mean ``(D,)`` and covariance ``(D, D)``, float64: the statistics a
        sampler takes as ``data_mean`` and ``data_cov``."""
        w = self.weights
        mean = (w[:, None] * self.means).sum(0)
        d = self.means - mean
        return mean, (w[:, None, None] * (self.covs + d[:, :, None] * d[:, None, :])).sum(0)

    # ----- marginals under an SDE ------------------------------------------------------------
    def marginal_log_prob(self, x: torch.Tensor, t, sde: SDE) -> torch.Tensor:
        """Exact ``log p_t(x)`` of the mixture diffused by ``sde`` to time ``t``; shape ``(B,)``."""
        m, s = self._coeffs(x, t, sde)
        return self._log_prob(x, m, s)

    def score_fn(self, sde: SDE) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The exact score ``grad_x log p_t(x)`` of the diffused mixture, as a score function."""

        def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            m, s = self._coeffs(x, t, sde)
            return self._score(x, m, s)

        return score

    def marginal_score(self, x: torch.Tensor, t, sde: SDE) -> torch.Tensor:
        """Exact score of the diffused mixture at ``(x, t)``, shape of ``x``."""
        return self.score_fn(sde)(x, t)

    def posterior_mean(self, x: torch.Tensor, t, sde: SDE) -> torch.Tensor:
        """Exact ``E[x_0 | x_t = x]`` (Tweedie: ``(x + s^2 score) / m``), shape of ``x``."""
        m, s = self._coeffs(x, t, sde)
        score = self._score(x, m, s).to(torch.float64)
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        return ((flat + s[:, None] ** 2 * score.reshape(flat.shape)) / m[:, None]).to(
            x.dtype).reshape(x.shape)

    # ----- classes and conditioning -----------------------------------------------------
    def class_log_prob(self, x: torch.Tensor, t, sde: SDE) -> torch.Tensor:
        """Exact ``log p(y = k | x_t = x)`` with the components as classes; shape ``(B, K)``."""
        m, s = self._coeffs(x, t, sde)
        logc, _, _ = self._components(x, m, s)
        return torch.log_softmax(logc, dim=1).to(x.dtype)

    def conditional_score_fn(self, sde: SDE) -> Callable[..., torch.Tensor]:
        """Exact class-conditional score ``grad_x log p_t(x | y)``, components as classes.

        The returned function is called as ``score(x, t, y)`` with integer labels ``y`` of shape
        ``(B,)`` in ``[0, K)``; ``y = None`` gives the unconditional score.
        """

        def score(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
            m, s = self._coeffs(x, t, sde)
            if y is None:
                return self._score(x, m, s)
            y = check_labels(y, x.shape[0], self.num_components).to(x.device)
            _, white, evecs = self._components(x, m, s)
            grad = -torch.einsum("bij,bj->bi", evecs[y], white[torch.arange(len(y)), y])
            return grad.to(x.dtype).reshape(x.shape)

        return score

    def component(self, k: int) -> "GaussianMixture":
        """Component ``k`` alone, as a one-component mixture (the class-``k`` distribution)."""
        k = int(check_labels(k, 1, self.num_components)[0])
        return GaussianMixture(self.means[k:k + 1], self.covs[k:k + 1],
                               event_shape=self.event_shape)

    def condition(self, known: torch.Tensor, values: torch.Tensor) -> "GaussianMixture":
        """The exact distribution of the unknown coordinates given the known ones.

        The noiseless mask case of :meth:`condition_linear`: its ``mixture`` over the free
        coordinates, which for a mask are the unknown ones in their order.

        Args:
            known: boolean mask of shape ``(D,)`` (or ``event_shape``), True where a coordinate is
                observed; at least one coordinate must stay unknown.
            values: the observed values, shape ``(D,)`` (only entries under the mask are read).

        Returns:
            A mixture over the ``U`` unknown coordinates (in their order), with the Gaussian
            conditionals of the components and weights proportional to ``w_k N(x_known; ...)``.
        """
        known = torch.as_tensor(known, dtype=torch.bool).reshape(-1)
        values = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
        if known.shape != (self.dim,) or values.shape != (self.dim,):
            raise ValueError(f"known and values must have {self.dim} entries, got "
                             f"{known.numel()} and {values.numel()}")
        if known.all() or not known.any():
            raise ValueError("known must mark at least one coordinate known and one unknown")
        return self.condition_linear(mask_matrix(known), values[known]).mixture

    def condition_linear(self, A, y, noise_std: float = 0.0) -> "LinearPosterior":
        """The exact posterior given a linear measurement ``y = A x + noise_std * n``.

        Each component updates by the Kalman (Schur complement) formulas, in the row space of
        ``A`` (:class:`~scoresde.observe.LinearObservation`; a rank-deficient ``A`` is fine),
        and its weight becomes proportional to ``w_k N(y; A mu_k, A S_k A^T + noise_std^2 I)``.
        With ``noise_std > 0`` the posterior is a mixture over all ``D`` coordinates; with
        ``noise_std = 0`` it lives on the affine set ``{x : A x = y}`` and is a mixture over
        the ``D - rank(A)`` free coordinates ``z`` of ``x = offset + basis z`` (for a mask:
        the unknown coordinates, in their order).

        Args:
            A: ``(M, D)`` matrix acting on the flattened data.
            y: ``(M,)`` the measurement.
            noise_std: the measurement noise's standard deviation, ``>= 0``.

        Returns:
            A :class:`LinearPosterior`: exact samples and density in data space, the mixture
            over the free coordinates, the posterior weights of the components.

        Raises:
            ValueError: shapes disagree; with ``noise_std = 0``, ``y`` outside the range of
                ``A``, or ``A`` of full column rank (nothing is left to draw).
        """
        obs = LinearObservation(A, y, noise_std, self.event_shape)
        if obs.y_tilde.ndim != 1:
            raise ValueError(f"y must be one measurement of shape ({obs.A.shape[0]},)")
        if obs.noise_std > 0:
            return self._condition_noisy(obs)
        return self._condition_exact(obs)

    def _condition_noisy(self, obs) -> "LinearPosterior":
        a = obs.S[:, None] * obs.V.T  # (r, D): y~ = a x + noise_std n~
        a_s = a @ self.covs  # (K, r, D)
        pred = a_s @ a.T + obs.noise_std**2 * torch.eye(obs.rank, dtype=torch.float64)
        pred = (pred + pred.transpose(1, 2)) / 2
        resid = obs.y_tilde[None] - self.means @ a.T  # (K, r)
        gain_t = torch.linalg.solve(pred, a_s)  # (K, r, D): (S_k a^T C_k^-1)^T
        means = self.means + torch.einsum("krd,kr->kd", gain_t, resid)
        covs = self.covs - a_s.transpose(1, 2) @ gain_t
        covs = (covs + covs.transpose(1, 2)) / 2
        log_w = self.weights.log() + torch.distributions.MultivariateNormal(
            self.means @ a.T, pred).log_prob(obs.y_tilde[None])
        mixture = GaussianMixture(means, covs, torch.softmax(log_w, dim=0),
                                  event_shape=self.event_shape)
        eye = torch.eye(self.dim, dtype=torch.float64)
        return LinearPosterior(mixture, eye, torch.zeros(self.dim, dtype=torch.float64),
                               self.event_shape)

    def _condition_exact(self, obs) -> "LinearPosterior":
        if obs.rank == self.dim:
            raise ValueError(f"A has rank {obs.rank} = D: with noise_std = 0 it fixes x "
                             "entirely; give noise_std > 0 or fewer measurements")
        rows, free, known = _bases(obs)  # (D, r), (D, D - r), (r,) = rows^T x on {A x = y}
        s_kk = rows.T @ self.covs @ rows
        s_uk = free.T @ self.covs @ rows
        s_uu = free.T @ self.covs @ free
        resid = known[None] - self.means @ rows  # (K, r)
        gain = torch.linalg.solve(s_kk, s_uk.transpose(1, 2)).transpose(1, 2)  # S_uk S_kk^-1
        means = self.means @ free + torch.einsum("kij,kj->ki", gain, resid)
        covs = s_uu - gain @ s_uk.transpose(1, 2)
        covs = (covs + covs.transpose(1, 2)) / 2
        log_w = self.weights.log() + torch.distributions.MultivariateNormal(
            self.means @ rows, s_kk).log_prob(known[None])
        mixture = GaussianMixture(means, covs, torch.softmax(log_w, dim=0))
        return LinearPosterior(mixture, free, rows @ known, self.event_shape)

    # ----- internals -------------------------------------------------------------------------
    def _coeffs(self, x, t, sde):
        t = sde.check_time(t, x).to(torch.float64)
        return sde.marginal_coeffs(t)

    def _flat(self, x):
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, self.event_shape))}), "
                             f"got {tuple(x.shape)}")
        return x.reshape(x.shape[0], self.dim).to(torch.float64)

    def _components(self, x, m, s):
        """Component log-densities ``(B, K)``, rotated residuals over variances ``(B, K, D)``."""
        flat = self._flat(x)
        dev = flat.device
        means, evecs, evals = self.means.to(dev), self.evecs.to(dev), self.evals.to(dev)
        var = m[:, None, None] ** 2 * evals[None] + s[:, None, None] ** 2  # (B, K, D)
        resid = flat[:, None, :] - m[:, None, None] * means[None]  # (B, K, D)
        rot = torch.einsum("kji,bkj->bki", evecs, resid)  # U_k^T (x - m mu_k)
        white = rot / var
        logc = -0.5 * ((rot * white).sum(-1) + torch.log(2 * math.pi * var).sum(-1))
        return logc + torch.log(self.weights.to(dev))[None], white, evecs

    def _log_prob(self, x, m, s):
        logc, _, _ = self._components(x, m, s)
        return torch.logsumexp(logc, dim=1).to(x.dtype)

    def _score(self, x, m, s):
        logc, white, evecs = self._components(x, m, s)
        resp = torch.softmax(logc, dim=1)  # (B, K) posterior over components
        grads = -torch.einsum("kij,bkj->bki", evecs, white)  # -Sigma_k(t)^-1 (x - m mu_k)
        return (resp[:, :, None] * grads).sum(1).to(x.dtype).reshape(x.shape)

    # ----- presets -----------------------------------------------------------------------
    @classmethod
    def ring(cls, k: int = 8, radius: float = 4.0, std: float = 0.3) -> "GaussianMixture":
        """``k`` isotropic 2D Gaussians of std ``std`` evenly spaced on a circle of ``radius``."""
        angles = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
        means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
        return cls(means, torch.eye(2, dtype=torch.float64).repeat(k, 1, 1) * std**2)

    @classmethod
    def grid(cls, n: int = 3, spacing: float = 3.0, std: float = 0.3) -> "GaussianMixture":
        """An ``n x n`` grid of isotropic 2D Gaussians, centred at the origin."""
        ticks = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * spacing
        means = torch.cartesian_prod(ticks, ticks)
        return cls(means, torch.eye(2, dtype=torch.float64).repeat(n * n, 1, 1) * std**2)

    @classmethod
    def two_columns(cls, offset: float = 1.5, rows: float = 2.0, var: float = 0.5
                    ) -> "GaussianMixture":
        """Two 2D Gaussians at ``(-offset, -rows)`` and ``(offset, rows)`` of variance ``var``:
        the first coordinate decides which row the second lies in (a hard case for imputation
        by replacement)."""
        means = torch.tensor([[-offset, -rows], [offset, rows]], dtype=torch.float64)
        return cls(means, torch.eye(2, dtype=torch.float64).repeat(2, 1, 1) * var)

    @classmethod
    def narrow(cls, narrow_std: float = 0.01) -> "GaussianMixture":
        """Three anisotropic 2D Gaussians, one very narrow (std ``narrow_std``) along an axis.

        A hard case for samplers: the narrow component's scale is far below the others'.
        """
        means = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.5, -2.0]], dtype=torch.float64)
        rot = torch.tensor([[math.cos(0.5), -math.sin(0.5)], [math.sin(0.5), math.cos(0.5)]],
                           dtype=torch.float64)
        covs = torch.stack([
            torch.diag(torch.tensor([1.0, 0.04], dtype=torch.float64)),
            rot @ torch.diag(torch.tensor([0.5, narrow_std**2], dtype=torch.float64)) @ rot.T,
            torch.diag(torch.tensor([0.2, 0.2], dtype=torch.float64)),
        ])
        return cls(means, covs, weights=[0.4, 0.3, 0.3])

    @classmethod
    def random(cls, dim: int, k: int = 3, seed: int = 0, scale: float = 2.0) -> "GaussianMixture":
        """``k`` components with random means and full covariances in ``dim`` dimensions."""
        gen = torch.Generator().manual_seed(seed)
        means = scale * torch.randn(k, dim, generator=gen, dtype=torch.float64)
        a = torch.randn(k, dim, dim, generator=gen, dtype=torch.float64) / math.sqrt(dim)
        covs = 0.3 * (a @ a.transpose(1, 2)) + 0.05 * torch.eye(dim, dtype=torch.float64)
        weights = torch.rand(k, generator=gen, dtype=torch.float64) + 0.5
        return cls(means, covs, weights)

    @classmethod
    def unseen(cls, seed: int, dim: int = 2, narrow: bool = False) -> "GaussianMixture":
        """A mixture nobody tuned for: its scale, size and component widths drawn from ``seed``.

        The scale ``c`` is log-uniform in ``[0.5, 5]``; 2 to 6 components have means
        ``c N(0, I)``, randomly rotated axes with standard deviations ``c`` times a log-uniform
        draw in ``[0.05, 0.4]``, and weights uniform in ``[0.5, 1.5]`` before normalising. With
        ``narrow=True`` the first component's first axis is squeezed to ``c`` times a
        log-uniform draw in ``[0.002, 0.01]``: a scale far below the others', as in
        :meth:`narrow`. Samplers and training are tested on these, not only on the presets.

        Args:
            seed: drives every draw; the same seed gives the same mixture.
            dim: the dimension of the data.
            narrow: give one component a very narrow axis.
        """
        gen = torch.Generator().manual_seed(check_int("seed", seed))
        dim = check_int("dim", dim, 1)

        def log_uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
            u = torch.rand(shape, generator=gen, dtype=torch.float64)
            return torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))

        scale = float(log_uniform(0.5, 5.0, 1))
        k = int(torch.randint(2, 7, (1,), generator=gen))
        means = scale * torch.randn(k, dim, generator=gen, dtype=torch.float64)
        stds = scale * log_uniform(0.05, 0.4, k, dim)
        if narrow:
            stds[0, 0] = scale * float(log_uniform(0.002, 0.01, 1))
        rot, _ = torch.linalg.qr(torch.randn(k, dim, dim, generator=gen, dtype=torch.float64))
        covs = rot @ torch.diag_embed(stds**2) @ rot.transpose(1, 2)
        weights = 0.5 + torch.rand(k, generator=gen, dtype=torch.float64)
        return cls(means, covs, weights)

    @classmethod
    def standard_normal(cls, dim: int) -> "GaussianMixture":
        """The standard Gaussian ``N(0, I)`` in ``dim`` dimensions, as a one-component mixture."""
        return cls(torch.zeros(1, dim), torch.eye(dim, dtype=torch.float64)[None])


def _bases(obs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Orthonormal bases of A's row space and null space, and the row coordinates of every x
    with ``A x = y``. A mask (one non-zero entry per row, on distinct columns) keeps the
    coordinate axes, the known ones and the unknown ones each in their order."""
    a, dim = obs.A, obs.dim
    nonzero = a != 0
    cols = nonzero.to(torch.int64).argmax(1)
    if bool((nonzero.sum(1) == 1).all()) and len(set(cols.tolist())) == len(cols):
        sel = torch.zeros(dim, dtype=torch.bool)
        sel[cols] = True
        eye = torch.eye(dim, dtype=torch.float64)
        return eye[:, sel], eye[:, ~sel], obs.x_row[sel]
    _, _, vh = torch.linalg.svd(a, full_matrices=True)
    return obs.V, vh[obs.rank:].T, obs.y_tilde / obs.S


class LinearPosterior:
    """The exact posterior of a :class:`GaussianMixture` given ``y = A x + noise_std * n``.

    ``x = offset + basis z`` with ``z`` drawn from :attr:`mixture`: for ``noise_std > 0``
    ``basis`` is the identity and ``offset`` zero; for ``noise_std = 0`` ``basis`` spans the
    null space of ``A`` and ``offset`` is the row-space part every solution of ``A x = y``
    shares. Built by :meth:`GaussianMixture.condition_linear`.

    Attributes:
        mixture: the posterior over the free coordinates ``z`` (exact samples, density, and
            the exact score of every diffused marginal of ``z``).
        basis: ``(D, F)`` orthonormal columns; ``offset``: ``(D,)``; ``event_shape``.
        weights: ``(K,)`` the posterior weights of the prior's components.
    """

    def __init__(self, mixture: GaussianMixture, basis: torch.Tensor, offset: torch.Tensor,
                 event_shape: tuple[int, ...]):
        self.mixture, self.basis, self.offset = mixture, basis, offset
        self.event_shape = tuple(event_shape)
        self.weights = mixture.weights

    def sample(self, n: int, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``n`` exact posterior draws, shape ``(n, *event_shape)``."""
        z = self.mixture.sample(n, generator, dtype=torch.float64)
        x = self.offset.to(z.device) + z.reshape(len(z), -1) @ self.basis.T.to(z.device)
        return x.to(dtype).reshape(len(z), *self.event_shape)

    def free(self, x: torch.Tensor) -> torch.Tensor:
        """The free coordinates ``z = basis^T (x - offset)`` of ``x`` ``(B, *event_shape)``;
        shape ``(B, F)``."""
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        return (flat - self.offset.to(flat.device)) @ self.basis.to(flat.device)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log-density of the free coordinates of ``x`` (``x`` off the set ``A x = y``
        is projected onto it); shape ``(B,)``."""
        return self.mixture.log_prob(self.free(x).reshape(x.shape[0], *self.mixture.event_shape))

    def modes(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable posterior component of each sample of ``x``: ``(B,)`` labels
        (``bincount`` of them, over ``B``, gives the shares of draws per mode)."""
        mix = self.mixture
        z = self.free(x).reshape(x.shape[0], *mix.event_shape)
        one = torch.ones(len(z), dtype=torch.float64, device=z.device)
        logc, _, _ = mix._components(z, one, torch.zeros_like(one))
        return logc.argmax(1)


MIXTURES: dict[str, Callable[[], GaussianMixture]] = {
    "ring": GaussianMixture.ring,
    "grid": GaussianMixture.grid,
    "narrow": GaussianMixture.narrow,
    "two_columns": GaussianMixture.two_columns,
}


def get_mixture(name: str) -> GaussianMixture:
    """One of the named 2D presets: ``ring``, ``grid``, ``narrow`` or ``two_columns``."""
    if name not in MIXTURES:
        raise ValueError(f"unknown mixture {name!r}; choose one of {', '.join(MIXTURES)}")
    return MIXTURES[name]()
