"""Latent diffusion: :class:`DiffusionModule` on ``scale_factor * z`` of a frozen autoencoder.

Only the data hooks differ from pixel space: :meth:`encode_batch` scales the cached latents (or encodes
image batches when ``encode_images``) and :meth:`decode` maps samples back to images in [-1, 1] for the
sample grids, ``sample()`` and metrics. Training, EMA, validation and sampling are the parent's code.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor, nn

from diffusionlab.lit.diffusion_module import DiffusionModule
from diffusionlab.nets.autoencoder import AUTOENCODER_FILENAME, decode_latents, save_autoencoder
from diffusionlab.nets.vae import AutoencoderKL


class LatentDiffusionModule(DiffusionModule):
    """A :class:`DiffusionModule` whose data space is the latent space of ``autoencoder``.

    Args:
        net: denoising network on latents: ``in_channels`` = the autoencoder's ``z_channels``,
            ``image_size`` = the latent side.
        autoencoder: frozen ``AutoencoderKL``; its ``scale_factor`` (measured when it was trained) scales z.
        encode_images: batches are images ``[B, C, H, W]`` in [-1, 1], encoded here every step (slow; for
            comparisons) instead of unscaled latents from :class:`LatentCacheDataModule`.
        sample_posterior: with ``encode_images``, draw ``z ~ q(z|x)`` (True) or take its mean.
        The other arguments are :class:`DiffusionModule`'s.

    At the start of fit the autoencoder is written beside the run's checkpoints
    (``checkpoints/autoencoder.safetensors``), so the run folder alone is enough to sample.
    """

    latent = True

    def __init__(
        self,
        net: nn.Module,
        diffusion,
        autoencoder: AutoencoderKL,
        optimizer,
        scheduler=None,
        encode_images: bool = False,
        sample_posterior: bool = True,
        **kwargs,
    ):
        z_channels = autoencoder.config.z_channels
        if getattr(net, "in_channels", z_channels) != z_channels:
            raise ValueError(
                f"the network takes {net.in_channels} channels but the autoencoder's latents have {z_channels}: "
                f"set model.in_channels={z_channels} (data.channels for the latent cache)"
            )
        with warnings.catch_warnings():  # the parent's save_hyperparameters sees our autoencoder argument too
            warnings.filterwarnings("ignore", message=".*'autoencoder' is an instance of `nn.Module`")
            super().__init__(net, diffusion, optimizer, scheduler, **kwargs)
        self.save_hyperparameters(logger=False, ignore=["net", "diffusion", "autoencoder", "optimizer", "scheduler"])
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.encode_images, self.sample_posterior = encode_images, sample_posterior

    @property
    def scale_factor(self) -> float:
        return float(self.autoencoder.config.scale_factor)

    def train(self, mode: bool = True):
        super().train(mode)
        self.autoencoder.eval()  # frozen: always in eval mode
        return self

    @torch.no_grad()
    def encode_batch(self, x: Tensor) -> Tensor:
        """Unscaled latents ``[B, z, h, w]`` (or images, with ``encode_images``) -> ``scale_factor * z``."""
        if self.encode_images:
            post = self.autoencoder.encode(x)
            x = post.sample() if self.sample_posterior else post.mode()
        expected = self.sample_shape()
        if tuple(x.shape[1:]) != expected:
            hint = "" if self.encode_images else " (image batches need module.encode_images=true)"
            raise ValueError(f"batch of shape {tuple(x.shape)} is not latents of shape [B, {expected}]{hint}")
        return x * self.scale_factor

    def decode(self, z: Tensor) -> Tensor:
        """Scaled latents -> images ``[B, C, H, W]`` in [-1, 1]."""
        return decode_latents(self.autoencoder, z)

    def on_fit_start(self) -> None:
        self._export_autoencoder()

    @rank_zero_only
    def _export_autoencoder(self) -> None:
        path = Path(self.trainer.default_root_dir) / "checkpoints" / AUTOENCODER_FILENAME
        if not path.is_file():
            save_autoencoder(self.autoencoder, path, {"copied_for": "latent diffusion run"})
