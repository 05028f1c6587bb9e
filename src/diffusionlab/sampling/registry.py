"""Build a sampler by name: ``get_sampler(name, schedule, num_steps, prediction="eps", **opts)``."""

from __future__ import annotations

import inspect

from diffusionlab.diffusion.schedule import NoiseSchedule
from diffusionlab.sampling.base import Sampler
from diffusionlab.sampling.ddim import DDIMSampler
from diffusionlab.sampling.ddpm import DDPMSampler
from diffusionlab.sampling.dpm_solver import DPMSolverPP2MSampler
from diffusionlab.sampling.euler import EulerSampler, HeunSampler

SAMPLERS: dict[str, type[Sampler]] = {
    "ddpm": DDPMSampler,
    "ddim": DDIMSampler,
    "dpmpp_2m": DPMSolverPP2MSampler,
    "euler": EulerSampler,
    "heun": HeunSampler,
}
SAMPLER_NAMES = tuple(SAMPLERS)


def sampler_options(name: str) -> tuple[str, ...]:
    """The keyword options sampler ``name`` accepts (its own plus the common ones of :class:`Sampler`)."""
    names: list[str] = []
    for cls in (SAMPLERS[name], Sampler):
        for p in inspect.signature(cls.__init__).parameters.values():
            if p.kind is p.KEYWORD_ONLY and p.name not in names:
                names.append(p.name)
    return tuple(names)


def get_sampler(name: str, schedule: NoiseSchedule, num_steps: int, prediction: str = "eps", **opts) -> Sampler:
    """A sampler for ``schedule`` taking ``num_steps`` steps, for a model that predicts ``prediction``.

    Raises ``ValueError`` for an unknown name or bad values and ``TypeError`` for an option the sampler
    does not take; both messages list the valid choices.
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid choices: {', '.join(SAMPLER_NAMES)}")
    valid = sampler_options(name)
    unknown = sorted(set(opts) - set(valid))
    if unknown:
        raise TypeError(f"sampler {name!r} takes no option(s) {', '.join(unknown)}; valid options: {', '.join(valid)}")
    return SAMPLERS[name](schedule, num_steps, prediction, **opts)
