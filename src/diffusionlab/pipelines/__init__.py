"""Generation from a trained denoising network: noise -> images, with guidance and trajectories; super-resolution."""

from diffusionlab.pipelines.class_conditional import (
    PRECISIONS,
    check_conditioning,
    check_precision,
    default_sampler_opts,
    generate,
)
from diffusionlab.pipelines.super_resolution import upscale

__all__ = ["PRECISIONS", "check_conditioning", "check_precision", "default_sampler_opts", "generate", "upscale"]
