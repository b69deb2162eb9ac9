"""The presets' optimisers, per-step learning-rate schedules and weight average in torch, each the twin of
jaxmnist.optim's and jaxmnist.engine's (docs/parity.md): torch_ref.train and the benchmarks build them here."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import torch
from torch import nn

from jaxmnist.presets import Config, schedule_points


def build_optimizer(config: Config, params, fused: bool = False) -> torch.optim.Optimizer:
    """The preset's optimiser (SGD; RMSprop for cnn_deep; AdamW for fast). `fused` (CUDA) is a tuning option of
    the benchmarks, dropped where this torch does not offer it."""
    params = list(params)
    kwargs = {"fused": True} if fused else {}
    try:
        if config.optimizer == "sgd":
            return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, **kwargs)
        if config.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=config.lr, eps=config.eps, weight_decay=config.weight_decay, **kwargs)
        return torch.optim.RMSprop(
            params, lr=config.lr, alpha=config.alpha, eps=config.eps, momentum=config.momentum, **kwargs
        )
    except (RuntimeError, TypeError, ValueError):
        if not fused:
            raise
        return build_optimizer(config, params)


def build_schedule(config: Config, optimizer, total_steps: int):
    """A LambdaLR stepped after every optimiser step, with jaxmnist's per-step multipliers (presets.schedule_points);
    None for the constant schedule."""
    if config.schedule == "constant":
        return None
    points = schedule_points(config, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: float(np.interp(step, *points)))


def set_lr(optimizer: torch.optim.Optimizer, schedule, lr: float) -> None:
    """A new base learning rate (a resumed run's --lr): the rate the schedule multiplies from here on, as jaxmnist's
    state.lr is; a plateau rule's reductions so far are replaced by it, as in jaxmnist."""
    factor = schedule.lr_lambdas[0](schedule.last_epoch) if schedule is not None else 1.0
    if schedule is not None:
        schedule.base_lrs = [lr] * len(optimizer.param_groups)
    for group in optimizer.param_groups:
        group["lr"] = lr * factor
        if "initial_lr" in group:
            group["initial_lr"] = lr


class WeightAverage:
    """Config.ema: a copy of the model whose parameters and BatchNorm statistics follow e += (1 - d) (w - e) after
    every step, d warmed up as min(decay, (1 + t) / (10 + t)) at update t (jaxmnist.engine.ema_decay_at's rule);
    evaluation uses the copy. Its state_dict holds the copy's and the update count, for resuming."""

    def __init__(self, model: nn.Module, decay: float):
        self.model, self.decay, self.updates = copy.deepcopy(model), decay, 0
        # The tensors of both models, listed once: the optimiser updates them in place, so they stay the same.
        self._pairs = (self._tensors(self.model), self._tensors(model))

    @staticmethod
    def _tensors(model: nn.Module) -> list[torch.Tensor]:
        return [t for t in itertools.chain(model.parameters(), model.buffers()) if t.dtype.is_floating_point]

    @torch.no_grad()
    def update(self) -> None:
        """One step of the average, from the model it was made from."""
        t = self.updates
        torch._foreach_lerp_(*self._pairs, 1 - min(self.decay, (1 + t) / (10 + t)))
        self.updates += 1

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])
