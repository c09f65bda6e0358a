"""Samplers for the reverse-time SDE and the probability-flow ODE.

Each solver is a plain function ``sampler(score_fn, sde, x, ts, *, generator=None,
callback=None, **options) -> (x, info)`` taking the prior draw ``x`` at ``ts[0]`` and a
decreasing time grid ``ts``. :data:`SOLVERS` is the one table of them (function, default grid,
per-step hook); :data:`SAMPLERS` maps names to the functions and :func:`sample` draws the prior,
builds the grid (:data:`GRIDS`), runs one and denoises. Every solver takes its drift from the
SDE's own ``sde.reverse(score_fn, probability_flow=...)``. ``generator`` is a
``torch.Generator`` or a :class:`PerSampleGenerator` (``sample(..., seeds=...)``): then sample
``i`` depends only on its own seed, whatever the batch (for the fixed-step solvers; see
:func:`sample` for the adaptive ones).
"""

from ..utils import CountedScore
from .api import DEFAULT_GRIDS, IMPUTATION_SOLVERS, SAMPLERS, SOLVERS, Solver, prior_draw, sample
from .common import PerSampleGenerator
from .fast import sample_dpmpp_2m, sample_euler, sample_heun, sample_unipc
from .gei import sample_gei
from .impute import imputation_callback, impute
from .inverse import INVERSE_METHODS, solve_inverse
from .smc import sample_smc
from .grids import GRIDS, default_eps, sigma_of_t, time_edm, time_log_snr, time_uniform
from .ode import sample_ode
from .sde_solvers import CORRECTORS, PREDICTORS, sample_em, sample_pc
from .torchsde_adapter import TORCHSDE_METHODS, PerSampleBrownian, SteppedBrownian, sample_torchsde

__all__ = [
    "sample", "SAMPLERS", "SOLVERS", "Solver", "DEFAULT_GRIDS", "GRIDS", "PREDICTORS",
    "CORRECTORS",
    "TORCHSDE_METHODS", "default_eps", "sigma_of_t", "time_uniform", "time_log_snr", "time_edm",
    "sample_em", "sample_pc", "sample_ode", "sample_torchsde", "sample_euler", "sample_heun",
    "sample_dpmpp_2m", "sample_unipc", "sample_gei", "CountedScore", "impute",
    "imputation_callback", "IMPUTATION_SOLVERS",
    "PerSampleGenerator", "PerSampleBrownian", "SteppedBrownian", "prior_draw",
    "solve_inverse", "INVERSE_METHODS", "sample_smc",
]
