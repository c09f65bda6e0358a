"""Forward SDEs of score-based generative modelling (Song et al., ICLR 2021).

Every SDE here is Gaussian-linear: its drift is ``f(t) x``, its diffusion ``g(t)`` does not depend
on ``x``, and its transition from ``t = 0`` is ``x_t = m(t) x_0 + s(t) z`` with ``z ~ N(0, I)``.
A subclass states three formulas, ``drift_coeff`` (``f``), ``diffusion_coeff`` (``g``) and
``marginal_coeffs`` (``(m, s)``); everything else (``sde``, ``marginal_prob``, the prior, the
reverse-time SDE, the log-SNR and its inverse) follows from them, so a user's own SDE works with
every sampler, loss and likelihood in scoresde.

Data has any shape ``(B, *dims)``; time ``t`` has shape ``(B,)`` (a Python number is broadcast).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Callable

import torch

from .checks import check_number, values_trusted
from .utils import append_dims, batch_sum, time_vector

__all__ = [
    "SDE",
    "ReverseSDE",
    "VPSDE",
    "SubVPSDE",
    "subVPSDE",
    "VESDE",
    "CosineVPSDE",
    "RectifiedFlow",
    "SDES",
    "get_sde",
]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_times(t: torch.Tensor, T: float) -> None:
    """Raise ``ValueError`` unless every entry of ``t`` lies in ``[0, T]`` (skipped inside
    :func:`~scoresde.checks.trusted_values`)."""
    if not values_trusted() and bool(((t < 0) | (t > T) | t.isnan()).any()):
        raise ValueError(f"t must lie in [0, T] = [0, {T:g}], got values in "
                         f"[{float(t.min()):g}, {float(t.max()):g}]")


class SDE(ABC):
    """A Gaussian-linear forward SDE ``dx = f(t) x dt + g(t) dw`` on ``[0, T]``.

    Subclasses define :meth:`drift_coeff`, :meth:`diffusion_coeff` and :meth:`marginal_coeffs`
    (and :meth:`config` to be saved in a run). :meth:`t_from_log_snr` has a generic bisection
    that subclasses may replace with a closed form.
    """

    name = "custom"

    def __init__(self, T: float = 1.0):
        self.T = check_number("T", T, 0, low_open=True)

    # ----- the three formulas a subclass states -------------------------------------------
    @abstractmethod
    def drift_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """``f(t)``, the drift per unit of ``x``: the drift is ``f(t) x``. Shape of ``t``."""

    @abstractmethod
    def diffusion_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """``g(t)``, the diffusion coefficient. Shape of ``t``."""

    @abstractmethod
    def marginal_coeffs(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(m(t), s(t))`` of ``x_t = m(t) x_0 + s(t) z``, each of the shape of ``t``."""

    def config(self) -> dict:
        """The name and parameters that rebuild this SDE with :func:`get_sde`."""
        return {"name": self.name, "T": self.T}

    # ----- what follows from them ----------------------------------------------------------
    def sde(self, x: torch.Tensor, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift and diffusion of the forward SDE.

        Args:
            x: state, shape ``(B, *dims)``.
            t: times, shape ``(B,)`` or a number, inside ``[0, T]``.

        Returns:
            ``(drift, diffusion)``: drift of the shape of ``x``, diffusion of shape ``(B,)``.
        """
        t = self.check_time(t, x)
        return append_dims(self.drift_coeff(t), x.ndim) * x, self.diffusion_coeff(t)

    def marginal_prob(
        self, x0: torch.Tensor, t: torch.Tensor | float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``m(t) x0`` (shape of ``x0``) and std ``s(t)`` (shape ``(B,)``) of ``x_t | x_0``."""
        t = self.check_time(t, x0)
        m, s = self.marginal_coeffs(t)
        return append_dims(m, x0.ndim) * x0, s

    def prior_std(self) -> float:
        """Standard deviation of the prior ``N(0, s(T)^2 I)`` that sampling starts from."""
        _, s = self.marginal_coeffs(torch.tensor([self.T], dtype=torch.float64))
        return float(s[0])

    def prior_sampling(
        self,
        shape: tuple[int, ...] | torch.Size,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Draw ``x_T`` of shape ``shape`` from the prior ``N(0, s(T)^2 I)``.

        The prior ignores the ``m(T) x_0`` term, which is below 0.01 for every built-in SDE but VE,
        whose ``m`` is 1 and whose ``s(T)`` dwarfs the data.
        """
        if device is None and generator is not None:
            device = generator.device
        z = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
        return z * self.prior_std()

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """Log-density of ``z`` (shape ``(B, *dims)``) under the prior; returns shape ``(B,)``."""
        var = self.prior_std() ** 2
        dim = z[0].numel()
        return -0.5 * dim * math.log(2 * math.pi * var) - batch_sum(z**2) / (2 * var)

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """``lambda(t) = log(m(t)^2 / s(t)^2)``, decreasing in ``t``. Shape of ``t``."""
        m, s = self.marginal_coeffs(t)
        return 2 * (torch.log(m) - torch.log(s))

    def t_from_log_snr(self, log_snr: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`log_snr`, by bisection on ``[0, T]`` (clamped at the ends)."""
        lam = torch.as_tensor(log_snr, dtype=torch.float64)
        lo = torch.zeros_like(lam)
        hi = torch.full_like(lam, self.T)
        for _ in range(64):
            mid = (lo + hi) / 2
            above = self.log_snr(mid) > lam  # log-SNR decreases in t: the root lies later
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return ((lo + hi) / 2).to(torch.as_tensor(log_snr).dtype)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False,
                times: torch.Tensor | None = None) -> "ReverseSDE":
        """The reverse-time SDE (or, with ``probability_flow=True``, the probability-flow ODE).

        ``times``: optional times a solver will ask for, whose coefficients are then computed
        once (see :class:`ReverseSDE`).
        """
        return ReverseSDE(self, score_fn, probability_flow, times)

    def check_time(self, t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
        """Return ``t`` as a tensor of shape ``(B,)`` in the dtype and device of ``x``.

        Raises:
            ValueError: ``t`` has the wrong length or lies outside ``[0, T]``.
        """
        batch = x.shape[0]
        if isinstance(t, (int, float)):
            t = time_vector(float(t), x)
        else:
            t = torch.as_tensor(t).to(device=x.device, dtype=x.dtype)
            if t.ndim == 0:
                t = t.expand(batch)
            if t.shape != (batch,):
                raise ValueError(
                    f"t must have shape ({batch},) to match a batch of {batch}, "
                    f"got shape {tuple(t.shape)}"
                )
        _check_times(t, self.T)
        return t

    def check_eps(self, eps: float) -> float:
        """Return ``eps``, the smallest time of a solve or a loss, as a float.

        Raises:
            ValueError: ``eps`` is not a number in ``(0, T)``.
        """
        try:
            return check_number("eps", eps, 0, self.T, low_open=True, high_open=True)
        except ValueError:
            raise ValueError(f"eps must be a number in (0, T) = (0, {self.T:g}), "
                             f"got {eps!r}") from None

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({params})"


class ReverseSDE:
    """The reverse-time SDE of ``forward`` given a score function (Song et al. 2021, eq. 6 and 13).

    ``sde(x, t)`` returns the drift ``f(t) x - g(t)^2 score(x, t)`` and diffusion ``g(t)`` of the
    reverse SDE, or, for the probability-flow ODE, the drift ``f(t) x - g(t)^2 score(x, t) / 2``
    and zero diffusion; :meth:`drift` and :meth:`diffusion` give each alone. Time runs from
    ``T`` down to 0: a step of size ``dt < 0`` moves ``x += drift * dt``. Every sampler and the
    likelihood take their drift and diffusion from here.

    The drift is ``f(t) x + c(t) score(x, t)`` with ``c = -g^2`` (``-g^2 / 2`` for the flow).
    Asked at one number ``t`` for the whole batch, the coefficients ``(f, c, g)`` are read as
    floats (:meth:`coeffs`): at the ``times`` given to the constructor they were evaluated once,
    in one call of the SDE's formulas, and cost a lookup; other times cost one evaluation each.

    Args:
        forward: the forward SDE.
        score_fn: score function ``score_fn(x, t)``.
        probability_flow: the probability-flow ODE instead of the reverse SDE.
        times: optional times (1D) a solver will ask for, e.g. its grid.
    """

    def __init__(self, forward: SDE, score_fn: ScoreFn, probability_flow: bool = False,
                 times: torch.Tensor | None = None):
        self.forward = forward
        self.score_fn = score_fn
        self.probability_flow = bool(probability_flow)
        self.T = forward.T
        self._weight = 0.5 if self.probability_flow else 1.0
        self._table: dict[float, tuple[float, float, float]] = {}
        if times is not None:
            ts = torch.as_tensor(times, dtype=torch.float64).detach().cpu().reshape(-1)
            _check_times(ts, self.T)
            fs, gs = forward.drift_coeff(ts).tolist(), forward.diffusion_coeff(ts).tolist()
            self._table = {t: self._combine(f, g) for t, f, g in zip(ts.tolist(), fs, gs)}

    def _combine(self, f: float, g: float) -> tuple[float, float, float]:
        return f, -(self._weight * g**2), 0.0 if self.probability_flow else g

    def coeffs(self, t: float) -> tuple[float, float, float]:
        """``(f(t), c(t), g(t))`` as floats: drift ``f x + c score(x, t)``, diffusion ``g``.

        Raises:
            ValueError: ``t`` lies outside ``[0, T]``.
        """
        found = self._table.get(t)
        if found is not None:
            return found
        if not 0 <= t <= self.T:
            raise ValueError(f"t must lie in [0, T] = [0, {self.T:g}], got {t!r}")
        t64 = torch.tensor([t], dtype=torch.float64)
        return self._combine(float(self.forward.drift_coeff(t64)),
                             float(self.forward.diffusion_coeff(t64)))

    def drift(self, x: torch.Tensor, t: torch.Tensor | float,
              score: torch.Tensor | None = None) -> torch.Tensor:
        """Drift of the reverse-time process, of the shape of ``x``.

        Args:
            x: state, shape ``(B, *dims)``.
            t: times, shape ``(B,)``, or one number for the whole batch (the solvers' fast
                path: the coefficients are read as floats, see :meth:`coeffs`).
            score: ``score_fn(x, t)`` if the caller has it already (it is not called then).
        """
        if _is_number(t):
            f, c, _ = self.coeffs(float(t))
            if score is None:
                score = self.score_fn(x, time_vector(float(t), x))
            return f * x + c * score
        t = self.forward.check_time(t, x)
        if score is None:
            score = self.score_fn(x, t)
        f, g = self.forward.drift_coeff(t), self.forward.diffusion_coeff(t)
        c = -(self._weight * g**2)
        return append_dims(f, x.ndim) * x + append_dims(c, x.ndim) * score

    def diffusion(self, t: torch.Tensor | float) -> torch.Tensor | float:
        """``g(t)`` of the reverse SDE (zero for the flow): a float for a number ``t``, else a
        tensor of the shape of ``t``."""
        if _is_number(t):
            return self.coeffs(float(t))[2]
        g = self.forward.diffusion_coeff(torch.as_tensor(t))
        return torch.zeros_like(g) if self.probability_flow else g

    def sde(self, x: torch.Tensor, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift (shape of ``x``) and diffusion (shape ``(B,)``) of the reverse-time process.

        ``t``: times of shape ``(B,)`` or one number, inside ``[0, T]``.
        """
        if _is_number(t):
            return self.drift(x, t), x.new_full((x.shape[0],), self.diffusion(t))
        t = self.forward.check_time(t, x)
        return self.drift(x, t), self.diffusion(t)


def _is_number(t) -> bool:
    return isinstance(t, (int, float)) and not isinstance(t, bool)


class VPSDE(SDE):
    """Variance-preserving SDE ``dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw`` (DDPM's limit).

    ``beta(t) = beta_min + t (beta_max - beta_min)``; ``m(t) = exp(-t^2 (beta_max - beta_min) / 4
    - t beta_min / 2)`` and ``s(t) = sqrt(1 - m(t)^2)``.
    """

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0):
        super().__init__(T)
        self.beta_min = check_number("beta_min", beta_min, 0)
        self.beta_max = check_number("beta_max", beta_max, self.beta_min, low_open=True)

    def config(self) -> dict:
        return {"name": self.name, "beta_min": self.beta_min, "beta_max": self.beta_max,
                "T": self.T}

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """``beta(t) = beta_min + t (beta_max - beta_min)``."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """``log m(t) = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2``."""
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def drift_coeff(self, t):
        return -0.5 * self.beta(t)

    def diffusion_coeff(self, t):
        return torch.sqrt(self.beta(t))

    def marginal_coeffs(self, t):
        log_m = self.log_mean_coeff(t)
        return torch.exp(log_m), torch.sqrt(-torch.expm1(2 * log_m))

    def t_from_log_snr(self, log_snr):
        # m^2 = sigmoid(lambda); solve (b1 - b0) t^2 / 2 + b0 t + log m^2 = 0 for t >= 0.
        lam = torch.as_tensor(log_snr)
        log_m2 = -torch.nn.functional.softplus(-lam)
        d = self.beta_max - self.beta_min
        return 2 * -log_m2 / (self.beta_min + torch.sqrt(self.beta_min**2 - 2 * d * log_m2))


class SubVPSDE(VPSDE):
    """Sub-VP SDE: the VP drift with diffusion ``sqrt(beta(t) (1 - exp(-2 int_0^t beta)))``.

    Same mean ``m(t)`` as VP; ``s(t) = 1 - m(t)^2``, below VP's at every ``t`` (Song et al. 2021).
    """

    name = "subvp"

    def diffusion_coeff(self, t):
        return torch.sqrt(self.beta(t) * -torch.expm1(4 * self.log_mean_coeff(t)))

    def marginal_coeffs(self, t):
        log_m = self.log_mean_coeff(t)
        return torch.exp(log_m), -torch.expm1(2 * log_m)

    def t_from_log_snr(self, log_snr):
        # m^2 / (1 - m^2)^2 = e^lambda: with a = m^2, a^2 - (2 + e^-lambda) a + 1 = 0, a < 1.
        lam = torch.as_tensor(log_snr)
        r = torch.exp(-lam)  # b = 2 + r and b^2 - 4 = r (4 + r), written without cancellation
        m2 = 2 / (2 + r + torch.sqrt(r * (4 + r)))
        return super().t_from_log_snr(torch.log(m2) - torch.log1p(-m2))


subVPSDE = SubVPSDE


class VESDE(SDE):
    """Variance-exploding SDE ``dx = sigma(t) sqrt(2 log(sigma_max / sigma_min)) dw`` (NCSN).

    ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``; ``m(t) = 1`` and ``s(t)^2 = sigma(t)^2 -
    sigma_min^2``, the exact variance the SDE adds from ``t = 0`` (Song et al. 2021, appendix C;
    score_sde's code uses ``sigma(t)``, which differs by ``sigma_min^2`` in the variance).
    """

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, T: float = 1.0):
        super().__init__(T)
        self.sigma_min = check_number("sigma_min", sigma_min, 0, low_open=True)
        self.sigma_max = check_number("sigma_max", sigma_max, self.sigma_min, low_open=True)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def config(self) -> dict:
        return {"name": self.name, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
                "T": self.T}

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """``sigma(t) = sigma_min (sigma_max / sigma_min)^(t / T)``."""
        return self.sigma_min * torch.exp(t / self.T * self._log_ratio)

    def drift_coeff(self, t):
        return torch.zeros_like(t)

    def diffusion_coeff(self, t):
        return self.sigma(t) * math.sqrt(2 * self._log_ratio / self.T)

    def marginal_coeffs(self, t):
        s = self.sigma_min * torch.sqrt(torch.expm1(2 * t / self.T * self._log_ratio))
        return torch.ones_like(t), s

    def t_from_log_snr(self, log_snr):
        lam = torch.as_tensor(log_snr)
        var = torch.exp(-lam) / self.sigma_min**2
        return torch.log1p(var) * self.T / (2 * self._log_ratio)


class CosineVPSDE(SDE):
    """VP SDE with the cosine schedule of Nichol & Dhariwal (2021).

    ``m(t) = cos(phi(t)) / cos(phi(0))`` with ``phi(t) = (t / T * t_max + offset) / (1 + offset)
    * pi / 2``; ``s(t) = sqrt(1 - m^2)``, ``f(t) = d log m / dt`` and ``g(t)^2 = -2 f(t)``.
    ``t_max < 1`` keeps ``beta`` finite at ``T``, as DPM-Solver's cosine schedule does.
    """

    name = "cosine"

    def __init__(self, offset: float = 0.008, t_max: float = 0.9946, T: float = 1.0):
        super().__init__(T)
        self.offset = check_number("offset", offset, 0, low_open=True)
        self.t_max = check_number("t_max", t_max, 0, 1, low_open=True, high_open=True)
        self._phi0 = self.offset / (1 + self.offset) * math.pi / 2
        self._dphi = self.t_max / self.T / (1 + self.offset) * math.pi / 2

    def config(self) -> dict:
        return {"name": self.name, "offset": self.offset, "t_max": self.t_max, "T": self.T}

    def _phi(self, t):
        return self._phi0 + t * self._dphi

    def drift_coeff(self, t):
        return -torch.tan(self._phi(t)) * self._dphi

    def diffusion_coeff(self, t):
        return torch.sqrt(-2 * self.drift_coeff(t))

    def marginal_coeffs(self, t):
        # cos(phi0 + a) / cos(phi0) = 1 - 2 sin^2(a / 2) - tan(phi0) sin(a), exact near t = 0.
        a = t * self._dphi
        log_m = torch.log1p(-2 * torch.sin(a / 2) ** 2 - math.tan(self._phi0) * torch.sin(a))
        return torch.exp(log_m), torch.sqrt(-torch.expm1(2 * log_m))

    def t_from_log_snr(self, log_snr):
        lam = torch.as_tensor(log_snr)
        m = torch.sigmoid(lam).sqrt()
        return (torch.arccos(m * math.cos(self._phi0)) - self._phi0) / self._dphi


class RectifiedFlow(SDE):
    """The straight path of rectified flow and flow matching, ``x_t = (1 - t) x_0 + t z``.

    Liu et al. (2022), Lipman et al. (2023), Esser et al. (2024): ``m(t) = 1 - t``, ``s(t) = t``.
    The SDE with these marginals has ``f(t) = d log m / dt = -1 / (1 - t)`` and ``g(t)^2 =
    d s^2 / dt - 2 f s^2 = 2 t / (1 - t)``; its probability-flow ODE ``dx/dt = f x - g^2 score / 2``
    is the flow's velocity field ``E[z - x_0 | x_t]``, and its log-SNR ``2 log((1 - t) / t)`` has
    the closed-form inverse ``t = sigmoid(-lambda / 2)``.

    The ends, handled by the time range and nothing else (no solver asks for the class):

    - ``t = 1`` is pure noise and the drift is singular there (``f`` and ``g^2`` grow like
      ``1 / (1 - t)``). The path stops at ``T = 1 - 1e-3`` by default, where ``m(T) = 1e-3``: the
      prior ``N(0, s(T)^2 I)`` leaves out the term ``m(T) x_0``, as for VP, and ``f(T) = -1000``
      is finite. The flow velocity stays finite as ``t -> 1`` (``f x`` and ``g^2 score / 2`` cancel
      to ``E[z - x_0 | x_t]``), so the ODE solvers (ode, euler, heun, dpmpp_2m, unipc, the
      likelihood) take their first step from ``T`` as from anywhere; the stochastic ones (em, pc,
      torchsde) meet a reverse SDE that there is an Ornstein-Uhlenbeck process fast on the
      clock ``-log(1 - t)``: a first step longer than ``1 - T`` overshoots, and the strong
      mean reversion forgets that error within a few steps, as it forgets the prior's (on the
      exact ring mixture they match the target from 25 steps, as on VP).
    - ``t = 0`` is the data, where ``s = 0``: every solve and loss stops at ``eps > 0``
      (sampling's :func:`~scoresde.sampling.default_eps` gives ``1e-3`` since ``m(T) < 1/2``),
      so the sampling log-SNR range ``[lambda(T), lambda(eps)]`` is ``+-13.8``, symmetric.

    Args:
        T: the last time, in ``(0, 1)``; ``1 - T`` is the share of data left in ``x_T``.
    """

    name = "rf"

    def __init__(self, T: float = 1 - 1e-3):
        super().__init__(check_number("T", T, 0, 1, low_open=True, high_open=True))

    def drift_coeff(self, t):
        return -1 / (1 - t)

    def diffusion_coeff(self, t):
        return torch.sqrt(2 * t / (1 - t))

    def marginal_coeffs(self, t):
        return 1 - t, t.clone()

    def log_snr(self, t):
        return 2 * (torch.log1p(-t) - torch.log(t))

    def t_from_log_snr(self, log_snr):
        return torch.sigmoid(-torch.as_tensor(log_snr) / 2)


SDES: dict[str, type[SDE]] = {
    "vp": VPSDE,
    "subvp": SubVPSDE,
    "ve": VESDE,
    "cosine": CosineVPSDE,
    "rf": RectifiedFlow,
}


def get_sde(name: str, **params) -> SDE:
    """Build an SDE by name (``vp``, ``subvp``, ``ve``, ``cosine``, ``rf``) with keyword parameters.

    Raises:
        ValueError: unknown name, or a parameter the SDE does not take.
    """
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in SDES:
        raise ValueError(f"unknown SDE {name!r}; choose one of {', '.join(SDES)}")
    params.pop("name", None)
    try:
        return SDES[key](**params)
    except TypeError as err:
        raise ValueError(f"bad parameters for SDE {name!r}: {err}") from err
