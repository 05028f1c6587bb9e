"""diffusionlab: diffusion models on plain PyTorch, trained with Lightning and configured with Hydra."""

__version__ = "0.1.0"
