"""Load diffusers ``UNet2DModel`` weights into :class:`~diffusionlab.nets.unet.UNet` (no diffusers import).

Works for the DDPM family of ``UNet2DModel`` configs (``DownBlock2D``/``AttnDownBlock2D`` with mirrored up
blocks, positional time embedding with ``freq_shift=1``, conv resampling, default ResNet time injection), e.g.
``google/ddpm-cifar10-32``. ``flip_sin_to_cos=True`` is handled by swapping the halves of the first time-MLP
weight. Anything else raises ``ValueError`` naming the unsupported setting.

    net = unet_from_diffusers(dict(model.config), model.state_dict())
    model = UNet2DModel(**diffusers_unet2d_config(**unet_kwargs))  # the same architecture, for comparisons
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping

import torch
from torch import Tensor

from diffusionlab.nets.unet import UNet

# UNet2DModel's defaults for keys a saved config may omit
_DEFAULTS = {
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "mid_block_type": "UNetMidBlock2D",
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "act_fn": "silu",
    "resnet_time_scale_shift": "default",
    "class_embed_type": None,
    "num_class_embeds": None,
    "layers_per_block": 2,
    "dropout": 0.0,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "attn_norm_num_groups": None,
    "norm_eps": 1e-5,
    "add_attention": True,
}
# config key -> values our UNet reproduces
_REQUIRED = {
    "center_input_sample": (False,),
    "time_embedding_type": ("positional",),
    "freq_shift": (1,),
    "mid_block_type": ("UNetMidBlock2D",),
    "mid_block_scale_factor": (1,),
    "downsample_padding": (1,),
    "downsample_type": ("conv",),
    "upsample_type": ("conv",),
    "act_fn": ("silu",),
    "resnet_time_scale_shift": ("default",),
    "class_embed_type": (None,),
}
_DOWN = {"DownBlock2D": False, "AttnDownBlock2D": True}
_UP = {"UpBlock2D": False, "AttnUpBlock2D": True}

_RENAMES = [
    (r"^time_embedding\.linear_(\d)\.", r"time_embed.linear\1."),
    (r"^class_embedding\.", "class_embed."),
    (r"^conv_norm_out\.", "norm_out."),
    (r"^(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.", r"\1.\2.res.\3."),
    (r"^(down|up)_blocks\.(\d+)\.attentions\.(\d+)\.", r"\1.\2.attn.\3."),
    (r"^(down|up)_blocks\.(\d+)\.(down|up)samplers\.0\.", r"\1.\2.resample."),
    (r"^mid_block\.resnets\.0\.", "mid.res1."),
    (r"^mid_block\.resnets\.1\.", "mid.res2."),
    (r"^mid_block\.attentions\.0\.", "mid.attn."),
    (r"\.time_emb_proj\.", ".temb_proj."),
    (r"\.conv_shortcut\.", ".shortcut."),
    (r"\.group_norm\.", ".norm."),
    (r"\.to_out\.0\.", ".proj."),
]


def unet_kwargs_from_diffusers(config: Mapping, cond_channels: int | None = None) -> dict:
    """``UNet`` constructor arguments equivalent to a diffusers ``UNet2DModel`` config (a dict).

    ``cond_channels``: the last that many of the model's ``in_channels`` are a concatenated conditioning image
    (super-resolution), which our ``UNet`` takes as ``cond``."""
    config = {**_DEFAULTS, **config}
    if cond_channels is not None and not 0 < cond_channels < config["in_channels"]:
        raise ValueError(f"cond_channels={cond_channels} must lie in [1, in_channels={config['in_channels']})")
    for key, allowed in _REQUIRED.items():
        if config[key] not in allowed:
            raise ValueError(f"diffusers config {key}={config[key]!r} is not supported; supported: {list(allowed)}")
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    for kind, table, types in (("down", _DOWN, down), ("up", _UP, up)):
        bad = [b for b in types if b not in table]
        if bad:
            raise ValueError(f"diffusers {kind}_block_types {bad} are not supported; supported: {list(table)}")
    attn_levels = [_DOWN[b] for b in down]
    if [_UP[b] for b in reversed(up)] != attn_levels:
        raise ValueError(f"up_block_types {up} must mirror down_block_types {down}")
    widths = list(config["block_out_channels"])
    base = widths[0]
    if any(w % base for w in widths):
        raise ValueError(f"block_out_channels {widths} must be multiples of the first entry")
    temb = config["time_embedding_dim"]
    if temb not in (None, 4 * base):
        raise ValueError(f"time_embedding_dim={temb} is not supported; only 4 * block_out_channels[0] = {4 * base}")
    groups = config["norm_num_groups"]
    if config["attn_norm_num_groups"] not in (None, groups):
        raise ValueError(f"attn_norm_num_groups={config['attn_norm_num_groups']} must equal norm_num_groups={groups}")
    size = config["sample_size"]
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ValueError(f"only square sample_size is supported, got {size}")
        size = size[0]
    n_cls = config["num_class_embeds"]
    kwargs = dict(
        in_channels=config["in_channels"] - (cond_channels or 0),
        out_channels=config["out_channels"],
        base_channels=base,
        channel_mult=tuple(w // base for w in widths),
        num_res_blocks=config["layers_per_block"],
        attention_resolutions=tuple(size // 2**i for i, a in enumerate(attn_levels) if a),
        dropout=config["dropout"],
        num_classes=None if n_cls is None else n_cls - 1,
        image_size=size,
        num_heads=1,
        head_dim=config["attention_head_dim"],
        norm_groups=groups,
        norm_eps=config["norm_eps"],
        mid_attention=config["add_attention"],
    )
    if cond_channels is not None:
        kwargs["cond_channels"] = cond_channels
    return kwargs


def diffusers_unet2d_config(**unet_kwargs) -> dict:
    """The ``UNet2DModel`` config (a dict for ``UNet2DModel(**config)``) of the same architecture as
    ``UNet(**unet_kwargs)``; the inverse of :func:`unet_kwargs_from_diffusers`. With ``cond_channels`` the
    diffusers model takes ``cat([x_t, cond])``: ``in_channels + cond_channels`` channels in."""
    kw = {name: p.default for name, p in inspect.signature(UNet).parameters.items() if p.default is not p.empty}
    kw.update(unet_kwargs)
    if kw["head_dim"] is None and kw["num_heads"] != 1:
        raise ValueError("diffusers sets attention heads by head size: give head_dim instead of num_heads")
    size, mult = kw["image_size"], tuple(kw["channel_mult"])
    attn = [size // 2**i in tuple(kw["attention_resolutions"]) for i in range(len(mult))]
    return dict(
        sample_size=size,
        in_channels=kw["in_channels"] + (kw["cond_channels"] or 0),
        out_channels=kw["out_channels"] or kw["in_channels"],
        block_out_channels=tuple(kw["base_channels"] * m for m in mult),
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        layers_per_block=kw["num_res_blocks"],
        attention_head_dim=kw["head_dim"],
        norm_num_groups=kw["norm_groups"],
        norm_eps=kw["norm_eps"],
        dropout=kw["dropout"],
        num_class_embeds=None if kw["num_classes"] is None else kw["num_classes"] + 1,
        freq_shift=1,
        flip_sin_to_cos=False,
        add_attention=kw["mid_attention"],
    )


def convert_unet2d_state_dict(state_dict: Mapping[str, Tensor], flip_sin_to_cos: bool) -> dict[str, Tensor]:
    """Rename a ``UNet2DModel`` state dict to :class:`UNet` keys and fuse ``to_q/to_k/to_v`` into ``qkv``."""
    out: dict[str, Tensor] = {}
    qkv: dict[str, dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        new = key
        for pattern, repl in _RENAMES:
            new = re.sub(pattern, repl, new)
        m = re.match(r"^(.*)\.to_([qkv])\.(weight|bias)$", new)
        if m:
            qkv.setdefault(f"{m[1]}.qkv.{m[3]}", {})[m[2]] = value
            continue
        if new == "time_embed.linear1.weight" and flip_sin_to_cos:
            half = value.shape[1] // 2  # diffusers feeds [cos, sin]; ours is [sin, cos]
            value = torch.cat([value[:, half:], value[:, :half]], dim=1)
        out[new] = value
    for key, parts in qkv.items():
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def unet_from_diffusers(config: Mapping, state_dict: Mapping[str, Tensor], cond_channels: int | None = None) -> UNet:
    """Build a :class:`UNet` from a ``UNet2DModel`` config and state dict (strict load: mismatches raise);
    ``cond_channels``: see :func:`unet_kwargs_from_diffusers`."""
    net = UNet(**unet_kwargs_from_diffusers(config, cond_channels))
    net.load_state_dict(convert_unet2d_state_dict(state_dict, bool({**_DEFAULTS, **config}["flip_sin_to_cos"])))
    return net
