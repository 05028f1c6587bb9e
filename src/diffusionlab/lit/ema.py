"""Exponential moving average of a network's weights (the weights used for sampling and evaluation)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """Holds ``shadow``, a frozen copy of ``net`` updated as ``shadow <- d * shadow + (1 - d) * net``.

    With ``warmup``, ``d_step = min(decay, (1 + step) / (10 + step))`` so early averages are not dominated
    by the random initialisation. Buffers (BatchNorm statistics) are copied, not averaged. Being a module,
    the shadow weights travel in the LightningModule's checkpoint and resume exactly.
    """

    def __init__(self, net: nn.Module, decay: float = 0.9999, warmup: bool = True, start_step: int = 0):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.decay, self.warmup, self.start_step = decay, warmup, start_step
        self.shadow = copy.deepcopy(net).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        if step < self.start_step:
            return 0.0
        if not self.warmup:
            return self.decay
        k = step - self.start_step
        return min(self.decay, (1 + k) / (10 + k))

    @torch.no_grad()
    def update(self, net: nn.Module, step: int) -> None:
        d = self.decay_at(step)
        ema_p = [p for p in self.shadow.parameters()]
        net_p = [p.detach() for p in net.parameters()]
        if d == 0.0:
            torch._foreach_copy_(ema_p, net_p)
        else:
            torch._foreach_lerp_(ema_p, net_p, 1.0 - d)
        for b_ema, b in zip(self.shadow.buffers(), net.buffers()):
            b_ema.copy_(b)

    def forward(self, *args, **kwargs):
        return self.shadow(*args, **kwargs)
