"""Post-hoc EMA: power-function averages of the weights and their reconstruction after training.

Karras et al. 2024 ("Analyzing and Improving the Training Dynamics of Diffusion Models",
section 3 and appendix C). A power-function EMA of exponent ``gamma`` averages the weights
``theta_1 .. theta_t`` of steps ``1 .. t`` with the density ``(gamma + 1) tau^gamma /
t^(gamma + 1)`` over ``tau in [0, t]``: a window that grows with training, whose width is
stated by its *relative standard deviation* ``sigma_rel`` (the std of the density over its
length ``t``). Tracked with ``beta_t = (1 - 1/t)^(gamma + 1)``,

    theta_hat_t = beta_t theta_hat_{t-1} + (1 - beta_t) theta_t,

the weight of step ``i`` at step ``t`` is exactly ``(i^(gamma+1) - (i-1)^(gamma+1)) /
t^(gamma+1)``: the density's mass over step ``i`` (:func:`power_kernel`). Training stores
snapshots of a few such averages every so often; since each snapshot is a known linear
combination of the trajectory, the average of any other length is approximated by the
combination of snapshots whose kernel is nearest the target's in least squares
(:func:`solve_coefficients`), and :func:`reconstruct` forms it.

Plain numbers and numpy here; the tracker works on tensors and knows nothing of runs.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

import numpy as np
import torch

__all__ = ["SIGMA_REL_MAX", "sigma_rel_to_gamma", "gamma_to_sigma_rel", "check_sigma_rels",
           "power_beta", "power_kernel", "kernel_products", "solve_coefficients",
           "kernel_error", "PowerEMA", "check_snapshot", "reconstruct"]

# The largest relative standard deviation taken (a power function's std peaks at 0.3003, at
# gamma = -0.38; beyond it no exponent gives the length).
SIGMA_REL_MAX = 0.3
# Up to this many steps the kernels' inner products are summed over the steps exactly; beyond,
# the kernels are smooth at the scale of a step and the integrals' closed form is used.
EXACT_STEPS = 100_000


def gamma_to_sigma_rel(gamma: float) -> float:
    """The relative std of the power-function density of exponent ``gamma`` (> -1):
    ``sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))``."""
    gamma = float(gamma)
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent whose density has relative std ``sigma_rel`` in ``(0, SIGMA_REL_MAX]``:
    the largest real root of ``gamma^3 + 7 gamma^2 + (16 - s^-2) gamma + (12 - s^-2)``
    (:func:`gamma_to_sigma_rel` squared and cleared of fractions)."""
    s = float(sigma_rel) ** -2
    roots = np.roots([1.0, 7.0, 16.0 - s, 12.0 - s])
    return float(roots[np.abs(roots.imag) < 1e-9].real.max())


def check_sigma_rels(name: str, values) -> list[float]:
    """``values`` (a number, or a sequence of them) as a list of distinct floats in ``(0,
    SIGMA_REL_MAX]``; a one-line ``ValueError``/``TypeError`` naming ``name`` otherwise."""
    seq = [values] if isinstance(values, (int, float)) else values
    if isinstance(seq, (str, bytes)) or not isinstance(seq, Iterable):
        raise TypeError(f"{name} must be relative standard deviations, got {values!r}")
    out = []
    for v in seq:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{name} must be numbers, got {v!r}")
        if not 0 < v <= SIGMA_REL_MAX:
            raise ValueError(f"{name}: a relative standard deviation lies in (0, "
                             f"{SIGMA_REL_MAX}], got {v!r}")
        if float(v) in out:
            raise ValueError(f"{name}: {v!r} is given twice")
        out.append(float(v))
    return out


def power_beta(gamma: float, t: int) -> float:
    """The decay at step ``t`` (from 1) of the power-function EMA of exponent ``gamma``:
    ``(1 - 1/t)^(gamma + 1)``; 0 at the first step (the average starts at the weights)."""
    return (1.0 - 1.0 / t) ** (gamma + 1.0)


def power_kernel(gamma: float, t: int, length: int | None = None) -> np.ndarray:
    """The weights ``(length,)`` (``length`` >= ``t``, default ``t``) of steps ``1 ..
    length`` in the power-function EMA of exponent ``gamma`` at step ``t``: ``(i^(gamma+1) -
    (i-1)^(gamma+1)) / t^(gamma+1)`` up to ``t``, 0 after. They sum to 1."""
    i = np.arange(1, (length or t) + 1, dtype=np.float64)
    a = gamma + 1.0
    w = ((i / t) ** a - ((i - 1) / t) ** a)
    w[t:] = 0.0
    return w


