"""One optimizer over all parameters, as a Pyro optimizer: Adam, or Adagrad (the optimizer of
Kingma & Welling 2013), with an optional weight decay.

Pyro's ``pyro.optim.Adam`` builds one ``torch.optim.Adam`` per parameter tensor and steps each
in turn: ten Python-level optimizer steps per SVI step for a one-hidden-layer VAE. On a small
network that is a measurable share of the step (see ``benchmarks/speed.py``).
:class:`JointOptimizer` steps all parameters with a single ``torch.optim.Adam``: by default
PyTorch's fused kernel (one pass over each tensor, the fastest update on the CPU too), which
agrees with Pyro's Adam to float32 rounding; with ``fused=False`` the multi-tensor update,
which is bit for bit Pyro's (Adam's update is elementwise). Adagrad runs as one multi-tensor
``torch.optim.Adagrad``. After the step it sets the gradients to ``None``, as ``zero_grad()``
does, so that ``SVI`` has no zeros to write and the next backward pass assigns gradients
instead of adding them to zeros.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import pyro
import torch
from pyro.optim import PyroOptim
from pyro.params.param_store import normalize_param_name

from pyro_vae.checks import is_real, require_choice, require_positive
from pyro_vae.errors import ConfigError

__all__ = ["LR_SCHEDULES", "OPTIMIZERS", "JointOptimizer", "check_optimizer_settings", "lr_factor"]

LR_SCHEDULES = ("constant", "iwae")
OPTIMIZERS = ("adam", "adagrad")


def check_optimizer_settings(
    learning_rate: float,
    baseline_learning_rate: float = 1e-2,
    adam_eps: float = 1e-8,
    clip_norm: float | None = None,
    lr_schedule: str = "constant",
    optimizer: str = "adam",
    weight_decay: float = 0.0,
) -> None:
    """Raise :class:`pyro_vae.ConfigError` for a setting of :class:`JointOptimizer` out of range."""
    for name, value in (
        ("learning_rate", learning_rate),
        ("baseline_learning_rate", baseline_learning_rate),
        ("adam_eps", adam_eps),
    ):
        require_positive(value, name)
    require_positive(clip_norm, "clip_norm", optional=True)
    require_choice(lr_schedule, "lr_schedule", LR_SCHEDULES)
    require_choice(optimizer, "optimizer", OPTIMIZERS)
    if not is_real(weight_decay) or not math.isfinite(weight_decay) or weight_decay < 0:
        raise ConfigError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")


def lr_factor(schedule: str, epoch: int) -> float:
    """The learning rate of epoch ``epoch`` (from 0) as a fraction of the initial one.

    ``constant``
        Always 1.
    ``iwae``
        Burda et al. (2015): stage ``i = 0..7`` lasts ``3^i`` passes over the data at
        ``10^(-i/7)`` times the initial rate, 3280 passes in all; later epochs stay at stage 7.
    """
    if schedule == "constant":
        return 1.0
    if schedule == "iwae":
        stage, end = 0, 1
        while epoch >= end and stage < 7:
            stage += 1
            end += 3**stage
        return 10.0 ** (-stage / 7)
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose one of {LR_SCHEDULES}")


class JointOptimizer(PyroOptim):
    """Adam (or Adagrad) over every parameter SVI hands it, in one torch optimizer.

    :param learning_rate: a function of the parameter's name (as in ``nn.Module``, e.g.
        ``"encoder.loc.weight"``) that gives its learning rate.
    :param clip_norm: if given, each parameter's gradient is clipped to this norm before the
        step, as Pyro's ``clip_args={"clip_norm": ...}`` does.
    :param eps: Adam's ``epsilon`` (Burda et al. 2015 use ``1e-4``); betas are ``(0.9, 0.999)``.
    :param algorithm: ``"adam"`` or ``"adagrad"`` (``torch.optim.Adagrad``, its defaults).
    :param weight_decay: added times each parameter to its gradient, as torch's optimizers
        do: with the loss summed over a batch of ``M`` of ``N`` images, ``M / N`` is the
        MAP estimate under a ``N(0, I)`` prior on the parameters (Kingma & Welling 2013).
    :param fused: use PyTorch's fused Adam where this PyTorch has it for the parameters'
        device, else the multi-tensor one.
    """

    def __init__(
        self,
        learning_rate: Callable[[str], float],
        clip_norm: float | None = None,
        eps: float = 1e-8,
        fused: bool = True,
        algorithm: str = "adam",
        weight_decay: float = 0.0,
    ) -> None:
        # PyroOptim's own machinery (one optimizer per tensor) is not used.
        self.learning_rate = learning_rate
        self.clip_norm = clip_norm
        self.eps = eps
        self.fused = fused
        self.algorithm = algorithm
        self.weight_decay = float(weight_decay)
        self.lr_factor = 1.0
        self.optim: torch.optim.Optimizer | None = None
        self.names: dict[torch.Tensor, str] = {}
        self.by_name: dict[str, torch.Tensor] = {}
        self._pending_state: dict[str, dict] = {}

    def _register(self, params: list[torch.Tensor]) -> None:
        store = pyro.get_param_store()
        for p in params:
            name = store.param_name(p)
            if name in self.by_name:
                # The param store replaced this parameter's tensor (Pyro's decaying-average
                # baseline does so every step): drop the old one, as a fresh per-tensor
                # optimizer would, so the optimizer does not grow step after step.
                self._forget(self.by_name[name])
            self.names[p], self.by_name[name] = name, p
            base_lr = self.learning_rate(normalize_param_name(name))
            group = {"params": [p], "base_lr": base_lr, "lr": base_lr * self.lr_factor}
            if self.optim is None:
                self.optim = self._make(group)
            else:
                same = (g for g in self.optim.param_groups if g["base_lr"] == base_lr)
                existing = next(same, None)
                if existing is None:
                    self.optim.add_param_group(group)
                else:
                    existing["params"].append(p)
            state = self._pending_state.pop(name, None)
            if state is not None:
                self.optim.state[p] = {k: v.to(p.device) for k, v in state.items()}

    def _make(self, group: dict) -> torch.optim.Optimizer:
        decay = self.weight_decay
        if self.algorithm == "adagrad":
            return torch.optim.Adagrad([group], weight_decay=decay, foreach=True)
        if self.fused:
            try:
                return torch.optim.Adam([group], eps=self.eps, weight_decay=decay, fused=True)
            except (RuntimeError, TypeError):  # no fused Adam for this device or this torch
                pass
        return torch.optim.Adam([group], eps=self.eps, weight_decay=decay, foreach=True)

    def set_lr_factor(self, factor: float) -> None:
        """Scale every learning rate to ``factor`` times its base value (a schedule's step)."""
        self.lr_factor = float(factor)
        if self.optim is not None:
            for group in self.optim.param_groups:
                group["lr"] = group["base_lr"] * self.lr_factor

    def _forget(self, p: torch.Tensor) -> None:
        del self.names[p]
        self.optim.state.pop(p, None)
        for group in self.optim.param_groups:
            group["params"] = [q for q in group["params"] if q is not p]

    def __call__(self, params: Iterable[torch.Tensor], *args, **kwargs) -> None:
        params = [p for p in params if p.grad is not None]
        new = [p for p in params if p not in self.names]
        if new:
            self._register(new)
        stepped = set(params)
        for p in self.names:
            if p not in stepped:
                p.grad = None  # not in this step's trace: the optimizer must leave it alone
        if self.clip_norm is not None:
            for p in params:
                torch.nn.utils.clip_grad_norm_(p, self.clip_norm)
        self.optim.step()
        for p in params:
            p.grad = None

    def get_state(self) -> dict:
        """The optimizer's state (Adam's moments, Adagrad's sums; the step count) for each
        parameter, by param-store name."""
        if self.optim is None:
            return dict(self._pending_state)
        state = {self.names[p]: dict(s) for p, s in self.optim.state.items()}
        return {**self._pending_state, **state}

    def set_state(self, state_dict: dict) -> None:
        """Restore :meth:`get_state`'s output; applied as each parameter is first seen."""
        self._pending_state.update(state_dict)
        for p, name in self.names.items():
            if name in self._pending_state:
                self.optim.state[p] = self._pending_state.pop(name)
