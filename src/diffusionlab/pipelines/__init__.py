"""Generation from a trained denoising network: noise -> images, with guidance and trajectories."""

from diffusionlab.pipelines.class_conditional import (
    PRECISIONS,
    check_conditioning,
    check_precision,
    default_sampler_opts,
    generate,
)

__all__ = ["PRECISIONS", "check_conditioning", "check_precision", "default_sampler_opts", "generate"]
