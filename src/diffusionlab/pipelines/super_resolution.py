"""Super-resolution with an image-conditioned denoising network (SR3-style): low-resolution images -> high.

The network (e.g. ``UNet(cond_channels=C)``) was trained on ``cat([x_t, upsample(downscale(x))])``; here the
low-resolution input is upsampled the same way (:func:`~diffusionlab.diffusion.degradation.upsample`) and passed
as ``cond`` at every sampler step, through the same :func:`generate` as unconditional and class-conditional
sampling (any sampler, bf16 autocast, channels-last).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL.Image import Image
from torch import Tensor, nn

from diffusionlab.diffusion.degradation import upsample
from diffusionlab.diffusion.gaussian import GaussianDiffusion
from diffusionlab.pipelines.class_conditional import default_sampler_opts, generate
from diffusionlab.utils.images import labelled_grid

ROWS = ("low-res", "bicubic", "ours", "truth")


def upscale(
    net: nn.Module,
    diffusion: GaussianDiffusion,
    low_res: Tensor,
    sampler: str = "ddim",
    steps: int = 50,
    seed: int = 0,
    sampler_opts: dict | None = None,
    **generate_kw,
) -> Tensor:
    """Upscale ``low_res [B, C, h, h]`` in [-1, 1] to ``[B, C, H, H]`` in [-1, 1], ``H = net.image_size``.

    ``sampler_opts`` go on top of the pixel-space defaults (x0 clamped to [-1, 1]); ``generate_kw`` are
    :func:`generate`'s (``precision``, ``channels_last``, ``device``, ``progress``). The noise is drawn from
    ``seed`` on the CPU, so the output depends only on the inputs and the seed.
    """
    cond_channels = getattr(net, "cond_channels", None)
    if cond_channels is None:
        raise ValueError("this network takes no conditioning image: upscale() needs a super-resolution model")
    if low_res.ndim != 4 or low_res.shape[1] != cond_channels:
        raise ValueError(f"low_res must be [B, {cond_channels}, h, w] images in [-1, 1], got {list(low_res.shape)}")
    size = net.image_size
    if low_res.shape[-2] != low_res.shape[-1] or low_res.shape[-1] >= size:
        raise ValueError(f"low_res must be square and smaller than the model's {size}x{size}: {list(low_res.shape)}")
    cond = upsample(low_res, size)
    images, _ = generate(
        net,
        diffusion,
        (net.in_channels, size, size),
        n=len(low_res),
        sampler=sampler,
        steps=steps,
        seed=seed,
        sampler_opts=default_sampler_opts(latent=False, given=sampler_opts),
        cond=cond,
        **generate_kw,
    )
    return images


def comparison_grid(low_res: Tensor, upscaled: Tensor, truth: Tensor | None = None) -> Image:
    """A labelled grid with one column per image and the rows low-res (pixels enlarged) | bicubic | ours
    | ground truth (the last row only when ``truth`` is given); all inputs ``[B, C, *, *]`` in [-1, 1]."""
    size = upscaled.shape[-1]
    rows = [F.interpolate(low_res.float(), size=(size, size), mode="nearest"), upsample(low_res, size), upscaled]
    if truth is not None:
        rows.append(truth)
    images = torch.cat([r.detach().float().cpu() for r in rows])
    return labelled_grid(images, list(ROWS[: len(rows)]), nrow=len(low_res))
