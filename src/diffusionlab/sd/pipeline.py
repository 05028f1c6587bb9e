"""Stable Diffusion pipelines: text-to-image, image-to-image, inpainting and outpainting on our components.

Images in and out are ``[B, 3, H, W]`` floats in [0, 1] (PIL images and paths are accepted as inputs);
masks are ``[B, 1, H, W]`` in [0, 1], 1 = repaint. Latents are in diffusion space (``scale_factor * z``).
Sampling uses :mod:`diffusionlab.sampling` with SD's scheduler config and classifier-free guidance
``eps_u + guidance (eps_c - eps_u)``. img2img, inpaint and outpaint share one preparation of their start
(:meth:`StableDiffusion._image_start`); outpaint grows the canvas (:mod:`diffusionlab.sd.outpaint`) and
inpaints it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
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
from diffusionlab.sd.inputs import check_size, load_image, load_mask, match_batch
from diffusionlab.sd.outpaint import outpaint_canvas
from diffusionlab.sd.tokenizer import CLIPTokenizer
from diffusionlab.utils.seeding import cpu_generator, randn

__all__ = ["DTYPES", "SDOutput", "StableDiffusion", "check_size", "load_image", "resolve_dtype"]

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


@dataclass
class Start:
    """Where a pipeline starts, for a batch of B = prompts x n: the sampler state ``x`` ``[B, 4, h, w]`` at
    grid index ``start``, drawn from standard-normal ``noise`` (same shape). img2img / inpaint / outpaint
    also keep ``image`` ``[B, 3, H, W]`` in [0, 1], its encoding ``init`` ``[B, 4, h, w]`` (a posterior
    sample) and inpainting's ``mask`` ``[B, 1, H, W]`` in {0, 1} (1 = repaint) with ``mask_latent``, the
    mask at latent size ``[B, 1, h, w]`` (nearest)."""

    prompts: list[str]
    negatives: list[str]
    generator: torch.Generator
    seed: int
    sampler: Sampler
    start: int
    noise: Tensor
    x: Tensor
    image: Tensor | None = None
    init: Tensor | None = None
    mask: Tensor | None = None
    mask_latent: Tensor | None = None


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

    def _noise(self, shape: tuple[int, ...], generator, latents: Tensor | None = None) -> Tensor:
        """Standard-normal float32 ``shape`` on the model's device: the given ``latents`` (checked), or drawn."""
        if latents is None:
            return randn(shape, generator, device=self.device, dtype=torch.float32)
        if tuple(latents.shape) != tuple(shape):
            raise ValueError(f"latents must have shape {tuple(shape)}, got {tuple(latents.shape)}")
        return latents.to(self.device, torch.float32)

    def _image_start(
        self,
        init_image,
        prompt,
        negative_prompt,
        *,
        mask=None,
        strength: float,
        steps: int,
        sampler: str,
        seed: int | None,
        generator: torch.Generator | None,
        n: int,
        latents: Tensor | None = None,
        sampler_options: dict | None = None,
        pure_noise_at_full_strength: bool = False,
    ) -> Start:
        """The shared preparation of img2img / inpaint / outpaint: check and batch the image (and mask),
        encode the image to latents (a posterior sample, drawn from ``generator`` before the noise), scale
        the mask to latent size, and noise the latents to the start timestep of ``strength``. With
        ``pure_noise_at_full_strength`` (inpainting, as diffusers does) strength 1 starts from pure noise
        instead of the noised image."""
        image = load_image(init_image)
        m = None if mask is None else load_mask(mask, image.shape[-2:])
        f = self.vae.config.downsample_factor
        check_size(image.shape[-2], image.shape[-1], f)
        prompts, negatives = self._batch(prompt, negative_prompt, n)
        image = match_batch(image, len(prompts), "init_image")
        m = None if m is None else match_batch(m, len(prompts), "mask")
        generator, seed = self._generator(seed, generator)
        smp = self.make_sampler(sampler, steps, **(sampler_options or {}))
        start = self._start_index(steps, strength)
        h, w = image.shape[-2] // f, image.shape[-1] // f
        init = self.encode_image(image, generator)
        noise = self._noise((len(prompts), self.vae.config.z_channels, h, w), generator, latents)
        if pure_noise_at_full_strength and strength == 1:
            x = smp.prepare_noise(noise)
        else:
            x = smp.noised_start(init, noise, start)
        mask_latent = None if m is None else F.interpolate(m, size=(h, w), mode="nearest").to(self.device)
        return Start(prompts, negatives, generator, seed, smp, start, noise, x, image, init, m, mask_latent)

    def _run(self, st: Start, guidance: float, **loop) -> SDOutput:
        """Encode the prompts, denoise from ``st`` (``loop``: :meth:`_denoise`'s keyword arguments), decode."""
        cond, uncond = self.encode_prompt(st.prompts), self.encode_prompt(st.negatives)
        x, traj, traj_x0 = self._denoise(st.x, st.sampler, cond, uncond, guidance, st.generator, st.start, **loop)
        return self._output(x, st.seed, st.sampler, st.start, traj, traj_x0)

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
        noise = self._noise((len(prompts), self.vae.config.z_channels, height // f, width // f), generator, latents)
        smp = self.make_sampler(sampler, steps, **(sampler_options or {}))
        st = Start(prompts, negatives, generator, seed, smp, 0, noise, smp.prepare_noise(noise))
        return self._run(st, guidance, save_trajectory=save_trajectory, callback=callback, progress=progress)

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
        st = self._image_start(
            init_image, prompt, negative_prompt, strength=strength, steps=steps, sampler=sampler, seed=seed,
            generator=generator, n=n, sampler_options=sampler_options,
        )  # fmt: skip
        return self._run(st, guidance, save_trajectory=save_trajectory, callback=callback, progress=progress)

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
        """Repaint where ``mask`` is 1 (white; thresholded at 0.5), keep the rest of ``init_image``.

        With the 9-channel inpainting UNet the mask and the masked image's latents are extra UNet inputs;
        with an ordinary UNet the kept region is re-imposed after every step (latent blending), noised to
        the next step's level. ``strength`` 1 starts from pure noise.
        """
        st = self._image_start(
            init_image, prompt, negative_prompt, mask=mask, strength=strength, steps=steps, sampler=sampler,
            seed=seed, generator=generator, n=n, latents=latents, sampler_options=sampler_options,
            pure_noise_at_full_strength=True,
        )  # fmt: skip
        extra = blend = None
        if self.is_inpainting_model:
            masked = self.encode_image(st.image * (st.mask < 0.5), sample=False)
            extra = torch.cat([st.mask_latent, masked], dim=1).to(self.dtype)
        else:
            smp, init, noise, m = st.sampler, st.init, st.noise, st.mask_latent

            def blend(i: int, x: Tensor) -> Tensor:
                keep = init if i + 1 == smp.num_steps else smp.noised_start(init, noise, i + 1)
                return m * x + (1 - m) * keep

        loop = dict(extra=extra, blend=blend, save_trajectory=save_trajectory, callback=callback, progress=progress)
        return self._run(st, guidance, **loop)

    @torch.no_grad()
    def outpaint(
        self,
        init_image,
        extend,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] = "",
        *,
        fill: str = "edge",
        overlap: int = 0,
        **options,
    ) -> SDOutput:
        """Grow ``init_image`` by ``extend`` pixels per side (``"left:128,right:128"``, a list of such
        entries or ``{"left": 128, ...}``; multiples of 8) and generate the new area: :meth:`inpaint` on the
        canvas and mask of :func:`diffusionlab.sd.outpaint.outpaint_canvas` (new area filled by ``fill``:
        ``edge`` replicates the border pixels, ``gray`` is mid-gray; the mask also covers ``overlap`` pixels
        of the original along each grown side). ``options``: :meth:`inpaint`'s keyword arguments (strength,
        steps, guidance, sampler, seed, n, latents ``[B, 4, H'/8, W'/8]``, ...). Images ``[B, 3, H', W']``.
        """
        image = load_image(init_image)
        check_size(image.shape[-2], image.shape[-1], self.vae.config.downsample_factor)
        canvas, mask = outpaint_canvas(image, extend, fill, overlap, self.vae.config.downsample_factor)
        return self.inpaint(canvas, mask, prompt, negative_prompt, **options)