def _integral_products(ga, ta, gb, tb) -> np.ndarray:
    """``int p_a p_b`` of the continuous densities (broadcast arrays of exponents and steps):
    ``(ga+1)(gb+1) / ((ga+gb+1) max(ta, tb)) * (min/max)^(g of the longer one)``."""
    ga, ta, gb, tb = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64)
                                           for v in (ga, ta, gb, tb)))
    ratio = np.minimum(ta, tb) / np.maximum(ta, tb)
    g_long = np.where(ta < tb, gb, ga)
    return (ga + 1) * (gb + 1) / ((ga + gb + 1) * np.maximum(ta, tb)) * ratio ** g_long


def _step_kernels(gammas, steps, i: np.ndarray) -> np.ndarray:
    """The weights ``(K, len(i))`` of steps ``i`` in the kernels of exponents ``gammas`` at
    ``steps`` (:func:`power_kernel`, each 0 after its step)."""
    a = np.asarray(gammas, dtype=np.float64)[:, None] + 1.0
    t = np.asarray(steps, dtype=np.float64)[:, None]
    return (np.minimum(i, t) / t) ** a - (np.minimum(i - 1, t) / t) ** a


def _summed_products(gammas_a, steps_a, gammas_b, steps_b, chunk: int = 8192) -> np.ndarray:
    """``sum_i w_a(i) w_b(i)`` of the exact step kernels, ``(len(a), len(b))``, by blocks of
    steps."""
    length = int(max(max(steps_a), max(steps_b)))
    out = np.zeros((len(gammas_a), len(gammas_b)))
    for start in range(0, length, chunk):
        i = np.arange(start + 1, min(start + chunk, length) + 1, dtype=np.float64)
        out += _step_kernels(gammas_a, steps_a, i) @ _step_kernels(gammas_b, steps_b, i).T
    return out


def kernel_products(gammas_a, steps_a, gammas_b, steps_b, *, exact: bool | None = None
                    ) -> np.ndarray:
    """The inner products ``(len(a), len(b))`` of the power-function kernels of exponents
    ``gammas_a`` at steps ``steps_a`` with those of ``b``: summed over the steps (``exact``),
    or the continuous densities' closed form (EDM2's); None: exact up to
    :data:`EXACT_STEPS` steps."""
    if exact is None:
        exact = max(max(steps_a), max(steps_b)) <= EXACT_STEPS
    if exact:
        return _summed_products(gammas_a, steps_a, gammas_b, steps_b)
    return _integral_products(np.asarray(gammas_a)[:, None], np.asarray(steps_a)[:, None],
                              np.asarray(gammas_b)[None, :], np.asarray(steps_b)[None, :])


def solve_coefficients(gammas, steps, gamma: float, step: int, *,
                       exact: bool | None = None) -> np.ndarray:
    """The coefficients ``(K,)`` of the snapshots (power-function EMAs of exponents
    ``gammas`` at ``steps``) whose combination's kernel is nearest in least squares to that of
    exponent ``gamma`` at ``step``: the Gram system ``A x = b`` of :func:`kernel_products`,
    scaled to sum to 1 (the combination is an average). Snapshots after ``step`` get 0."""
    gammas, steps = np.asarray(gammas, dtype=np.float64), np.asarray(steps, dtype=np.float64)
    use = steps <= step
    if not use.any():
        raise ValueError(f"no snapshot at or before step {step}")
    g, t = gammas[use], steps[use]
    a = kernel_products(g, t, g, t, exact=exact)
    b = kernel_products(g, t, [gamma], [step], exact=exact)[:, 0]
    try:
        x = np.linalg.solve(a, b)
    except np.linalg.LinAlgError:  # two snapshots of one kernel: any split of it will do
        x = np.linalg.lstsq(a, b, rcond=None)[0]
    out = np.zeros(len(gammas))
    out[use] = x / x.sum()
    return out


def kernel_error(gammas, steps, coefficients, gamma: float, step: int) -> float:
    """The L1 distance ``sum_i |sum_k x_k w_k(i) - w(i)|`` between the kernel of a combination
    of snapshots and the target's (exact step kernels): the share of the average that comes
    from the wrong steps."""
    length = int(max(max(steps), step))
    combined = sum(x * power_kernel(g, int(t), length)
                   for g, t, x in zip(gammas, steps, coefficients) if x != 0)
    return float(np.abs(combined - power_kernel(gamma, int(step), length)).sum())


