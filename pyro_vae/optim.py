"""One Adam over all parameters, as a Pyro optimizer.

Pyro's ``pyro.optim.Adam`` builds one ``torch.optim.Adam`` per parameter tensor and steps each
in turn: ten Python-level optimizer steps per SVI step for a one-hidden-layer VAE. On a small
network that is a measurable share of the step (see ``benchmarks/speed.py``). :class:`JointAdam`
does the same arithmetic with a single multi-tensor ``torch.optim.Adam``; Adam's update is
elementwise, so the result is bit for bit the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pyro
import torch
from pyro.optim import PyroOptim
from pyro.params.param_store import normalize_param_name

__all__ = ["JointAdam"]


class JointAdam(PyroOptim):
    """Adam over every parameter SVI hands it, in one ``torch.optim.Adam``.

    :param learning_rate: a function of the parameter's name (as in ``nn.Module``, e.g.
        ``"encoder.loc.weight"``) that gives its learning rate.
    :param clip_norm: if given, each parameter's gradient is clipped to this norm before the
        step, as Pyro's ``clip_args={"clip_norm": ...}`` does.
    """

    def __init__(
        self, learning_rate: Callable[[str], float], clip_norm: float | None = None
    ) -> None:
        # PyroOptim's own machinery (one optimizer per tensor) is not used.
        self.learning_rate = learning_rate
        self.clip_norm = clip_norm
        self.optim: torch.optim.Adam | None = None
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
            lr = self.learning_rate(normalize_param_name(name))
            if self.optim is None:
                self.optim = torch.optim.Adam([{"params": [p], "lr": lr}], foreach=True)
            else:
                group = next((g for g in self.optim.param_groups if g["lr"] == lr), None)
                if group is None:
                    self.optim.add_param_group({"params": [p], "lr": lr})
                else:
                    group["params"].append(p)
            state = self._pending_state.pop(name, None)
            if state is not None:
                self.optim.state[p] = {k: v.to(p.device) for k, v in state.items()}

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
                p.grad = None  # not in this step's trace: Adam must leave it alone
        if self.clip_norm is not None:
            for p in params:
                torch.nn.utils.clip_grad_norm_(p, self.clip_norm)
        self.optim.step()

    def get_state(self) -> dict:
        """Adam's moments and step count for each parameter, by param-store name."""
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
