"""Exceptions a user can cause.

Every error that comes from the user's input (a flag, a data folder, a checkpoint, an output
path) is a :class:`PyroVAEError`; the CLI turns it into a one-line message and a non-zero exit
code. Anything else is a bug and keeps its traceback.
"""

__all__ = [
    "CheckpointError",
    "ConcurrentUseError",
    "ConfigError",
    "DataError",
    "DataNotFoundError",
    "DistributedError",
    "NumericalError",
    "OutputError",
    "PyroVAEError",
    "RunFolderBusy",
]


class PyroVAEError(Exception):
    """Base class of the errors a user can cause and fix.

    ``shared`` is true for an error that every process of a distributed run raised alike
    (rank 0 reports it; the others stay quiet).
    """

    shared = False


class ConfigError(PyroVAEError, ValueError):
    """A setting is out of range, of the wrong type, or two settings do not go together."""


class DataNotFoundError(PyroVAEError, FileNotFoundError):
    """A data set is neither on disk nor downloadable."""


class DataError(PyroVAEError, ValueError):
    """Data that cannot be used: a damaged file, NaN, wrong shapes, values outside a
    likelihood's support."""


class CheckpointError(PyroVAEError):
    """A checkpoint or run folder that cannot be read, is damaged, or does not match."""


class OutputError(PyroVAEError):
    """A result that cannot be written: an unwritable folder, a full disk, a bad file name."""


class RunFolderBusy(PyroVAEError):
    """Another process holds the run folder (see :mod:`pyro_vae.runfolder`)."""


class NumericalError(PyroVAEError):
    """A computation gave NaN or infinity where a number was due (nothing is written)."""


class ConcurrentUseError(PyroVAEError, RuntimeError):
    """Another thread of this process is inside a pyro_vae call (see
    :func:`pyro_vae.isolation.isolated`): Pyro's param store and handler stack are one per
    process, so two calls at once would train and score in each other's state."""


class DistributedError(PyroVAEError):
    """Processes of a distributed run cannot connect, or one of them failed or timed out.

    ``elsewhere`` is true where the cause lies in another process (this one lost its partner).
    """

    elsewhere = False


def raised_inside_pyro(error: PyroVAEError) -> PyroVAEError:
    """The error that Pyro's trace messenger re-raised as ``error`` (``type(e)(message +
    shapes) from e``, once a trace deep): the first in the chain of causes of our own."""
    while isinstance(error.__cause__, PyroVAEError):
        error = error.__cause__
    return error
