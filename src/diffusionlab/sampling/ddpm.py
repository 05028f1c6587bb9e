"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), on any subsequence of the training timesteps."""

from __future__ import annotations

import math

from diffusionlab.sampling.base import Sampler

VARIANCES = ("fixed_small", "fixed_large")


def posterior_variance(abar_t: float, abar_prev: float) -> float:
    """DDPM eq. 7: ``(1 - abar_prev) / (1 - abar_t) * beta`` with ``beta = 1 - abar_t / abar_prev``."""
    return (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)


class DDPMSampler(Sampler):
    """Ancestral sampling from the posterior ``q(x_s | x_t, x0_hat)`` between visited timesteps ``t > s``:

    ``x_s = sqrt(abar_s) beta / (1 - abar_t) x0_hat + sqrt(alpha) (1 - abar_s) / (1 - abar_t) x_t + sigma z``
    with ``alpha = abar_t / abar_s``, ``beta = 1 - alpha`` (DDPM eqs. 6-7; for ``N = T`` this is Algorithm 2).
    ``variance``: ``fixed_small`` ``sigma^2 = (1 - abar_s) / (1 - abar_t) beta`` (clamped at 1e-20) or
    ``fixed_large`` ``sigma^2 = beta``. No noise is added at a step whose timestep is 0; after the last step
    ``abar_s = 1``.
    """

    name = "ddpm"

    def __init__(self, schedule, num_steps, prediction="eps", *, variance: str = "fixed_small", **kw):
        if variance not in VARIANCES:
            raise ValueError(f"unknown variance {variance!r}; valid choices: {', '.join(VARIANCES)}")
        self.variance = variance
        super().__init__(schedule, num_steps, prediction, **kw)

    def step(self, model_fn, x, i, state, generator):
        abar_t, abar_s = self.abar(i), self.abar(i + 1)
        x0, _ = self.denoise(model_fn, x, float(self.sigmas[i]), self.timesteps[i])
        alpha = abar_t / abar_s
        mean = (math.sqrt(abar_s) * (1 - alpha) / (1 - abar_t)) * x0 + (
            math.sqrt(alpha) * (1 - abar_s) / (1 - abar_t)
        ) * x
        if self.timesteps[i] > 0:
            var = 1 - alpha if self.variance == "fixed_large" else max(posterior_variance(abar_t, abar_s), 1e-20)
            mean = mean + math.sqrt(var) * self.randn_like(x, generator)
        return mean, x0
