"""``generate(...)``: one Stable Diffusion run from plain arguments, writing files (what ``sample.py
model=sd15`` calls).

Writes into ``out_dir``: ``images/000.png ...``, ``grid.png``, ``generation.json`` (arguments, seed,
timesteps) and, with ``save_trajectory``, ``trajectory.png`` (per sample one row of decoded intermediate
latents ``x_t`` and one row of the model's clean predictions, left = noisiest) and ``trajectory.gif``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import Tensor

from diffusionlab.sd.inputs import load_image
from diffusionlab.sd.outpaint import EXAMPLE, parse_extend
from diffusionlab.sd.pipeline import SDOutput, StableDiffusion, resolve_dtype
from diffusionlab.utils.images import make_grid, save_gif, save_png, to_uint8
from diffusionlab.utils.io import atomic_write_json, check_writable_dir

MODES = ("txt2img", "img2img", "inpaint", "outpaint")


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; valid choices: auto, cpu, cuda, cuda:N, mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use device=cpu")
    return dev


def load_model(checkpoint, dtype, device, config=None, use_ema: bool = True) -> StableDiffusion:
    """A single file (``.safetensors``/``.ckpt``) or a diffusers folder; an instance is passed through."""
    if isinstance(checkpoint, StableDiffusion):
        return checkpoint.to(device, dtype)
    if checkpoint is None or str(checkpoint) == "":
        raise ValueError(
            "no checkpoint given: set sd.checkpoint=/path/to/v1-5-pruned-emaonly.safetensors (or .ckpt, or a "
            "diffusers folder); Stable Diffusion weights are not bundled with diffusionlab"
        )
    path = Path(os.path.expanduser(str(checkpoint)))
    if path.is_dir():
        return StableDiffusion.from_diffusers(path, device=device, dtype=dtype)
    return StableDiffusion.from_single_file(path, config, device=device, dtype=dtype, use_ema=use_ema)


def _resize(image: Tensor, height: int | None, width: int | None) -> Tensor:
    if height is None and width is None:
        return image
    size = (height or image.shape[-2], width or image.shape[-1])
    if tuple(image.shape[-2:]) == size:
        return image
    return torch.nn.functional.interpolate(image, size=size, mode="bicubic", antialias=True).clamp(0, 1)


def _strip(sd: StableDiffusion, out: SDOutput, frames: int) -> tuple[list, Tensor]:
    """Decode ``frames`` evenly spaced steps of the trajectory: (GIF frames, strip grid array)."""
    steps = out.trajectory.shape[0]
    picks = sorted({round(i * (steps - 1) / max(frames - 1, 1)) for i in range(min(frames, steps))})
    xt = [sd.decode_latents(out.trajectory[i]) for i in picks]  # each [B, 3, H, W] in [0, 1]
    x0 = [sd.decode_latents(out.trajectory_x0[i]) for i in picks]
    batch = out.images.shape[0]
    nrow = math.ceil(math.sqrt(batch))
    gif = [make_grid(to_uint8(f * 2 - 1), nrow=nrow) for f in xt]
    rows = []
    for b in range(batch):
        rows += [f[b] for f in xt] + [f[b] for f in x0]
    strip = make_grid(to_uint8(torch.stack(rows) * 2 - 1), nrow=len(picks))
    return gif, strip


def generate(
    checkpoint=None,
    prompt: str = "an astronaut riding a horse",
    negative_prompt: str = "",
    steps: int = 30,
    sampler: str = "dpmpp_2m",
    guidance: float = 7.5,
    seed: int | None = 42,
    n: int = 1,
    height: int | None = 512,
    width: int | None = 512,
    mode: str = "txt2img",
    init_image: str | None = None,
    mask: str | None = None,
    strength: float | None = None,
    dtype: str = "float32",
    device: str = "auto",
    out_dir: str = "outputs/sd",
    save_trajectory: bool = False,
    extend=None,
    fill: str = "edge",
    overlap: int = 0,
    *,
    config: str | None = None,
    use_ema: bool = True,
    trajectory_frames: int = 8,
    progress: bool = True,
) -> dict:
    """Generate ``n`` images and write them (see the module docstring); returns the written paths and seed.

    ``mode``: ``txt2img``, ``img2img`` (needs ``init_image``; ``strength`` default 0.6), ``inpaint``
    (needs ``init_image`` and ``mask``, white = repaint; ``strength`` default 1.0) or ``outpaint`` (needs
    ``init_image`` and ``extend``, e.g. ``"left:128,right:128"``: the canvas grows by that many pixels per
    side, filled by ``fill`` and generated with ``overlap`` pixels into the original, see
    :meth:`StableDiffusion.outpaint`; ``strength`` default 1.0). The init image (and mask) are resized to
    ``height`` x ``width`` when those are set (outpainting grows the resized image); ``None`` keeps the
    image's size.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid choices: {', '.join(MODES)}")
    if mode != "txt2img" and init_image is None:
        raise ValueError(f"mode={mode} needs init_image=<path to an image>")
    if mode == "inpaint" and mask is None:
        raise ValueError("mode=inpaint needs mask=<path to a mask image, white = repaint>")
    if mode == "outpaint":
        if extend is None:
            raise ValueError(f"mode=outpaint needs extend=<side:pixels,...>, e.g. extend={EXAMPLE}")
        if mask is not None:
            raise ValueError("mode=outpaint builds its own mask from extend; drop mask=")
        extend = parse_extend(extend)  # fail before loading the weights
    elif extend is not None:
        raise ValueError(f"extend is only used by mode=outpaint, got mode={mode}; drop extend= or set mode=outpaint")
    if mode == "txt2img" and (height is None or width is None):
        raise ValueError("txt2img needs height and width (multiples of 8, e.g. 512)")
    if not isinstance(trajectory_frames, int) or trajectory_frames < 1:
        raise ValueError(f"trajectory_frames must be a positive integer, got {trajectory_frames!r}")
    out = check_writable_dir(out_dir)
    torch_dtype, dev = resolve_dtype(dtype), resolve_device(device)
    sd = load_model(checkpoint, torch_dtype, dev, config=config, use_ema=use_ema)

    common = dict(steps=steps, guidance=guidance, sampler=sampler, seed=seed, n=n, save_trajectory=save_trajectory)
    common["progress"] = progress
    if mode == "txt2img":
        result = sd.txt2img(prompt, negative_prompt, height=height, width=width, **common)
    else:
        image = _resize(load_image(init_image), height, width)
        if mode == "img2img":
            result = sd.img2img(
                image, prompt, negative_prompt, strength=0.6 if strength is None else strength, **common
            )
        elif mode == "inpaint":
            m = _resize(load_image(mask, mode="L"), height, width)
            result = sd.inpaint(
                image, m, prompt, negative_prompt, strength=1.0 if strength is None else strength, **common
            )
        else:
            result = sd.outpaint(image, extend, prompt, negative_prompt, fill=fill, overlap=overlap,
                                 strength=1.0 if strength is None else strength, **common)  # fmt: skip

    pixels = to_uint8(result.images * 2 - 1)
    paths = [
        save_png(make_grid(pixels[i : i + 1], padding=0), out / "images" / f"{i:03d}.png")
        for i in range(pixels.shape[0])
    ]
    written = {"images": [str(p) for p in paths], "seed": result.seed}
    written["grid"] = str(save_png(make_grid(pixels, nrow=math.ceil(math.sqrt(pixels.shape[0]))), out / "grid.png"))
    if save_trajectory:
        gif, strip = _strip(sd, result, trajectory_frames)
        written["trajectory"] = str(save_png(strip, out / "trajectory.png"))
        written["trajectory_gif"] = str(save_gif(gif, out / "trajectory.gif", duration_ms=250))
    record = dict(
        checkpoint=str(checkpoint) if not isinstance(checkpoint, StableDiffusion) else "<in-memory model>",
        prompt=prompt,
        negative_prompt=negative_prompt,
        mode=mode,
        steps=steps,
        sampler=sampler,
        guidance=guidance,
        seed=result.seed,
        n=n,
        size=list(result.images.shape[-2:]),
        strength=strength,
        init_image=None if init_image is None else str(init_image),
        mask=None if mask is None else str(mask),
        **(dict(extend=extend, fill=fill, overlap=overlap) if mode == "outpaint" else {}),
        dtype=str(torch_dtype).removeprefix("torch."),
        device=str(dev),
        timesteps=result.timesteps.tolist(),
        files=written,
    )
    atomic_write_json(out / "generation.json", record)
    return written
