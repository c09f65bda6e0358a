"""scoresde: score-based generative modelling with stochastic differential equations.

Pluggable Gaussian-linear SDEs (VP, sub-VP, VE, cosine VP, your own), exact Gaussian-mixture
targets, samplers for the reverse-time SDE and the probability-flow ODE, exact likelihoods, and
training of time-conditioned score networks (Song et al., ICLR 2021).
"""

from .likelihood import bits_per_dim, decode, encode, log_likelihood
from .sampling import (GRIDS, SAMPLERS, default_eps, sample, time_edm, time_log_snr,
                       time_uniform)
from .sde import SDE, SDES, CosineVPSDE, ReverseSDE, SubVPSDE, VESDE, VPSDE, get_sde, subVPSDE
from .targets import MIXTURES, GaussianMixture, get_mixture
from .utils import append_dims, batch_sum, make_generator, resolve_device, seed_everything
from . import data, toys
from .losses import dsm_loss, sample_time, time_weight
from .models import DDPMpp, ScoreMLP, ScoreModel, UNet
from .runs import load_run
from .training import TrainingInterrupted, train, train_classifier
from . import config
from .config import TrainConfig
from .guidance import classifier_free_guidance, classifier_guidance, conditional_score
from .guidance import function_guidance
from .cascade import cascade
from .latent import LatentDiffusion
from .models import ConvAutoencoder
from .labels import NULL_LABEL
from .losses import classifier_loss
from .models import ClassifierMLP, ClassifierUNet, NoiseClassifier
from .sampling import IMPUTATION_SOLVERS, imputation_callback, impute
from .demo import run_demo
from .convert import SCORE_SDE_CONFIGS, convert_score_sde, from_score_sde
from . import features, metrics, quality
from .metrics import frechet_distance, kid, precision_recall
from .quality import run_quality, sample_quality
from .observe import LinearObservation, grey_matrix, mask_matrix
from .sampling import INVERSE_METHODS, solve_inverse
from .targets import LinearPosterior

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "SDE", "SDES", "ReverseSDE", "VPSDE", "SubVPSDE", "subVPSDE", "VESDE", "CosineVPSDE", "get_sde",
    "GaussianMixture", "MIXTURES", "get_mixture",
    "log_likelihood", "bits_per_dim", "encode", "decode",
    "append_dims", "batch_sum", "make_generator", "resolve_device", "seed_everything",
    "data", "toys", "dsm_loss", "sample_time", "time_weight", "ScoreMLP", "UNet", "ScoreModel",
    "DDPMpp",
    "train", "TrainConfig", "config", "load_run", "TrainingInterrupted",
    "sample", "SAMPLERS", "GRIDS", "default_eps", "time_uniform", "time_log_snr", "time_edm",
    "conditional_score", "classifier_free_guidance", "classifier_guidance", "NULL_LABEL",
    "impute", "imputation_callback", "IMPUTATION_SOLVERS", "NoiseClassifier", "ClassifierMLP",
    "ClassifierUNet", "classifier_loss", "train_classifier", "run_demo",
    "from_score_sde", "convert_score_sde", "SCORE_SDE_CONFIGS",
    "features", "metrics", "quality", "frechet_distance", "kid", "precision_recall",
    "sample_quality", "run_quality",
    "solve_inverse", "INVERSE_METHODS", "LinearObservation", "LinearPosterior", "mask_matrix",
    "grey_matrix",
    "function_guidance", "cascade", "LatentDiffusion", "ConvAutoencoder",
]
