"""The loop shared by every sampler: timestep / noise-level grid, model calls, progress bar, callback.

A sampler visits ``N`` model timesteps ``timesteps[0] > ... > timesteps[N-1]`` with noise levels
``sigmas[0..N-1]`` and ends at ``sigmas[N]`` (0, or the smallest training sigma). Noise levels are
variance-exploding sigmas ``sigma = sqrt((1 - abar) / abar)``; ``abar = 1 / (1 + sigma^2)``.

The loop state ``x`` is either in VP space, ``x = sqrt(abar) x0 + sqrt(1 - abar) eps`` (DDPM, DDIM,
DPM-Solver), or in VE space, ``x = x0 + sigma eps`` (Euler, Heun: ``ve_state = True``). The model always
sees VP space: VE states are scaled by ``1 / sqrt(1 + sigma^2)`` before the call.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from diffusionlab.diffusion.schedule import NoiseSchedule, canonical_prediction, split_prediction
from diffusionlab.sampling.spacing import sigmas_at, spaced_timesteps

ModelFn = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[int, Tensor, Tensor, Tensor], Tensor | None]
FINAL_SIGMAS = ("zero", "sigma_min")


class Sampler:
    """Base class: subclasses implement :meth:`step` (and may override :meth:`_grid`).

    Args:
        schedule: the training noise schedule.
        num_steps: number of sampling steps ``N`` in ``[1, schedule.num_timesteps]``.
        prediction: what ``model_fn`` returns: ``eps``, ``x0`` or ``v`` (diffusers' names accepted).
        timestep_spacing: ``leading`` | ``trailing`` | ``linspace`` (see :mod:`.spacing`).
        steps_offset: added to ``leading`` timesteps (Stable Diffusion uses 1).
        clip_x0: clamp every predicted x0 to ``[-clip_x0, clip_x0]`` (pixel models: 1.0); ``None`` = off.
    """

    name = "sampler"
    ve_state = False

    def __init__(
        self,
        schedule: NoiseSchedule,
        num_steps: int,
        prediction: str = "eps",
        *,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        clip_x0: float | None = None,
    ):
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        num_train = schedule.num_timesteps
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= num_train:
            raise ValueError(
                f"num_steps must be an integer in [1, {num_train}] (the schedule's num_timesteps), got {num_steps!r}"
            )
        if clip_x0 is not None and not clip_x0 > 0:
            raise ValueError(f"clip_x0 must be a positive number or None, got {clip_x0!r}")
        self.schedule = schedule
        self.num_steps = num_steps
        self.prediction = canonical_prediction(prediction)
        self.timestep_spacing = timestep_spacing
        self.steps_offset = steps_offset
        self.clip_x0 = clip_x0
        timesteps, self.sigmas = self._grid()
        integral = bool((timesteps == timesteps.round()).all())
        self.timesteps = timesteps.long() if integral else timesteps

    # ------------------------------------------------------------------ grid
    def _spaced(self, **kw) -> Tensor:
        return spaced_timesteps(
            self.schedule.num_timesteps, self.num_steps, self.timestep_spacing, self.steps_offset, **kw
        )

    def _final_sigma(self, kind: str) -> float:
        """Noise level after the last step: ``zero`` (clean) or ``sigma_min`` (the t=0 training level)."""
        if kind not in FINAL_SIGMAS:
            raise ValueError(f"unknown final_sigmas_type {kind!r}; valid choices: {', '.join(FINAL_SIGMAS)}")
        return 0.0 if kind == "zero" else float(self.schedule.sigmas[0])

    def _with_final(self, sigmas: Tensor, final: float) -> Tensor:
        return torch.cat([sigmas, torch.tensor([final], dtype=torch.float64)])

    def _grid(self) -> tuple[Tensor, Tensor]:
        """``(timesteps [N], sigmas [N+1])`` float64; default: spaced table timesteps, final sigma 0."""
        t = self._spaced()
        return t, self._with_final(sigmas_at(self.schedule.sigmas, t), 0.0)

    def abar(self, i: int) -> float:
        """``abar`` at grid point ``i`` (``i = N`` is the end of sampling)."""
        return 1.0 / (1.0 + float(self.sigmas[i]) ** 2)

    # ------------------------------------------------------------------ start
    @property
    def init_noise_sigma(self) -> float:
        """Scale of the initial noise: ``x_T = noise * init_noise_sigma``."""
        return 1.0

    def prepare_noise(self, noise: Tensor) -> Tensor:
        """Initial state ``x_T`` from standard normal ``noise`` (any shape ``[B, ...]``)."""
        return noise * self.init_noise_sigma

    def noised_start(self, x0: Tensor, noise: Tensor, start_index: int) -> Tensor:
        """The state at grid point ``start_index`` in ``[0, N]`` for clean data ``x0`` (img2img, inpainting):
        ``x0 + sigma noise`` in VE space, ``sqrt(abar) x0 + sqrt(1 - abar) noise`` in VP space."""
        self._check_index(start_index)
        sigma = float(self.sigmas[start_index])
        x = x0 + sigma * noise
        return x if self.ve_state else x / math.sqrt(1 + sigma**2)

    def _check_index(self, i: int) -> None:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i <= self.num_steps:
            raise ValueError(f"start_index must be an integer in [0, {self.num_steps}], got {i!r}")

    # ------------------------------------------------------------------ model
    def denoise(self, model_fn: ModelFn, x: Tensor, sigma: float, t: Tensor) -> tuple[Tensor, Tensor]:
        """Call ``model_fn`` at state ``x`` (noise level ``sigma``, model timestep ``t``); return VP-space
        ``(x0, eps)`` predictions, x0 clamped to ``[-clip_x0, clip_x0]`` when set (eps is not recomputed)."""
        alpha = 1.0 / math.sqrt(1.0 + sigma**2)
        x_vp = x * alpha if self.ve_state else x
        t_dtype = torch.long if t.dtype == torch.long else torch.float32
        t_batch = torch.full((x.shape[0],), t.item(), dtype=t_dtype, device=x.device)
        out = model_fn(x_vp, t_batch)
        x0, eps = split_prediction(x_vp, alpha, sigma * alpha, out, self.prediction)
        if self.clip_x0 is not None:
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
        return x0, eps

    @staticmethod
    def randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
        """Standard normal noise like ``x``, drawn on the generator's device (the same draws as diffusers)."""
        device = generator.device if generator is not None else x.device
        return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)

    # ------------------------------------------------------------------ loop
    def step(
        self, model_fn: ModelFn, x: Tensor, i: int, state: dict, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        """One step from grid point ``i`` to ``i + 1``: returns ``(x_next, x0_pred)``. ``state`` persists
        across the steps of one :meth:`sample` call (multistep history)."""
        raise NotImplementedError

    def sample(
        self,
        model_fn: ModelFn,
        x: Tensor,
        generator: torch.Generator | None = None,
        callback: Callback | None = None,
        start_index: int = 0,
        progress: bool = True,
    ) -> Tensor:
        """Run steps ``start_index .. N-1`` from state ``x`` (``prepare_noise`` / ``noised_start`` output).

        ``model_fn(x_t [B, ...], t [B]) -> prediction`` sees VP-space inputs; ``t`` is long, or float32
        when the grid has fractional timesteps. ``callback(i, t, x, x0_pred)`` runs after each step; a
        returned tensor replaces ``x``. No autograd graph is kept. Returns the final state (the sample).
        """
        self._check_index(start_index)
        state: dict = {}
        steps = range(start_index, self.num_steps)
        with torch.no_grad():
            for i in tqdm(steps, desc=self.name, leave=False) if progress else steps:
                x, x0 = self.step(model_fn, x, i, state, generator)
                if callback is not None:
                    replaced = callback(i, self.timesteps[i], x, x0)
                    x = x if replaced is None else replaced
        return x

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(steps={self.num_steps}, prediction={self.prediction!r}, "
            f"spacing={self.timestep_spacing!r}, schedule={self.schedule.name!r})"
        )
