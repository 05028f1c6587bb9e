"""Which training timesteps a sampler visits, and the noise levels there.

Noise levels are variance-exploding sigmas ``sigma_t = sqrt((1 - abar_t) / abar_t)`` (float64); a VP-space
sample ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` is ``(x0 + sigma_t eps) / sqrt(1 + sigma_t^2)``.

Timestep spacings (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Table 2),
for ``T`` training steps and ``N`` sampling steps, listed in the (descending) order they are visited:

- ``leading``:  ``k * (T // N) + steps_offset`` for ``k = N-1 .. 0`` (DDIM's and Stable Diffusion's).
- ``trailing``: ``round(T - k * T / N) - 1`` for ``k = 0 .. N-1`` (always starts at ``T - 1``).
- ``linspace``: ``N`` evenly spaced points from ``T - 1`` down to ``0`` (rounded unless ``round_linspace``
  is False).

DPM-Solver builds a grid of ``N + 1`` points for ``leading``/``linspace`` and drops the last one
(``extra_point=True``); its final step then goes to the final noise level instead of to ``t = 0``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

SPACINGS = ("leading", "trailing", "linspace")


def spaced_timesteps(
    num_train: int,
    num_steps: int,
    spacing: str = "leading",
    steps_offset: int = 0,
    *,
    extra_point: bool = False,
    round_linspace: bool = True,
) -> Tensor:
    """Descending timesteps ``[num_steps]`` (float64, integer-valued unless linspace is left unrounded).

    Raises ``ValueError`` for an unknown spacing or when the grid leaves ``[0, num_train - 1]`` or repeats.
    """
    if spacing not in SPACINGS:
        raise ValueError(f"unknown timestep_spacing {spacing!r}; valid choices: {', '.join(SPACINGS)}")
    if not isinstance(steps_offset, int) or steps_offset < 0:
        raise ValueError(f"steps_offset must be a non-negative integer, got {steps_offset!r}")
    points = num_steps + 1 if extra_point else num_steps
    if spacing == "linspace":
        ts = np.linspace(0, num_train - 1, points)
        ts = ts.round() if round_linspace else ts
        ts = ts[::-1][:num_steps]
    elif spacing == "leading":
        ts = (np.arange(points) * (num_train // points))[::-1][:num_steps] + steps_offset
    else:
        ts = np.round(np.arange(num_train, 0, -num_train / num_steps)) - 1
    ts = torch.from_numpy(np.ascontiguousarray(ts, dtype=np.float64))
    if ts.max() > num_train - 1 or ts.min() < 0:
        raise ValueError(
            f"timestep_spacing={spacing!r} with steps_offset={steps_offset} and num_steps={num_steps} leaves "
            f"the training range [0, {num_train - 1}]; lower steps_offset or num_steps"
        )
    if len(ts) > 1 and not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError(
            f"num_steps={num_steps} is too many for timestep_spacing={spacing!r} with {num_train} training "
            "timesteps: timesteps repeat"
        )
    return ts


def sigmas_at(table: Tensor, timesteps: Tensor) -> Tensor:
    """Noise levels at (possibly fractional) timesteps by linear interpolation of ``table [T]`` (float64)."""
    if len(table) == 1:
        return table.expand(len(timesteps)).clone()
    t = timesteps.to(torch.float64).clamp(0, len(table) - 1)
    lo = t.floor().long().clamp(max=len(table) - 2)
    w = t - lo
    return table[lo] * (1 - w) + table[lo + 1] * w


def timesteps_for_sigmas(table: Tensor, sigmas: Tensor) -> Tensor:
    """Fractional timesteps at which ``table [T]`` reaches ``sigmas``: linear interpolation in log-sigma,
    clamped to ``[0, T - 1]`` (float64)."""
    log_table = table.log()
    log_sigma = sigmas.clamp(min=1e-10).log()
    lo = (torch.searchsorted(log_table, log_sigma, right=True) - 1).clamp(0, len(table) - 2)
    w = ((log_table[lo] - log_sigma) / (log_table[lo] - log_table[lo + 1])).clamp(0, 1)
    return lo.to(torch.float64) + w


def karras_sigmas(sigma_min: float, sigma_max: float, num_steps: int, rho: float = 7.0) -> Tensor:
    """Karras et al. 2022 eq. 5: ``(smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho``, i < N."""
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho
