"""Exceptions a user can cause.

Every error that comes from the user's input (a flag, a data folder, a checkpoint) is a
:class:`PyroVAEError`; the CLI turns it into a one-line message and a non-zero exit code.
Anything else is a bug and keeps its traceback.
"""

__all__ = ["CheckpointError", "ConfigError", "DataError", "DataNotFoundError", "PyroVAEError"]


class PyroVAEError(Exception):
    """Base class of the errors a user can cause and fix."""


class ConfigError(PyroVAEError, ValueError):
    """A setting is out of range or two settings do not go together."""


class DataNotFoundError(PyroVAEError, FileNotFoundError):
    """A data set is neither on disk nor downloadable."""


class DataError(PyroVAEError, ValueError):
    """Data that a likelihood cannot score: NaN, or values outside its support."""


class CheckpointError(PyroVAEError):
    """A checkpoint or run folder that cannot be read or does not match."""
