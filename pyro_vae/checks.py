"""Checks of single settings, shared by the modules that own them.

Each setting is validated by the module that uses it (the networks' sizes in
:mod:`pyro_vae.networks`, the learning rates in :mod:`pyro_vae.optim`, ...), whether it comes
from a :class:`pyro_vae.TrainConfig`, a stored run or a direct call such as ``VAE(...)``.
These helpers give every one of those checks the same wording.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from pyro_vae.errors import ConfigError

__all__ = ["is_real", "is_whole", "require_choice", "require_flag", "require_positive",
           "require_whole"]  # fmt: skip


def is_whole(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def require_whole(value: Any, name: str, low: int = 1) -> int:
    """``value`` as an int, if it is a whole number of at least ``low``."""
    if not is_whole(value):
        raise ConfigError(f"{name} must be a whole number, got {_kind(value)}")
    if value < low:
        least = "a positive integer" if low == 1 else f"at least {low}"
        raise ConfigError(f"{name} must be {least}, got {value}")
    return int(value)


def require_positive(value: Any, name: str, optional: bool = False) -> float | None:
    """``value`` as a float, if it is a finite number above 0 (or ``None``, if ``optional``)."""
    if optional and value is None:
        return None
    if not is_real(value):
        kind = "a number or None" if optional else "a number"
        raise ConfigError(f"{name} must be {kind}, got {_kind(value)}")
    if not (value > 0 and math.isfinite(value)):
        label = name.replace("_", " ")
        extra = " (or none)" if optional else ""
        raise ConfigError(f"{label} must be positive and finite{extra}, got {value}")
    return float(value)


def require_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
    return value


def require_flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {_kind(value)}")
    return value
