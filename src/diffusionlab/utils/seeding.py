"""Seeding helpers: one seed gives the same sample on any device and rank count."""

from __future__ import annotations

import torch


def cpu_generator(seed: int) -> torch.Generator:
    """A CPU generator: draw noise on the CPU then move it, so results do not depend on the device."""
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    return g


def randn(shape, generator: torch.Generator, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise drawn on the CPU from ``generator`` then moved to ``device``/``dtype``."""
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)
