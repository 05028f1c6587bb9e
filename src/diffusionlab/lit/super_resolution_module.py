"""Super-resolution diffusion (SR3-style): :class:`DiffusionModule` whose network also sees the low-res image.

Only the conditioning hook differs from the parent: every training / validation batch ``x`` is downscaled to
``low_res_size`` (antialiased bicubic, 8-bit, :func:`~diffusionlab.diffusion.degradation.downscale`), upsampled
back by bicubic and handed to the network as ``cond``. Training, EMA, validation, checkpoints and resume are
the parent's code. The sample grid of a run shows validation images as rows low-res | bicubic | ours | truth.
"""

from __future__ import annotations

import torch
from PIL.Image import Image
from torch import Tensor, nn

from diffusionlab.diffusion.degradation import downscale, sr_condition
from diffusionlab.lit.diffusion_module import DiffusionModule
from diffusionlab.pipelines.super_resolution import comparison_grid, upscale


class SuperResolutionModule(DiffusionModule):
    """A :class:`DiffusionModule` that learns ``p(x | upsample(downscale(x)))``.

    Args:
        net: an image-conditioned network, ``net(x_t, t, y, cond)`` with ``net.cond_channels`` equal to its
            ``in_channels`` (e.g. ``UNet(in_channels=C, cond_channels=C)``).
        low_res_size: side of the low-resolution input (e.g. 7 for 7 -> 28 on MNIST, 8 for 8 -> 32 on CIFAR-10).
        The other arguments are :class:`DiffusionModule`'s.
    """

    def __init__(self, net: nn.Module, diffusion, optimizer, scheduler=None, low_res_size: int = 7, **kwargs):
        cond_channels, channels = getattr(net, "cond_channels", None), getattr(net, "in_channels", None)
        if cond_channels != channels:
            raise ValueError(
                f"super-resolution needs a network conditioned on the {channels}-channel low-res image: "
                f"set model.cond_channels={channels} (got cond_channels={cond_channels})"
            )
        size = getattr(net, "image_size", None)
        if not isinstance(low_res_size, int) or size is None or not 1 <= low_res_size < size:
            raise ValueError(
                f"low_res_size must be an integer in [1, {size}) (the network's image_size), got {low_res_size!r}"
            )
        super().__init__(net, diffusion, optimizer, scheduler, **kwargs)
        self.save_hyperparameters(logger=False, ignore=["net", "diffusion", "optimizer", "scheduler"])
        self.low_res_size = low_res_size

    def condition(self, x: Tensor) -> Tensor:
        """``x [B, C, H, W]`` in [-1, 1] -> its bicubic-upsampled low-res version ``[B, C, H, W]`` (float32
        outside autocast, so the degradation is the same in every training precision)."""
        with torch.autocast(x.device.type, enabled=False):
            cond = sr_condition(x.float(), self.low_res_size)
        return cond.contiguous(memory_format=torch.channels_last) if self.channels_last else cond

    @torch.no_grad()
    def upscale(self, low_res: Tensor, use_ema: bool = True, **kwargs) -> Tensor:
        """``low_res [B, C, h, h]`` in [-1, 1] -> ``[B, C, H, H]`` in [-1, 1] from the EMA (default) or raw
        weights, in the training precision and memory format unless ``kwargs`` say otherwise (:func:`upscale`)."""
        kwargs.setdefault("precision", self.sampling_precision())
        kwargs.setdefault("channels_last", self.channels_last)
        return upscale(self.ema.shadow if use_ema else self.net, self.diffusion, low_res.to(self.device), **kwargs)

    @torch.no_grad()
    def comparison_grid(self, n: int, **kwargs) -> Image:
        """The first ``n`` validation images as rows low-res | bicubic | ours | ground truth (a PIL image)."""
        val = self.trainer.datamodule.val_set
        truth = torch.stack([val[i][0] for i in range(min(n, len(val)))]).to(self.device)
        low = downscale(truth, self.low_res_size)
        return comparison_grid(low, self.upscale(low, **kwargs), truth)