class PowerEMA:
    """Power-function EMAs of named tensors (a model's ``state_dict()``), one per relative
    std of ``sigma_rels``, updated after each step.

    Args:
        sigma_rels: the profiles' relative standard deviations.
        tensors: name to tensor: the live weights (updated in place by training).
    """

    def __init__(self, sigma_rels: Iterable[float], tensors: Mapping[str, torch.Tensor]):
        self.sigma_rels = [float(s) for s in sigma_rels]
        self.gammas = [sigma_rel_to_gamma(s) for s in self.sigma_rels]
        self.names = list(tensors)
        self.current = [tensors[k] for k in self.names]
        self.averages = [[v.detach().clone() for v in self.current] for _ in self.sigma_rels]

    @torch.no_grad()
    def update(self, t: int) -> None:
        """The averages after step ``t`` (from 1): ``lerp`` towards the weights by ``1 -
        beta_t``."""
        for gamma, average in zip(self.gammas, self.averages):
            if t == 1:
                torch._foreach_copy_(average, self.current)
            else:
                torch._foreach_lerp_(average, self.current, 1.0 - power_beta(gamma, t))

    def state_dict(self) -> dict:
        """``{"sigma_rels": [...], "averages": [{name: tensor}, ...]}``: plain data, copies on
        the CPU (a checkpoint or snapshot does not double the averages' memory on the device)."""
        return {"sigma_rels": list(self.sigma_rels),
                "averages": [{k: v.detach().to("cpu", copy=True)
                              for k, v in zip(self.names, average)}
                             for average in self.averages]}

    def load_state_dict(self, state: Mapping) -> None:
        """The averages of :meth:`state_dict` (the same profiles, in order)."""
        if [float(s) for s in state["sigma_rels"]] != self.sigma_rels:
            raise ValueError(f"the checkpoint's EMA profiles {list(state['sigma_rels'])} are not "
                             f"the run's {self.sigma_rels}")
        with torch.no_grad():
            for average, saved in zip(self.averages, state["averages"]):
                torch._foreach_copy_(average, [saved[k].to(average[0].device)
                                               for k in self.names])


def check_snapshot(snap, step: int) -> None:
    """Check that ``snap`` is a snapshot of ``step``: ``{"step": step, "sigma_rels": [...],
    "averages": [{name: tensor}, ...]}``, one average per length, each of the same tensors.

    Raises:
        ValueError: one line saying what is wrong.
    """
    if not isinstance(snap, dict) or not {"step", "sigma_rels", "averages"} <= set(snap):
        raise ValueError("it lacks step, sigma_rels or averages")
    if snap["step"] != step:
        raise ValueError(f"it says step {snap['step']!r}, its name step {step}")
    averages, sigma_rels = snap["averages"], snap["sigma_rels"]
    if (not isinstance(averages, list) or not isinstance(sigma_rels, list) or not averages
            or len(averages) != len(sigma_rels)):
        raise ValueError("its averages are not one per relative length")
    if not all(isinstance(a, dict) and all(isinstance(v, torch.Tensor) for v in a.values())
               and set(a) == set(averages[0]) for a in averages):
        raise ValueError("its averages are not each the same tensors by name")


def reconstruct(snapshots: Iterable[Mapping], sigma_rel: float,
                step: int | None = None) -> tuple[dict, dict]:
    """The EMA of relative std ``sigma_rel`` at ``step`` (default: the last snapshot's) from
    stored snapshots, each ``{"step": int, "sigma_rels": [...], "averages": [{name:
    tensor}, ...]}``: the combination of :func:`solve_coefficients`, summed in float64.

    ``snapshots`` is iterated twice (a list, or a re-iterable that loads them one at a time).
    Every average must hold the same tensors (a one-line ValueError otherwise).

    Returns:
        ``(weights, info)``: name to tensor (the snapshots' dtype), and ``{"step",
        "snapshots", "coefficients", "kernel_error"}`` (:func:`kernel_error`).
    """
    gamma = sigma_rel_to_gamma(sigma_rel)
    gammas, steps, names = [], [], None
    for snap in snapshots:
        for average in snap["averages"]:
            names = set(average) if names is None else names
            if set(average) != names:
                raise ValueError(f"the EMA snapshot of step {snap['step']} holds other tensors "
                                 "than the first: the snapshots are not of one run")
        for s in snap["sigma_rels"]:
            gammas.append(sigma_rel_to_gamma(s))
            steps.append(int(snap["step"]))
    if not steps:
        raise ValueError("no EMA snapshots to reconstruct from")
    step = max(steps) if step is None else int(step)
    x = solve_coefficients(gammas, steps, gamma, step)
    total, dtypes, k = {}, {}, 0
    for snap in snapshots:
        for average in snap["averages"]:
            if x[k] != 0:
                for name, v in average.items():
                    dtypes.setdefault(name, v.dtype)
                    term = v.detach().to(torch.float64) * float(x[k])
                    total[name] = term if name not in total else total[name] + term
            k += 1
    weights = {name: v.to(dtypes[name]) for name, v in total.items()}
    info = {"step": step, "snapshots": int((x != 0).sum()), "coefficients": x.tolist(),
            "kernel_error": kernel_error(gammas, steps, x, gamma, step)}
    return weights, info
