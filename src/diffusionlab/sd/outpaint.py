"""Outpainting geometry: grow an image's canvas and build the mask of what to generate.

``extend`` says how many pixels to add on each side: ``"left:128,right:128"``, a list of such
``side:pixels`` strings, or a mapping ``{"left": 128, "right": 128}``; sides are ``top``, ``bottom``,
``left`` and ``right``, each a non-negative multiple of 8 (the VAE's patch, so the mask edge falls on the
latent grid). The new area is filled by replicating the image's edge pixels (``fill="edge"``, the default:
the VAE then sees no hard border at the seam, and with ``strength < 1`` the model starts from the extended
colours) or with mid-gray (``fill="gray"``). The mask is 1 on the new area and, with ``overlap``, on that
many pixels of the original along each grown side, so the seam itself is regenerated.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch.nn.functional as F
from torch import Tensor

SIDES = ("top", "bottom", "left", "right")
FILLS = ("edge", "gray")
EXAMPLE = "left:128,right:128"


def _pixels(name: str, value, factor: int) -> int:
    """A non-negative multiple of ``factor`` (an int or its digits), else a ``ValueError`` naming ``name``."""
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a whole number of pixels, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0 pixels, got {value}; outpainting only grows the canvas")
    if value % factor:
        low = value // factor * factor or factor
        raise ValueError(
            f"{name}={value} must be a multiple of {factor} (the VAE works on {factor}x{factor} patches); "
            f"for example {low} or {low + factor}"
        )
    return value


def parse_extend(extend, factor: int = 8) -> dict[str, int]:
    """``"left:128,right:128"`` / ``["left:128", "right:128"]`` / ``{"left": 128, "right": 128}`` ->
    ``{"top": 0, "bottom": 0, "left": 128, "right": 128}``; unknown, repeated, negative or non-multiple-of-
    ``factor`` sides, and an extension that adds nothing, raise ``ValueError`` saying what would be right."""
    if isinstance(extend, str):
        entries = [e for e in extend.replace(" ", "").split(",") if e]
    elif isinstance(extend, Mapping):
        entries = [(str(k), v) for k, v in extend.items()]
    elif isinstance(extend, Sequence):
        entries = list(extend)
    else:
        raise ValueError(f"extend must be side:pixels entries like {EXAMPLE!r}, got {extend!r}")
    out = dict.fromkeys(SIDES, 0)
    seen = set()
    for raw in entries:
        entry = raw.split(":") if isinstance(raw, str) else raw
        if isinstance(entry, str) or not isinstance(entry, Sequence) or len(entry) != 2:
            raise ValueError(f"extend entries are side:pixels (e.g. {EXAMPLE}), got {raw!r}")
        side, value = str(entry[0]).strip().lower(), entry[1]
        if side not in SIDES:
            raise ValueError(f"unknown side {side!r} in extend; valid sides: {', '.join(SIDES)}")
        if side in seen:
            raise ValueError(f"extend names side {side!r} twice; give each side once, e.g. {EXAMPLE}")
        seen.add(side)
        out[side] = _pixels(f"extend {side}", value, factor)
    if not any(out.values()):
        raise ValueError(f"extend {extend!r} adds no pixels; give at least one side > 0, e.g. {EXAMPLE}")
    return out


def outpaint_canvas(
    image: Tensor, extend, fill: str = "edge", overlap: int = 0, factor: int = 8
) -> tuple[Tensor, Tensor]:
    """Grow ``image`` ``[B, C, H, W]`` (in [0, 1]) by ``extend`` (see :func:`parse_extend`).

    Returns ``(canvas, mask)``: ``canvas`` ``[B, C, H + top + bottom, W + left + right]`` equal to ``image``
    at ``[top : top + H, left : left + W]`` and filled by ``fill`` elsewhere; ``mask`` ``[1, 1, H', W']`` in
    {0, 1}, 1 = generate: the new area plus ``overlap`` pixels (a multiple of ``factor``) into the original
    along each grown side.
    """
    sides = parse_extend(extend, factor)
    if fill not in FILLS:
        raise ValueError(f"unknown fill {fill!r}; valid choices: {', '.join(FILLS)}")
    overlap = _pixels("outpaint overlap", overlap, factor)
    h, w = image.shape[-2:]
    top, bottom, left, right = (sides[s] for s in SIDES)
    for size, name, a, b in ((w, "width", left, right), (h, "height", top, bottom)):
        if overlap * ((a > 0) + (b > 0)) >= size:
            raise ValueError(
                f"overlap {overlap} px would repaint the whole image {name} ({size} px); use a smaller overlap"
            )
    pad = (left, right, top, bottom)
    canvas = F.pad(image, pad, mode="replicate") if fill == "edge" else F.pad(image, pad, value=0.5)
    mask = image.new_ones(1, 1, *canvas.shape[-2:])
    mask[..., top + (overlap if top else 0) : top + h - (overlap if bottom else 0),
         left + (overlap if left else 0) : left + w - (overlap if right else 0)] = 0  # fmt: skip
    return canvas, mask
