"""Denoising networks for the small datasets: ``net(x_t [B, C, H, W], t [B], y [B] or None) -> [B, C, H, W]``.

* :class:`ContextUnet`: the seed paper's network (DeepLearning.AI course), with its shortcut-conv flaw fixed.
* :class:`UNet`: the DDPM (Ho et al. 2020) U-Net; ``configs/model/cifar10_ddpm.yaml`` is the paper's 35.7M
  CIFAR-10 network, ``unet_small.yaml`` / ``unet_mnist.yaml`` are CPU-sized presets.

Both expose ``in_channels`` and ``num_classes`` (``None`` when unconditional); class ``num_classes`` (or
``y=None``) is the null class used for classifier-free guidance.
"""

from diffusionlab.nets.context_unet import ContextUnet
from diffusionlab.nets.diffusers_compat import (
    convert_unet2d_state_dict,
    diffusers_unet2d_config,
    unet_from_diffusers,
    unet_kwargs_from_diffusers,
)
from diffusionlab.nets.unet import UNet


def count_parameters(net) -> int:
    """Number of parameters of ``net`` (trainable or not)."""
    return sum(p.numel() for p in net.parameters())


__all__ = [
    "ContextUnet",
    "UNet",
    "convert_unet2d_state_dict",
    "count_parameters",
    "diffusers_unet2d_config",
    "unet_from_diffusers",
    "unet_kwargs_from_diffusers",
]
