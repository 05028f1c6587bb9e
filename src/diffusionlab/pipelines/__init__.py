"""Generation from a trained denoising network: noise -> images, with guidance and trajectories."""

from diffusionlab.pipelines.class_conditional import default_sampler_opts, generate

__all__ = ["default_sampler_opts", "generate"]
