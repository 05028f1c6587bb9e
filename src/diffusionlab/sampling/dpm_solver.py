"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2): a second-order multistep solver in x0."""

from __future__ import annotations

import math

from diffusionlab.sampling.base import Sampler
from diffusionlab.sampling.spacing import karras_sigmas, sigmas_at, timesteps_for_sigmas


class DPMSolverPP2MSampler(Sampler):
    """With ``lambda = log(alpha / sigma_vp) = -log(sigma)`` and ``h = lambda_next - lambda_i``:

    ``x_next = (sigma_vp_next / sigma_vp_i) x - alpha_next (e^{-h} - 1) D``, where
    ``D = x0_i`` (first order = DDIM) or ``D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}``, ``r = h_{i-1} / h``.

    The first step is first order; so is the last when the final sigma is 0 (``final_sigmas_type="zero"``)
    or ``lower_order_final`` and ``N < 15``. ``timestep_spacing`` builds a grid of ``N + 1`` points for
    ``leading``/``linspace`` (diffusers' DPMSolverMultistepScheduler); ``karras=True`` uses Karras sigmas
    between the smallest and largest training sigma and rounds the matching timesteps.
    """

    name = "dpmpp_2m"

    def __init__(
        self,
        schedule,
        num_steps,
        prediction="eps",
        *,
        karras: bool = False,
        lower_order_final: bool = True,
        final_sigmas_type: str = "zero",
        **kw,
    ):
        self.karras = bool(karras)
        self.lower_order_final = bool(lower_order_final)
        self.final_sigmas_type = final_sigmas_type
        super().__init__(schedule, num_steps, prediction, **kw)

    def _grid(self):
        table = self.schedule.sigmas
        final = self._final_sigma(self.final_sigmas_type)
        if self.karras:
            sigmas = karras_sigmas(float(table[0]), float(table[-1]), self.num_steps)
            t = timesteps_for_sigmas(table, sigmas).round()
        else:
            t = self._spaced(extra_point=True)
            sigmas = sigmas_at(table, t)
        return t, self._with_final(sigmas, final)

    def step(self, model_fn, x, i, state, generator):
        sigma, sigma_next = float(self.sigmas[i]), float(self.sigmas[i + 1])
        x0, _ = self.denoise(model_fn, x, sigma, self.timesteps[i])
        alpha, alpha_next = (1 / math.sqrt(1 + s**2) for s in (sigma, sigma_next))
        exp_neg_h = sigma_next / sigma
        last = i == self.num_steps - 1
        first_order = (
            "x0" not in state or (last and sigma_next == 0) or (last and self.lower_order_final and self.num_steps < 15)
        )
        d = x0
        if not first_order:
            r = math.log(state["sigma"] / sigma) / math.log(sigma / sigma_next)
            d = x0 + (x0 - state["x0"]) / (2 * r)
        state.update(x0=x0, sigma=sigma)
        x_next = (sigma_next * alpha_next / (sigma * alpha)) * x + (alpha_next * (1 - exp_neg_h)) * d
        return x_next, x0
