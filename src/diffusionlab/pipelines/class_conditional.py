"""Sampling images from a (class-conditional) denoising network with any sampler of the library."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from diffusionlab.diffusion.gaussian import GaussianDiffusion
from diffusionlab.sampling import classifier_free_guidance, get_sampler
from diffusionlab.utils.hardware import AUTO, fast_precision
from diffusionlab.utils.seeding import cpu_generator, randn

PRECISIONS = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
"""Denoiser precisions while sampling (Lightning's names): autocast dtype, None for float32."""


def default_sampler_opts(latent: bool, given: Mapping | None = None) -> dict:
    """The sampler options to use: the defaults with the caller's ``given`` options on top. Pixel models (data
    in [-1, 1]) clamp the predicted x0 to [-1, 1] at every step, as DDPM's reference sampler and diffusers'
    ``clip_sample`` do (without it an early model's samples can leave the data range and stay noise); latents
    are unbounded: no clamp. ``given={'clip_x0': None}`` turns the clamp off."""
    return {**({} if latent else {"clip_x0": 1.0}), **(given or {})}


def check_conditioning(num_classes: int | None, has_labels: bool, guidance: float = 1.0) -> None:
    """Raise a ValueError unless labels and guidance fit the network: an unconditional one
    (``num_classes=None``) takes no labels, and guidance other than 1 needs labels of a conditional one."""
    if num_classes is None and has_labels:
        raise ValueError(
            "class labels given, but this model is unconditional (num_classes=None, trained with "
            "data.conditional=false): sample it without labels (no class=)"
        )
    if guidance != 1 and not has_labels:
        why = "this model is unconditional" if num_classes is None else "no class labels were given"
        raise ValueError(
            f"guidance={guidance:g} needs class labels (classifier-free guidance mixes the class-conditional and "
            f"unconditional predictions), but {why}: use guidance=1"
        )


def check_precision(precision: str | int, device: str | torch.device = "cpu") -> str:
    """``precision`` as one of :data:`PRECISIONS`' names (``32`` may come as an int from a config); ``"auto"``
    becomes ``"bf16-mixed"`` where ``device`` has native bf16 and ``"32"`` elsewhere
    (:func:`~diffusionlab.utils.hardware.fast_precision`)."""
    name = str(precision)
    if name == AUTO:
        return fast_precision(device)
    if name not in PRECISIONS:
        choices = ", ".join([*PRECISIONS, AUTO])
        raise ValueError(f"unknown sampling precision {precision!r}; valid choices: {choices}")
    return name


def mixed_precision(fn: Callable[..., Tensor], device: torch.device, precision: str | int) -> Callable[..., Tensor]:
    """``fn(x_t, ...)`` evaluated under ``torch.autocast`` of ``precision``, its output cast back to ``x_t``'s
    dtype, so the sampler's own arithmetic (and the noise it adds) stays in full precision; ``"32"``: ``fn``."""
    dtype = PRECISIONS[check_precision(precision, device)]
    if dtype is None:
        return fn

    def wrapped(x_t: Tensor, *args) -> Tensor:
        with torch.autocast(device.type, dtype=dtype):
            out = fn(x_t, *args)
        return out.to(x_t.dtype)

    return wrapped


def check_request(labels: Tensor | None, n: int | None, num_classes: int | None, guidance: float) -> int:
    """The number of samples asked for; ``ValueError`` naming the value and the valid range for a bad ``n``,
    labels (``[N]`` integers in ``[0, num_classes - 1]``, conditional models only) or guidance scale."""
    if labels is None and n is None:
        raise ValueError("give either labels [N] or the number of samples n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n (the number of samples) must be a positive integer, got {n!r}")
    if not guidance >= 0:  # also NaN; classifier_free_guidance refuses non-numbers and infinities
        raise ValueError(f"guidance scale must be >= 0 (1 = no guidance, 0 = unconditional), got {guidance!r}")
    check_conditioning(num_classes, labels is not None, guidance)
    if labels is None:
        return n
    if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.is_floating_point() or labels.is_complex():
        what = f"a {labels.dtype} tensor of shape {tuple(labels.shape)}" if isinstance(labels, Tensor) else repr(labels)
        raise ValueError(f"labels must be a 1-D integer tensor [N] of class indices, got {what}")
    if len(labels) == 0:
        raise ValueError("labels is empty: give at least one class label")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if len(bad):
        raise ValueError(
            f"class label(s) {sorted(set(bad.tolist()))} out of range: valid labels are 0..{num_classes - 1}"
        )
    if n is not None and n != len(labels):
        raise ValueError(f"n={n} differs from the {len(labels)} labels given; give one of them, or both equal")
    return len(labels)


@torch.no_grad()
def generate(
    net: nn.Module,
    diffusion: GaussianDiffusion,
    shape: tuple[int, int, int],
    labels: Tensor | None = None,
    n: int | None = None,
    sampler: str = "ddim",
    steps: int = 50,
    guidance: float = 1.0,
    seed: int = 0,
    sampler_opts: dict | None = None,
    decode: Callable[[Tensor], Tensor] | None = None,
    trajectory_every: int = 0,
    progress: bool = True,
    device: torch.device | str | None = None,
    precision: str | int = "32",
    channels_last: bool = False,
    cond: Tensor | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """Draw samples ``[N, *shape]`` in the data space of ``net`` (pixels in [-1, 1], or latents).

    Args:
        net: ``net(x_t, t, y) -> prediction`` of ``diffusion.prediction``; put in eval mode here.
        shape: ``(C, H, W)`` of one sample.
        labels: ``[N]`` class labels in ``[0, num_classes - 1]`` of a class-conditional ``net``, or None for
            ``n`` unconditional samples (the null class of a conditional net; an unconditional net,
            ``net.num_classes = None``, takes none); ``n``, if also given, must equal ``N``.
        guidance: classifier-free guidance scale ``s`` (Stable Diffusion convention):
            ``out = uncond + s * (cond - uncond)``; ``s = 1`` is the plain conditional model, ``s = 0`` the
            unconditional one; the seed paper's weight ``w`` is ``s = 1 + w``. Needs labels: without them
            only ``s = 1`` is accepted.
        seed: noise is drawn on the CPU from this seed, so samples do not depend on the device.
        decode: optional map from samples to images (latent models: the autoencoder's decoder).
        trajectory_every: if > 0, also return the predicted x0 every that many steps (and the last).
        precision: ``"32"``, ``"bf16-mixed"`` or ``"16-mixed"``: the denoiser runs under autocast of that
            dtype (on an AMX CPU bf16 is several times faster); the sampler's update stays float32.
            ``"auto"``: bf16-mixed where ``device`` has native bf16, else 32.
        channels_last: run the denoiser on channels-last inputs, converting ``net`` in place (as
            ``module.channels_last`` does for training); faster convolutions on CPU and GPU.
        cond: ``[N, C', H, W]`` conditioning image of an image-conditioned net (super-resolution: the
            upsampled low-resolution inputs, see :func:`~diffusionlab.pipelines.super_resolution.upscale`),
            passed as ``net(x_t, t, y, cond=cond)`` at every step.

    Returns ``(samples, trajectory)``; ``trajectory`` is a list of ``[N, ...]`` tensors (decoded if
    ``decode`` is given), empty unless ``trajectory_every > 0``.
    """
    num = check_request(labels, n, getattr(net, "num_classes", None), guidance)
    device = torch.device(device) if device is not None else next(net.parameters()).device
    precision = check_precision(precision, device)
    net_was_training = net.training
    net.eval()
    gen = cpu_generator(seed)
    smp = get_sampler(sampler, diffusion.schedule, steps, prediction=diffusion.prediction, **(sampler_opts or {}))
    x = smp.prepare_noise(randn((num, *shape), gen, device=device))

    if channels_last:
        net.to(memory_format=torch.channels_last)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    if cond is not None:
        if cond.ndim != 4 or len(cond) != num:
            raise ValueError(f"cond must be [{num}, C, H, W] (one image per sample), got {list(cond.shape)}")
        cond = cond.to(device).contiguous(memory_format=layout)

    def call_net(x_t: Tensor, t: Tensor, c: Tensor | None) -> Tensor:
        x_t = x_t.contiguous(memory_format=layout)
        if cond is None:
            return net(x_t, t, c)
        return net(x_t, t, c, cond=cond.repeat(len(x_t) // num, 1, 1, 1))  # guidance doubles the batch

    net_fn = mixed_precision(call_net, device, precision)
    num_classes = getattr(net, "num_classes", None)
    if labels is not None:
        y = labels.to(device)
        model_fn = classifier_free_guidance(net_fn, y, torch.full_like(y, num_classes), guidance)
    else:
        model_fn = lambda x_t, t: net_fn(x_t, t, None)

    trajectory: list[Tensor] = []

    def record(i, t, x_i, x0_pred):
        if trajectory_every and (i % trajectory_every == 0 or i == len(smp.timesteps) - 1):
            trajectory.append(x0_pred.detach().cpu() if decode is None else decode(x0_pred).cpu())

    try:
        out = smp.sample(model_fn, x, generator=gen, callback=record, progress=progress)
    finally:
        net.train(net_was_training)
    if decode is not None:
        out = decode(out)
    return out, trajectory
