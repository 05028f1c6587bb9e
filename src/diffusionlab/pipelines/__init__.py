"""Generation from a trained denoising network: noise -> images, with guidance and trajectories."""

from diffusionlab.pipelines.class_conditional import generate

__all__ = ["generate"]
