"""pyro_vae: variational autoencoders in Pyro.

Start with :class:`VAE` (the model and guide), :func:`fit` (training with SVI) and
:func:`evaluate` (test ELBO and importance-sampled log-likelihood in nats per image).
"""

from pyro_vae.data import ImageData, load_dataset
from pyro_vae.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DataNotFoundError,
    NumericalError,
    OutputError,
    PyroVAEError,
    RunFolderBusy,
)
from pyro_vae.estimators import ESTIMATORS, guide_distribution
from pyro_vae.evaluate import Evaluation, evaluate, importance_sampled_log_likelihood
from pyro_vae.model import VAE
from pyro_vae.objectives import OBJECTIVES, log_importance_weights, make_elbo
from pyro_vae.train import TrainConfig, TrainResult, fit, load_run

__version__ = "0.1.0"

__all__ = [
    "ESTIMATORS",
    "OBJECTIVES",
    "VAE",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DataNotFoundError",
    "Evaluation",
    "ImageData",
    "NumericalError",
    "OutputError",
    "PyroVAEError",
    "RunFolderBusy",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "fit",
    "guide_distribution",
    "importance_sampled_log_likelihood",
    "load_dataset",
    "load_run",
    "log_importance_weights",
    "make_elbo",
]
