"""Samplers (DDPM, DDIM, DPM-Solver++(2M), Euler, Heun), timestep spacing and classifier-free guidance.

``get_sampler(name, schedule, num_steps, prediction="eps", **opts)`` returns a :class:`Sampler` with
``timesteps``, ``init_noise_sigma``, ``prepare_noise``, ``noised_start`` and ``sample``; each matches the
diffusers scheduler of the same algorithm and config step for step (see tests/test_samplers.py).
"""

from diffusionlab.sampling.base import Sampler
from diffusionlab.sampling.ddim import DDIMSampler
from diffusionlab.sampling.ddpm import DDPMSampler
from diffusionlab.sampling.dpm_solver import DPMSolverPP2MSampler
from diffusionlab.sampling.euler import EulerSampler, HeunSampler
from diffusionlab.sampling.guidance import classifier_free_guidance, seed_guidance
from diffusionlab.sampling.registry import SAMPLER_NAMES, get_sampler, sampler_options
from diffusionlab.sampling.spacing import SPACINGS

__all__ = [
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverPP2MSampler",
    "EulerSampler",
    "HeunSampler",
    "SAMPLER_NAMES",
    "SPACINGS",
    "Sampler",
    "classifier_free_guidance",
    "get_sampler",
    "sampler_options",
    "seed_guidance",
]
