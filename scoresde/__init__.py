"""scoresde: score-based generative modelling with stochastic differential equations.

Pluggable Gaussian-linear SDEs (VP, sub-VP, VE, cosine VP, your own), exact Gaussian-mixture
targets, samplers for the reverse-time SDE and the probability-flow ODE, exact likelihoods, and
training of time-conditioned score networks (Song et al., ICLR 2021).
"""

from .likelihood import bits_per_dim, decode, encode, log_likelihood
from .sde import SDE, SDES, CosineVPSDE, ReverseSDE, SubVPSDE, VESDE, VPSDE, get_sde, subVPSDE
from .targets import MIXTURES, GaussianMixture, get_mixture
from .utils import append_dims, batch_sum, make_generator, resolve_device, seed_everything

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "SDE", "SDES", "ReverseSDE", "VPSDE", "SubVPSDE", "subVPSDE", "VESDE", "CosineVPSDE", "get_sde",
    "GaussianMixture", "MIXTURES", "get_mixture",
    "log_likelihood", "bits_per_dim", "encode", "decode",
    "append_dims", "batch_sum", "make_generator", "resolve_device", "seed_everything",
]
