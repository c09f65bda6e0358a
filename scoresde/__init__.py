"""scoresde: score-based generative modelling with stochastic differential equations.

Pluggable Gaussian-linear SDEs (VP, sub-VP, VE, cosine VP, your own), exact Gaussian-mixture
targets, samplers for the reverse-time SDE and the probability-flow ODE, exact likelihoods, and
training of time-conditioned score networks (Song et al., ICLR 2021).

The names below are imported when first used (``scoresde.train`` imports the training modules
then), so ``import scoresde`` and ``scoresde --help`` load neither PyTorch nor SciPy. Every
module of the package is an attribute too (``scoresde.sampling``, ``scoresde.runs``).
"""

from __future__ import annotations

import sys
from importlib import import_module
from importlib.util import find_spec
from types import ModuleType

__version__ = "0.1.0"

# The public names, by the module each comes from.
_HOMES = {
    "sde": ("SDE", "SDES", "ReverseSDE", "VPSDE", "SubVPSDE", "subVPSDE", "VESDE", "CosineVPSDE",
            "RectifiedFlow", "get_sde"),
    "targets": ("GaussianMixture", "MIXTURES", "get_mixture", "LinearPosterior"),
    "likelihood": ("log_likelihood", "bits_per_dim", "encode", "decode"),
    "utils": ("append_dims", "batch_sum", "make_generator", "resolve_device", "seed_everything"),
    "losses": ("dsm_loss", "sample_time", "time_weight", "classifier_loss"),
    "models": ("ScoreMLP", "UNet", "ScoreModel", "DDPMpp", "NoiseClassifier", "ClassifierMLP",
               "ClassifierUNet", "ConvAutoencoder"),
    "training": ("train", "TrainingInterrupted", "train_classifier"),
    "config": ("TrainConfig",),
    "runs": ("load_run",),
    "sampling": ("sample", "SAMPLERS", "GRIDS", "default_eps", "time_uniform", "time_log_snr",
                 "time_edm", "impute", "imputation_callback", "IMPUTATION_SOLVERS",
                 "solve_inverse", "INVERSE_METHODS"),
    "guidance": ("conditional_score", "classifier_free_guidance", "classifier_guidance",
                 "function_guidance"),
    "labels": ("NULL_LABEL",),
    "demo": ("run_demo",),
    "convert": ("from_score_sde", "convert_score_sde", "SCORE_SDE_CONFIGS"),
    "metrics": ("frechet_distance", "kid", "precision_recall"),
    "quality": ("sample_quality", "run_quality"),
    "observe": ("LinearObservation", "mask_matrix", "grey_matrix"),
    "cascade": ("cascade",),
    "latent": ("LatentDiffusion",),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}
# Modules that are public names themselves.
_MODULES = ("data", "toys", "config", "features", "metrics", "quality", "phema")

__all__ = ["__version__", *_HOME, *_MODULES]


def __getattr__(name: str):
    """A public name, or a module of the package, imported on first use and kept."""
    if name in _HOME:
        value = getattr(import_module(f".{_HOME[name]}", __name__), name)
    elif _is_module(name):
        value = import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def _is_module(name: str) -> bool:
    """Whether ``name`` is a module or package of scoresde (not a folder of data)."""
    if not name.isidentifier() or name.startswith("_"):
        return False
    spec = find_spec(f"{__name__}.{name}")
    return spec is not None and spec.origin not in (None, "namespace")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(ModuleType):
    """The package, whose ``cascade`` is the function :func:`scoresde.cascade.cascade`: importing
    the module of that name (which the training loop does) must not put the module there."""

    def __setattr__(self, name: str, value) -> None:
        if name == "cascade" and isinstance(value, ModuleType):
            return  # the module stays in sys.modules, where imports find it
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
