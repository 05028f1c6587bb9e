"""Stable Diffusion pipelines: text-to-image, image-to-image and inpainting on our components.

Images in and out are ``[B, 3, H, W]`` floats in [0, 1] (PIL images and paths are accepted as inputs);
masks are ``[B, 1, H, W]`` in [0, 1], 1 = repaint. Latents are in diffusion space (``scale_factor * z``).
Sampling uses :mod:`diffusionlab.sampling` with SD's scheduler config and classifier-free guidance
``eps_u + guidance (eps_c - eps_u)``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from diffusionlab.diffusion.schedule import NoiseSchedule
from diffusionlab.sampling import (
    SAMPLER_NAMES,
    Sampler,
    classifier_free_guidance,
    get_sampler,
    sampler_options,
)
from diffusionlab.sd.checkpoint import load_diffusers, load_single_file
from diffusionlab.sd.config import SDConfig
from diffusionlab.sd.tokenizer import CLIPTokenizer
from diffusionlab.utils.seeding import cpu_generator, randn

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"``/``"float16"``/``"bfloat16"`` (or short names, or a torch dtype) -> torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"unsupported dtype {dtype}; valid choices: float32, float16, bfloat16")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid choices: {', '.join(DTYPES)}")
    return DTYPES[dtype]


@dataclass
class SDOutput:
    """Result of a pipeline call.

    images: ``[B, 3, H, W]`` float32 in [0, 1] on the CPU. latents: final ``[B, 4, H/8, W/8]`` float32.
    trajectory / trajectory_x0: ``[S, B, 4, H/8, W/8]`` (CPU) after each of the S steps run: the state
    ``x_t`` (variance-preserving scale) and the model's clean prediction, when ``save_trajectory``.
    """

    images: Tensor
    latents: Tensor
    seed: int
    timesteps: Tensor
    trajectory: Tensor | None = None
    trajectory_x0: Tensor | None = None


# ------------------------------------------------------------------------------------------ inputs
def load_image(image, mode: str = "RGB") -> Tensor:
    """A path, PIL image, uint8 array or float tensor in [0, 1] -> ``[B, C, H, W]`` float32 in [0, 1]."""
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        if not path.exists():
            raise FileNotFoundError(f"image {str(path)!r} does not exist")
        with Image.open(path) as im:
            image = im.convert(mode)
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert(mode))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"image arrays must be uint8 [H, W(, C)], got {image.dtype}")
        arr = image[..., None] if image.ndim == 2 else image
        image = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0
    if not isinstance(image, Tensor):
        raise TypeError(f"expected an image path, PIL image, uint8 array or tensor, got {type(image).__name__}")
    image = image.float()
    while image.ndim < 4:
        image = image.unsqueeze(0)
    if image.min() < 0 or image.max() > 1:
        raise ValueError(f"image tensors must hold values in [0, 1], got [{image.min():.3g}, {image.max():.3g}]")
    return image


def check_size(height: int, width: int, factor: int = 8) -> None:
    """Both sides must be positive multiples of the VAE's downsampling ``factor``."""
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0 or v % factor:
            lower = max(factor, (v // factor) * factor) if isinstance(v, int) and v > 0 else 512
            raise ValueError(
                f"{name} must be a positive multiple of {factor} (the VAE works on {factor}x{factor} "
                f"patches), got {v!r}; for example {lower} or {lower + factor}"
            )


# ------------------------------------------------------------------------------------------ pipeline
class StableDiffusion:
    """SD 1.x: ``tokenizer``, ``text_encoder``, ``unet``, ``vae`` (plain modules) and the schedule config."""

    def __init__(
        self,
        unet: nn.Module,
        vae: nn.Module,
        text_encoder: nn.Module,
        tokenizer: CLIPTokenizer | None = None,
        config: SDConfig | None = None,
    ):
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.tokenizer = tokenizer or CLIPTokenizer()
        self.config = config or SDConfig(unet=unet.config, vae=vae.config, text_encoder=text_encoder.config)
        if text_encoder.config.width != unet.config.context_dim:
            raise ValueError(
                f"text encoder width {text_encoder.config.width} differs from the UNet's context_dim "
                f"{unet.config.context_dim}"
            )
        if text_encoder.config.max_positions < self.tokenizer.max_length:
            raise ValueError("the tokenizer's max_length exceeds the text encoder's positions")

    # -------------------------------------------------------------------------------- construction
    @classmethod
    def from_single_file(
        cls,
        path: str | os.PathLike,
        config: SDConfig | str | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = torch.float32,
        use_ema: bool = True,
        tokenizer: CLIPTokenizer | None = None,
    ) -> StableDiffusion:
        """Original ``.ckpt``/``.safetensors`` (e.g. ``v1-5-pruned-emaonly``, ``sd-v1-5-inpainting``)."""
        config, m = load_single_file(path, config, dtype=resolve_dtype(dtype), device=device, use_ema=use_ema)
        return cls(m["unet"], m["vae"], m["text_encoder"], tokenizer, config)

    @classmethod
    def from_diffusers(
        cls,
        folder: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = torch.float32,
    ) -> StableDiffusion:
        """A diffusers folder: unet/, vae/, text_encoder/ (+ optional tokenizer/, scheduler/)."""
        config, m, tok = load_diffusers(folder, dtype=resolve_dtype(dtype), device=device)
        return cls(m["unet"], m["vae"], m["text_encoder"], CLIPTokenizer(tok) if tok else None, config)

    def to(self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None):
        kw = {"device": device} if device is not None else {}
        if dtype is not None:
            kw["dtype"] = resolve_dtype(dtype)
        for module in (self.unet, self.vae, self.text_encoder):
            module.to(**kw)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def is_inpainting_model(self) -> bool:
        return self.unet.config.in_channels == 9

    # -------------------------------------------------------------------------------- pieces
    @torch.no_grad()
    def encode_prompt(self, prompts: str | Sequence[str]) -> Tensor:
        """Prompts -> text embeddings ``[B, 77, width]`` in the model dtype."""
        ids = self.tokenizer([prompts] if isinstance(prompts, str) else list(prompts))
        return self.text_encoder(ids.to(self.device)).to(self.dtype)

    def make_sampler(self, name: str, steps: int, **options) -> Sampler:
        """A sampler of the shared library with SD's scheduler settings (spacing, offset, final alpha)."""
        if name not in SAMPLER_NAMES:
            raise ValueError(f"unknown sampler {name!r}; valid choices: {', '.join(SAMPLER_NAMES)}")
        s = self.config.schedule
        schedule = NoiseSchedule.from_name(s.name, s.num_timesteps, beta_start=s.beta_start, beta_end=s.beta_end)
        defaults = dict(
            timestep_spacing=s.timestep_spacing,
            steps_offset=s.steps_offset,
            final_alpha_one=s.set_alpha_to_one,
        )
        valid = sampler_options(name)
        opts = {k: v for k, v in defaults.items() if k in valid} | options
        return get_sampler(name, schedule, steps, prediction=s.prediction, **opts)

    @torch.no_grad()
    def encode_image(self, image: Tensor, generator: torch.Generator | None = None, sample=True) -> Tensor:
        """``[B, 3, H, W]`` in [0, 1] -> diffusion-space latents (posterior sample, or mean)."""
        posterior = self.vae.encode((image * 2 - 1).to(self.device, self.dtype))
        z = posterior.sample(generator) if sample else posterior.mode()
        return z.float() * self.vae.config.scale_factor

    @torch.no_grad()
    def decode_latents(self, latents: Tensor) -> Tensor:
        """Diffusion-space latents ``[B, 4, h, w]`` -> images ``[B, 3, 8h, 8w]`` float32 in [0, 1] (CPU),
        decoded one at a time to bound memory."""
        out = []
        for z in latents.split(1):
            x = self.vae.decode((z / self.vae.config.scale_factor).to(self.device, self.dtype))
            out.append((x.float() / 2 + 0.5).clamp(0, 1).cpu())
        return torch.cat(out)

    def _batch(self, prompt, negative_prompt, n: int) -> tuple[list[str], list[str]]:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("prompt must be a string or a non-empty list of strings")
        negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(negatives) != len(prompts):
            raise ValueError(f"{len(negatives)} negative prompts for {len(prompts)} prompts; give one per prompt")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n (images per prompt) must be a positive integer, got {n!r}")
        return [p for p in prompts for _ in range(n)], [q for q in negatives for _ in range(n)]

    @staticmethod
    def _generator(seed: int | None, generator: torch.Generator | None) -> tuple[torch.Generator, int]:
        if generator is not None:
            return generator, int(generator.initial_seed())
        seed = int(torch.randint(0, 2**31 - 1, ()).item()) if seed is None else int(seed)
        return cpu_generator(seed), seed

    @staticmethod
    def _start_index(steps: int, strength: float) -> int:
        if not 0 < strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {strength!r}")
        run = min(int(steps * strength), steps)
        if run < 1:
            raise ValueError(f"strength {strength} with {steps} steps runs no step; raise strength or steps")
        return steps - run

    # -------------------------------------------------------------------------------- the loop
    def _denoise(
        self,
        x: Tensor,
        sampler: Sampler,
        cond: Tensor,
        uncond: Tensor,
        guidance: float,
        generator: torch.Generator,
        start_index: int = 0,
        extra: Tensor | None = None,
        blend: Callable[[int, Tensor], Tensor] | None = None,
        save_trajectory: bool = False,
        callback=None,
        progress: bool = True,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Run the sampler from state ``x`` (float32); ``extra`` is concatenated to the UNet input (the
        9-channel inpainting model's mask and masked-image latents); ``blend(i, x)`` edits the state after
        each step (latent-blending inpainting)."""

        def net(x_t: Tensor, t: Tensor, context: Tensor) -> Tensor:
            inp = x_t.to(self.dtype)
            if extra is not None:
                inp = torch.cat([inp, extra.repeat(x_t.shape[0] // extra.shape[0], 1, 1, 1)], dim=1)
            return self.unet(inp, t.to(self.device), context).float()

        model_fn = classifier_free_guidance(net, cond, uncond, guidance)
        traj, traj_x0 = [], []

        def on_step(i, t, x_i, x0):
            if blend is not None:
                x_i = blend(i, x_i)
            if save_trajectory:
                sigma = float(sampler.sigmas[i + 1])
                traj.append((x_i / math.sqrt(1 + sigma**2) if sampler.ve_state else x_i).cpu())
                traj_x0.append(x0.cpu())
            if callback is not None:
                replaced = callback(i, t, x_i, x0)
                x_i = x_i if replaced is None else replaced
            return x_i

        x = sampler.sample(
            model_fn, x, generator=generator, callback=on_step, start_index=start_index, progress=progress
        )
        if save_trajectory:
            return x, torch.stack(traj), torch.stack(traj_x0)
        return x, None, None

    def _output(self, x, seed, sampler, start, traj, traj_x0) -> SDOutput:
        return SDOutput(
            images=self.decode_latents(x),
            latents=x.float().cpu(),
            seed=seed,
            timesteps=sampler.timesteps[start:],
            trajectory=traj,
            trajectory_x0=traj_x0,
        )

    def _noise(self, shape, generator) -> Tensor:
        return randn(shape, generator, device=self.device, dtype=torch.float32)

    # -------------------------------------------------------------------------------- pipelines
    @torch.no_grad()
    def txt2img(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] = "",
        *,
        steps: int = 30,
        guidance: float = 7.5,
        sampler: str = "dpmpp_2m",
        seed: int | None = None,
        generator: torch.Generator | None = None,
        n: int = 1,
        height: int = 512,
        width: int = 512,
        latents: Tensor | None = None,
        save_trajectory: bool = False,
        callback=None,
        progress: bool = True,
        sampler_options: dict | None = None,
    ) -> SDOutput:
        """Text to image. ``latents``: initial standard-normal noise ``[B, 4, H/8, W/8]`` (drawn from
        ``seed`` on the CPU otherwise). ``n`` images per prompt. An empty prompt ``""`` is allowed, as in
        diffusers: it is the unconditional embedding (with the default empty negative prompt every guidance
        scale gives the same unconditional image). Prompts over 77 tokens are truncated with a warning naming
        the dropped words; ``height`` and ``width`` must be multiples of 8 (``ValueError`` otherwise)."""
        check_size(height, width, self.vae.config.downsample_factor)
        if self.is_inpainting_model:  # the inpainting UNet draws from scratch with everything masked
            gray = torch.full((1, 3, height, width), 0.5)
            return self.inpaint(
                gray, torch.ones(1, 1, height, width), prompt, negative_prompt, steps=steps,
                guidance=guidance, sampler=sampler, seed=seed, generator=generator, n=n, latents=latents,
                save_trajectory=save_trajectory, callback=callback, progress=progress,
                sampler_options=sampler_options,
            )  # fmt: skip
        prompts, negatives = self._batch(prompt, negative_prompt, n)
        generator, seed = self._generator(seed, generator)
        f = self.vae.config.downsample_factor
        shape = (len(prompts), self.vae.config.z_channels, height // f, width // f)
        if latents is None:
            latents = self._noise(shape, generator)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        smp = self.make_sampler(sampler, steps, **(sampler_options or {}))
        x = smp.prepare_noise(latents.to(self.device, torch.float32))
        cond, uncond = self.encode_prompt(prompts), self.encode_prompt(negatives)
        x, traj, traj_x0 = self._denoise(
            x, smp, cond, uncond, guidance, generator, 0, None, None, save_trajectory, callback, progress
        )
        return self._output(x, seed, smp, 0, traj, traj_x0)

    @torch.no_grad()
    def img2img(
        self,
        init_image,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] = "",
        *,
        strength: float = 0.6,
        steps: int = 30,
        guidance: float = 7.5,
        sampler: str = "dpmpp_2m",
        seed: int | None = None,
        generator: torch.Generator | None = None,
        n: int = 1,
        save_trajectory: bool = False,
        callback=None,
        progress: bool = True,
        sampler_options: dict | None = None,
    ) -> SDOutput:
        """Image to image (SDEdit): noise the encoded ``init_image`` to ``strength`` of the way and denoise
        from there, running ``int(steps * strength)`` steps. Image sides must be multiples of 8."""
        if self.is_inpainting_model:
            raise ValueError("img2img needs an ordinary (4-channel) UNet; use inpaint() with this checkpoint")
        image = load_image(init_image)
        check_size(image.shape[-2], image.shape[-1], self.vae.config.downsample_factor)
        prompts, negatives = self._batch(prompt, negative_prompt, n)
        image = self._match_batch(image, len(prompts), "init_image")
        generator, seed = self._generator(seed, generator)
        smp = self.make_sampler(sampler, steps, **(sampler_options or {}))
        start = self._start_index(steps, strength)
        init = self.encode_image(image, generator)
        x = smp.noised_start(init, self._noise(init.shape, generator), start)
        cond, uncond = self.encode_prompt(prompts), self.encode_prompt(negatives)
        x, traj, traj_x0 = self._denoise(
            x, smp, cond, uncond, guidance, generator, start, None, None, save_trajectory, callback, progress
        )
        return self._output(x, seed, smp, start, traj, traj_x0)

    @staticmethod
    def _match_batch(t: Tensor, batch: int, what: str) -> Tensor:
        if t.shape[0] == batch:
            return t
        if t.shape[0] == 1:
            return t.expand(batch, *t.shape[1:])
        raise ValueError(f"{what} has batch {t.shape[0]}; give 1 or {batch} (prompts x n)")

    @torch.no_grad()
    def inpaint(
        self,
        init_image,
        mask,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] = "",
        *,
        strength: float = 1.0,
        steps: int = 30,
        guidance: float = 7.5,
        sampler: str = "dpmpp_2m",
        seed: int | None = None,
        generator: torch.Generator | None = None,
        n: int = 1,
        latents: Tensor | None = None,
        save_trajectory: bool = False,
        callback=None,
        progress: bool = True,
        sampler_options: dict | None = None,
    ) -> SDOutput:
        """Repaint where ``mask`` is 1 (white), keep the rest of ``init_image``.

        With the 9-channel inpainting UNet the mask and the masked image's latents are extra UNet inputs;
        with an ordinary UNet the kept region is re-imposed after every step (latent blending), noised to
        the next step's level. ``strength`` 1 starts from pure noise.
        """
        image = load_image(init_image)
        m = load_image(mask, mode="L")[:, :1]
        if m.shape[-2:] != image.shape[-2:]:
            raise ValueError(f"mask size {tuple(m.shape[-2:])} differs from image size {tuple(image.shape[-2:])}")
        f = self.vae.config.downsample_factor
        check_size(image.shape[-2], image.shape[-1], f)
        prompts, negatives = self._batch(prompt, negative_prompt, n)
        image = self._match_batch(image, len(prompts), "init_image")
        m = self._match_batch((m >= 0.5).float(), len(prompts), "mask")
        generator, seed = self._generator(seed, generator)
        smp = self.make_sampler(sampler, steps, **(sampler_options or {}))
        start = self._start_index(steps, strength)
        h, w = image.shape[-2] // f, image.shape[-1] // f
        mask_lat = F.interpolate(m, size=(h, w), mode="nearest").to(self.device)

        extra = blend = None
        init = self.encode_image(image, generator)
        shape = (len(prompts), self.vae.config.z_channels, h, w)
        if latents is not None and tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        noise = self._noise(shape, generator) if latents is None else latents.to(self.device, torch.float32)
        if self.is_inpainting_model:
            masked = self.encode_image(image * (m < 0.5), sample=False)
            extra = torch.cat([mask_lat, masked], dim=1).to(self.dtype)
        else:

            def blend(i: int, x: Tensor) -> Tensor:
                keep = init if i + 1 == smp.num_steps else smp.noised_start(init, noise, i + 1)
                return mask_lat * x + (1 - mask_lat) * keep

        x = smp.prepare_noise(noise) if strength == 1 else smp.noised_start(init, noise, start)
        cond, uncond = self.encode_prompt(prompts), self.encode_prompt(negatives)
        x, traj, traj_x0 = self._denoise(
            x,
            smp,
            cond,
            uncond,
            guidance,
            generator,
            start,
            extra,
            blend,
            save_trajectory,
            callback,
            progress,
        )
        return self._output(x, seed, smp, start, traj, traj_x0)
