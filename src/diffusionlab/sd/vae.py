"""Stable Diffusion 1.x's VAE: :class:`diffusionlab.nets.vae.AutoencoderKL` at SD's widths, loaded on its own
from an SD checkpoint (for latent diffusion on SD's latents: ``configs/autoencoder/sd_vae.yaml``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from diffusionlab.nets.autoencoder import set_scale_factor
from diffusionlab.nets.vae import AutoencoderConfig, AutoencoderKL, Decoder, DiagonalGaussian, Encoder
from diffusionlab.sd.checkpoint import load_component, open_state_dict
from diffusionlab.sd.config import sd15, vae_from_diffusers
from diffusionlab.sd.key_map import COMPVIS_PREFIX
from diffusionlab.utils.checkpoints import CheckpointError

__all__ = ["AutoencoderKL", "Decoder", "DiagonalGaussian", "Encoder", "load_sd_vae"]


def load_sd_vae(
    ckpt: str | os.PathLike,
    scale_factor: float | None = None,
    config: AutoencoderConfig | None = None,
    device: str | torch.device = "cpu",
) -> AutoencoderKL:
    """Stable Diffusion 1.x's VAE alone (eval mode, frozen) from an original single file (``.safetensors`` /
    ``.ckpt``, keys ``first_stage_model.*``), a diffusers folder, or its ``vae/`` subfolder.

    ``config``: the architecture of a single file (default SD 1.5's KL-f8); diffusers folders carry theirs.
    ``scale_factor``: None keeps the checkpoint's (0.18215 for SD 1.x)."""
    p = Path(ckpt).expanduser()
    if p.is_dir():
        folder = p / "vae" if (p / "vae" / "config.json").is_file() else p
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{str(p)!r} is not a diffusers folder: no vae/config.json or config.json")
        cfg = vae_from_diffusers(json.loads((folder / "config.json").read_text()))
        names = [f"{b}.{e}" for b in ("diffusion_pytorch_model", "model") for e in ("safetensors", "bin")]
        weights = next((folder / n for n in names if (folder / n).is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"no VAE weights in {str(folder)!r}: expected one of {names}")
        with open_state_dict(weights) as source:
            keys = {k: k for k in source}
            ae = load_component("vae", cfg, source, keys, "diffusers", device=device, where=repr(str(folder)))
    elif p.is_file():
        cfg = config or sd15().vae
        prefix = COMPVIS_PREFIX["vae"]
        with open_state_dict(p) as source:
            keys = {k[len(prefix) :]: k for k in source if k.startswith(prefix)}
            if not keys:
                raise CheckpointError(f"{str(p)!r} holds no VAE weights (no key starts with {prefix!r})")
            ae = load_component("vae", cfg, source, keys, "compvis", device=device, where=repr(str(p)), prefix=prefix)
    else:
        raise FileNotFoundError(f"SD checkpoint {str(p)!r} does not exist")
    if scale_factor is not None:
        set_scale_factor(ae, scale_factor)
    return ae.eval().requires_grad_(False)
