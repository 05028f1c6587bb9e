"""KL autoencoders for latent diffusion: small ones for MNIST / Fashion-MNIST / CIFAR-10, or SD 1.x's VAE.

Both are :class:`diffusionlab.nets.vae.AutoencoderKL` (same ResnetBlock / Downsample / Upsample / attention
blocks, only the widths differ; SD's is loaded by :func:`diffusionlab.sd.vae.load_sd_vae`):
``encode(x [B, C, H, W] in [-1, 1]) -> DiagonalGaussian`` over unscaled latents ``[B, z_channels, H/f, W/f]``,
``decode(z) -> [B, C, H, W]``. Diffusion runs on ``scale_factor * z``; a trained autoencoder stores the factor
it measured (1 / std of its training latents) in the metadata of its ``autoencoder.safetensors``, so nobody
has to know SD's 0.18215.

Plain PyTorch (no Lightning, no Hydra); the file format is safetensors with JSON metadata.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from diffusionlab.nets.vae import AutoencoderConfig, AutoencoderKL
from diffusionlab.utils.checkpoints import CheckpointError
from diffusionlab.utils.io import atomic_path

AUTOENCODER_FILENAME = "autoencoder.safetensors"
FORMAT = "diffusionlab.autoencoder/1"


def kl_autoencoder(
    in_channels: int = 1,
    out_channels: int | None = None,
    ch: int = 32,
    factor: int = 4,
    ch_mult: Iterable[int] | None = None,
    num_res_blocks: int = 1,
    z_channels: int = 4,
    mid_attention: bool = True,
    norm_groups: int = 8,
    scale_factor: float = 1.0,
) -> AutoencoderKL:
    """A small KL autoencoder: ``[B, in_channels, H, W] <-> [B, z_channels, H/factor, W/factor]``.

    ``factor`` (a power of two) sets the number of levels; level ``i`` has ``ch * ch_mult[i]`` channels
    (default ``ch_mult = (1, 2, 2, ...)``, ``log2(factor) + 1`` levels). ``ch_mult`` given explicitly
    overrides ``factor`` (which must then agree). Widths must be multiples of ``norm_groups``.
    ``scale_factor`` is replaced by the measured one after training.
    """
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1 or factor & (factor - 1):
        raise ValueError(f"factor must be a power of two (1, 2, 4, 8, ...), got {factor!r}")
    levels = int(math.log2(factor)) + 1
    mult = tuple(ch_mult) if ch_mult is not None else (1,) + (2,) * (levels - 1)
    if len(mult) != levels:
        raise ValueError(f"ch_mult {mult} has {len(mult)} levels, but factor {factor} needs {levels}")
    bad = [ch * m for m in mult if (ch * m) % norm_groups]
    if bad:
        raise ValueError(f"level widths {bad} (ch={ch} x ch_mult) are not multiples of norm_groups={norm_groups}")
    cfg = AutoencoderConfig(
        in_channels=in_channels,
        out_channels=out_channels or in_channels,
        ch=ch,
        ch_mult=mult,
        num_res_blocks=num_res_blocks,
        z_channels=z_channels,
        mid_attention=mid_attention,
        norm_groups=norm_groups,
        scale_factor=float(scale_factor),
    )
    return AutoencoderKL(cfg)


def set_scale_factor(ae: AutoencoderKL, scale_factor: float) -> AutoencoderKL:
    """Replace the latent scale factor of ``ae`` (in place; returns ``ae``)."""
    if not math.isfinite(scale_factor) or scale_factor <= 0:
        raise ValueError(f"scale_factor must be a positive finite number, got {scale_factor!r}")
    ae.config = dataclasses.replace(ae.config, scale_factor=float(scale_factor))
    return ae


def latent_shape(ae: AutoencoderKL, image_size: int) -> tuple[int, int, int]:
    """``(z_channels, image_size / f, image_size / f)``: the latents of a square image. Raises ValueError
    unless ``f`` (the downsampling factor) divides ``image_size`` (the decoder could not give it back)."""
    f = ae.config.downsample_factor
    if image_size % f:
        raise ValueError(
            f"image size {image_size} is not a multiple of the autoencoder's downsampling factor {f}; "
            f"pad or resize the images (e.g. MNIST: data.image_size=32)"
        )
    return (ae.config.z_channels, image_size // f, image_size // f)


def decode_latents(ae: AutoencoderKL, z: Tensor) -> Tensor:
    """Scaled latents ``[B, z_channels, h, w]`` (diffusion space) -> images ``[B, C, H, W]`` in [-1, 1]."""
    return ae.decode_scaled(z).clamp(-1.0, 1.0)


@torch.no_grad()
def measure_scale_factor(ae: AutoencoderKL, images: Iterable[Tensor], sample: bool = True) -> float:
    """``1 / std`` of the unscaled latents of ``images`` (an iterable of ``[B, C, H, W]`` in [-1, 1]):
    the factor that gives the diffusion model unit-variance inputs. ``sample``: posterior samples (what the
    latent cache feeds by default) rather than means."""
    device = next(ae.parameters()).device
    n, s1, s2 = 0, 0.0, 0.0
    for x in images:
        post = ae.encode(x.to(device))
        z = post.sample() if sample else post.mode()
        z = z.double()
        n, s1, s2 = n + z.numel(), s1 + z.sum().item(), s2 + z.pow(2).sum().item()
    if n < 2:
        raise ValueError("measure_scale_factor needs at least one batch of images")
    var = (s2 - s1 * s1 / n) / (n - 1)
    if not var > 0:
        raise ValueError(f"latents have variance {var}: cannot measure a scale factor")
    return 1.0 / math.sqrt(var)


# ------------------------------------------------------------------------------------------ files
def save_autoencoder(ae: AutoencoderKL, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write ``ae`` to ``path`` (safetensors, atomically) with its architecture and scale factor in the
    metadata, so :func:`load_autoencoder` needs nothing else. ``metadata``: extra strings to record."""
    state = {k: v.detach().cpu().contiguous() for k, v in ae.state_dict().items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    meta.update(
        format=FORMAT,
        config=json.dumps(dataclasses.asdict(ae.config)),
        scale_factor=repr(float(ae.config.scale_factor)),
    )
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def autoencoder_file(ckpt: str | os.PathLike) -> Path:
    """The ``autoencoder.safetensors`` of a run folder, its ``checkpoints/`` folder, or the file itself."""
    p = Path(ckpt).expanduser()
    for cand in (p, p / AUTOENCODER_FILENAME, p / "checkpoints" / AUTOENCODER_FILENAME):
        if cand.is_file():
            return cand
    raise FileNotFoundError(
        f"no autoencoder at {str(p)!r}: give an autoencoder run folder (python train.py "
        f"experiment=mnist_autoencoder writes checkpoints/{AUTOENCODER_FILENAME}) or that file"
    )


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata strings of an autoencoder file (clear error when truncated or not safetensors)."""
    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{str(path)!r} is not a readable safetensors file (truncated?): {err}") from None


def load_autoencoder(
    ckpt: str | os.PathLike, scale_factor: float | None = None, device: str | torch.device = "cpu"
) -> AutoencoderKL:
    """A trained autoencoder (eval mode, frozen) from a run folder or its ``autoencoder.safetensors``.

    ``scale_factor``: None uses the one stored in the file (measured in training)."""
    path = autoencoder_file(ckpt)
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not a diffusionlab autoencoder file (format {meta.get('format')!r}, "
            f"expected {FORMAT!r}); for Stable Diffusion weights use load_sd_vae (config autoencoder=sd_vae)"
        )
    cfg = json.loads(meta["config"])
    cfg = AutoencoderConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
    with torch.device("meta"):
        ae = AutoencoderKL(cfg)
    from safetensors.torch import load_file

    state = load_file(str(path), device=str(device))
    try:
        ae.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise CheckpointError(f"{str(path)!r} does not fit its own config {cfg}: {err}") from None
    if scale_factor is not None:
        set_scale_factor(ae, scale_factor)
    return ae.eval().requires_grad_(False)
