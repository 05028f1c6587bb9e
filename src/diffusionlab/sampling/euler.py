"""Euler and Heun samplers of the probability-flow ODE in sigma space (Karras et al. 2022, Algorithms 1-2).

The state is ``x = x0 + sigma eps`` and the ODE is ``dx/dsigma = (x - D(x; sigma)) / sigma`` with the denoiser
``D`` = the model's x0 prediction at the VP input ``x / sqrt(1 + sigma^2)``.
"""

from __future__ import annotations

import math

from diffusionlab.sampling.base import Sampler
from diffusionlab.sampling.spacing import karras_sigmas, sigmas_at, timesteps_for_sigmas


class EulerSampler(Sampler):
    """Euler steps ``x_{i+1} = x_i + (sigma_{i+1} - sigma_i) d_i`` with ``d_i = (x_i - x0_i) / sigma_i``
    (Karras Alg. 2 without the Heun correction and without churn; diffusers' EulerDiscreteScheduler).

    Sigmas are the training sigmas interpolated at the spaced (possibly fractional) timesteps; with
    ``karras=True`` they are replaced by Karras et al. eq. 5 (rho = 7) between the first and last of those,
    and the timesteps by the fractional timesteps where the training table reaches them.
    ``init_noise_sigma`` is ``sigma_0`` (``sqrt(sigma_0^2 + 1)`` for ``leading`` spacing, as diffusers).
    """

    name = "euler"
    ve_state = True

    def __init__(self, schedule, num_steps, prediction="eps", *, karras=False, final_sigmas_type="zero", **kw):
        self.karras = bool(karras)
        self.final_sigmas_type = final_sigmas_type
        super().__init__(schedule, num_steps, prediction, **kw)

    def _grid(self):
        table = self.schedule.sigmas
        t = self._spaced(round_linspace=False)
        sigmas = sigmas_at(table, t)
        if self.karras:
            sigmas = karras_sigmas(float(sigmas[-1]), float(sigmas[0]), self.num_steps)
            t = timesteps_for_sigmas(table, sigmas)
        return t, self._with_final(sigmas, self._final_sigma(self.final_sigmas_type))

    @property
    def init_noise_sigma(self) -> float:
        sigma_max = float(self.sigmas.max())
        return math.sqrt(sigma_max**2 + 1) if self.timestep_spacing == "leading" else sigma_max

    def derivative(self, model_fn, x, i):
        """``(d, x0)`` at grid point ``i``: the ODE slope ``(x - x0) / sigma_i`` and the x0 prediction."""
        sigma = float(self.sigmas[i])
        x0, _ = self.denoise(model_fn, x, sigma, self.timesteps[i])
        return (x - x0) / sigma, x0

    def step(self, model_fn, x, i, state, generator):
        d, x0 = self.derivative(model_fn, x, i)
        return x + float(self.sigmas[i + 1] - self.sigmas[i]) * d, x0


class HeunSampler(EulerSampler):
    """Heun's second-order method (Karras Alg. 2, no churn): an Euler step to ``sigma_{i+1}``, then
    ``x_{i+1} = x_i + (sigma_{i+1} - sigma_i) (d_i + d'_{i+1}) / 2`` with ``d'`` evaluated at the Euler
    point and ``timesteps[i + 1]``; the last step (to sigma 0) is a plain Euler step: 2N - 1 model calls.
    As diffusers' HeunDiscreteScheduler; the final sigma is always 0.
    """

    name = "heun"

    def __init__(self, schedule, num_steps, prediction="eps", *, karras=False, **kw):
        super().__init__(schedule, num_steps, prediction, karras=karras, final_sigmas_type="zero", **kw)

    def step(self, model_fn, x, i, state, generator):
        d, x0 = self.derivative(model_fn, x, i)
        dt = float(self.sigmas[i + 1] - self.sigmas[i])
        x_euler = x + dt * d
        if self.sigmas[i + 1] == 0:
            return x_euler, x0
        d_next, _ = self.derivative(model_fn, x_euler, i + 1)
        return x + dt * (d + d_next) / 2, x0
