"""pyro_vae: variational autoencoders in Pyro.

Start with :class:`VAE` (the model and guide), :func:`fit` (training with SVI) and
:func:`evaluate` (test ELBO and importance-sampled log-likelihood in nats per image).

The names below are imported on first use, so that ``import pyro_vae`` (and the ``pyro-vae``
command's start, which a Ctrl-C may interrupt) does not load PyTorch and Pyro until needed.
"""

import importlib
import sys
import types

from pyro_vae.errors import (
    CheckpointError,
    ConcurrentUseError,
    ConfigError,
    DataError,
    DataNotFoundError,
    NumericalError,
    OutputError,
    PyroVAEError,
    RunFolderBusy,
)

__version__ = "0.1.0"

_LAZY = {
    "ImageData": "pyro_vae.data",
    "load_dataset": "pyro_vae.data",
    "images_from_tensors": "pyro_vae.imagefiles",
    "ESTIMATORS": "pyro_vae.estimators",
    "guide_distribution": "pyro_vae.latents",
    "MeanFieldELBO": "pyro_vae.meanfield",
    "Evaluation": "pyro_vae.evaluate",
    "evaluate": "pyro_vae.evaluate",
    "importance_sampled_log_likelihood": "pyro_vae.evaluate",
    "VAE": "pyro_vae.model",
    "SemiSupervisedVAE": "pyro_vae.m2",
    "ConditionalVAE": "pyro_vae.cvae",
    "OBJECTIVES": "pyro_vae.objectives",
    "log_importance_weights": "pyro_vae.evaluate",
    "make_elbo": "pyro_vae.objectives",
    "MonteCarloEM": "pyro_vae.objectives",
    "ReweightedWakeSleep": "pyro_vae.objectives",
    "WakeSleep": "pyro_vae.objectives",
    "HypersphericalUniform": "pyro_vae.sphere",
    "PowerSpherical": "pyro_vae.sphere",
    "TrainConfig": "pyro_vae.config",
    "TrainResult": "pyro_vae.runfolder",
    "TrainingDiverged": "pyro_vae.train",
    "fit": "pyro_vae.train",
    "load_run": "pyro_vae.runfolder",
    "run_images": "pyro_vae.splits",
    "isolated": "pyro_vae.isolation",
}

__all__ = [
    "ESTIMATORS",
    "OBJECTIVES",
    "VAE",
    "HypersphericalUniform",
    "MeanFieldELBO",
    "MonteCarloEM",
    "PowerSpherical",
    "ReweightedWakeSleep",
    "WakeSleep",
    "CheckpointError",
    "ConcurrentUseError",
    "ConditionalVAE",
    "ConfigError",
    "DataError",
    "DataNotFoundError",
    "Evaluation",
    "ImageData",
    "NumericalError",
    "OutputError",
    "PyroVAEError",
    "RunFolderBusy",
    "SemiSupervisedVAE",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "evaluate",
    "fit",
    "guide_distribution",
    "images_from_tensors",
    "isolated",
    "importance_sampled_log_likelihood",
    "load_dataset",
    "load_run",
    "log_importance_weights",
    "make_elbo",
    "run_images",
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'pyro_vae' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    # Importing the submodule pyro_vae.evaluate makes Python set the package's attribute
    # "evaluate" to that module; the function of that name must win, as it did when this
    # file imported everything eagerly.
    def __setattr__(self, name: str, value) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
