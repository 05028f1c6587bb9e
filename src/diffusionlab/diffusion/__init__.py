"""Noise schedules, the closed-form forward process and training losses (plain PyTorch)."""

from diffusionlab.diffusion.gaussian import GaussianDiffusion
from diffusionlab.diffusion.schedule import PREDICTION_TYPES, SCHEDULE_NAMES, NoiseSchedule, canonical_prediction

__all__ = ["GaussianDiffusion", "NoiseSchedule", "PREDICTION_TYPES", "SCHEDULE_NAMES", "canonical_prediction"]
