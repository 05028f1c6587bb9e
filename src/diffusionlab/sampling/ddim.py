"""DDIM (Song et al. 2021): deterministic (eta = 0) to ancestral (eta = 1) sampling on a subsequence."""

from __future__ import annotations

import math

from diffusionlab.sampling.base import Sampler
from diffusionlab.sampling.ddpm import posterior_variance


class DDIMSampler(Sampler):
    """DDIM eq. 12 from visited timestep ``t`` to the next visited one ``s``:

    ``x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps_hat + sigma z``,
    ``sigma = eta sqrt((1 - abar_s) / (1 - abar_t) (1 - abar_t / abar_s))`` (eq. 16).

    After the last step ``abar_s = 1`` (``final_alpha_one=True``, diffusers' ``set_alpha_to_one``) or
    ``abar_0`` (``False``, Stable Diffusion). ``eps_hat`` comes from the raw model output even when x0 is
    clipped. Note: diffusers' DDIMScheduler steps to ``t - T // N``; that equals the next visited timestep
    for ``leading`` spacing and for ``trailing`` when ``N`` divides ``T``, and we always step to the next
    visited timestep (as DDPMScheduler and DPMSolverMultistepScheduler do).
    """

    name = "ddim"

    def __init__(self, schedule, num_steps, prediction="eps", *, eta: float = 0.0, final_alpha_one=True, **kw):
        if not eta >= 0:
            raise ValueError(f"eta must be >= 0, got {eta!r}")
        self.eta = float(eta)
        self.final_alpha_one = bool(final_alpha_one)
        super().__init__(schedule, num_steps, prediction, **kw)

    def _grid(self):
        t, sigmas = super()._grid()
        sigmas[-1] = self._final_sigma("zero" if self.final_alpha_one else "sigma_min")
        return t, sigmas

    def step(self, model_fn, x, i, state, generator):
        abar_t, abar_s = self.abar(i), self.abar(i + 1)
        x0, eps = self.denoise(model_fn, x, float(self.sigmas[i]), self.timesteps[i])
        std = self.eta * math.sqrt(posterior_variance(abar_t, abar_s))
        x_next = math.sqrt(abar_s) * x0 + math.sqrt(1 - abar_s - std**2) * eps
        if self.eta > 0:
            x_next = x_next + std * self.randn_like(x, generator)
        return x_next, x0
