"""Architectures of Stable Diffusion's components as dataclasses: SD 1.5 full size and tiny test sizes.

``SDConfig`` bundles the text encoder, UNet, VAE and the noise-schedule settings the pipelines use (the VAE's
:class:`~diffusionlab.nets.vae.AutoencoderConfig` lives with the autoencoder in ``nets/``).
``from_diffusers_*`` read the ``config.json`` files of a diffusers-format folder into these dataclasses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from diffusionlab.nets.vae import AutoencoderConfig


@dataclass(frozen=True)
class TextEncoderConfig:
    """CLIP ViT-L/14 text tower (SD 1.x): ``ids [B, max_positions] -> hidden [B, max_positions, width]``."""

    vocab_size: int = 49408
    max_positions: int = 77
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_width: int = 3072
    eps: float = 1e-5
    activation: str = "quick_gelu"  # "quick_gelu" (x * sigmoid(1.702 x)) or "gelu"


@dataclass(frozen=True)
class UNetConfig:
    """Conditional UNet (``ldm.modules.diffusionmodules.openaimodel.UNetModel`` in SD 1.x).

    Level ``i`` has ``model_channels * channel_mult[i]`` channels and ``num_res_blocks`` residual blocks,
    each followed by a spatial transformer when ``attention_levels[i]`` is true; every level but the
    last halves the resolution. ``in_channels`` is 4, or 9 for the inpainting UNet.
    """

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_levels: tuple[bool, ...] = (True, True, True, False)
    num_heads: int = 8
    context_dim: int = 768
    transformer_depth: int = 1
    norm_groups: int = 32

    def __post_init__(self):
        if len(self.attention_levels) != len(self.channel_mult):
            raise ValueError(
                f"attention_levels has {len(self.attention_levels)} entries but channel_mult has "
                f"{len(self.channel_mult)}; give one flag per level"
            )

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels

    def level_channels(self, level: int) -> int:
        return self.model_channels * self.channel_mult[level]


@dataclass(frozen=True)
class ScheduleConfig:
    """The noise schedule and sampler defaults Stable Diffusion was trained and is sampled with."""

    name: str = "scaled_linear"
    num_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    prediction: str = "eps"
    timestep_spacing: str = "leading"
    steps_offset: int = 1
    set_alpha_to_one: bool = False


@dataclass(frozen=True)
class SDConfig:
    """A whole Stable Diffusion model: its three networks and its schedule."""

    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    vae: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    def replace(self, **changes) -> SDConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SDConfig:
        def build(kind, values):
            values = dict(values or {})
            unknown = set(values) - {f.name for f in dataclasses.fields(kind)}
            if unknown:
                raise ValueError(f"unknown {kind.__name__} fields {sorted(unknown)}")
            return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

        return cls(
            text_encoder=build(TextEncoderConfig, d.get("text_encoder")),
            unet=build(UNetConfig, d.get("unet")),
            vae=build(AutoencoderConfig, d.get("vae")),
            schedule=build(ScheduleConfig, d.get("schedule")),
        )


# ---------------------------------------------------------------------------------------------- presets
def sd15(in_channels: int = 4) -> SDConfig:
    """Stable Diffusion 1.5 (``in_channels=9`` for ``sd-v1-5-inpainting``)."""
    return SDConfig(unet=UNetConfig(in_channels=in_channels))


def tiny(in_channels: int = 4) -> SDConfig:
    """The same architecture with small widths (tests): 4 levels, attention on the first 3."""
    return SDConfig(
        text_encoder=TextEncoderConfig(width=32, layers=2, heads=4, mlp_width=64),
        unet=UNetConfig(
            in_channels=in_channels,
            model_channels=32,
            channel_mult=(1, 1, 2, 2),
            num_res_blocks=2,
            attention_levels=(True, True, True, False),
            num_heads=2,
            context_dim=32,
            norm_groups=8,
        ),
        vae=AutoencoderConfig(ch=16, ch_mult=(1, 2, 2, 2), num_res_blocks=1, norm_groups=8),
    )


PRESETS = {"sd15": sd15, "sd15_inpainting": lambda: sd15(in_channels=9), "tiny": tiny}


def preset(name: str) -> SDConfig:
    """A named configuration: ``sd15``, ``sd15_inpainting`` or ``tiny``."""
    if name not in PRESETS:
        raise ValueError(f"unknown SD config {name!r}; valid choices: {', '.join(PRESETS)}")
    return PRESETS[name]()


# --------------------------------------------------------------------------- diffusers config.json files
def _require(cfg: dict, key: str, allowed: tuple, what: str):
    value = cfg.get(key, allowed[0])
    if isinstance(value, list):
        value = tuple(value)
    if value not in allowed:
        raise ValueError(f"{what}: {key}={value!r} is not supported; supported: {allowed}")
    return value


def unet_from_diffusers(cfg: dict[str, Any]) -> UNetConfig:
    """``UNet2DConditionModel`` config.json -> ``UNetConfig`` (SD 1.x layout only)."""
    blocks = tuple(cfg["block_out_channels"])
    base = blocks[0]
    if any(b % base for b in blocks):
        raise ValueError(f"block_out_channels {blocks} are not multiples of the first level's width")
    down = tuple(cfg.get("down_block_types", ()))
    attention = tuple(t.startswith("CrossAttn") for t in down)
    up = tuple(cfg.get("up_block_types", ()))
    if tuple(t.startswith("CrossAttn") for t in reversed(up)) != attention:
        raise ValueError(f"up_block_types {up} do not mirror down_block_types {down}")
    _require(cfg, "use_linear_projection", (False,), "UNet")
    _require(cfg, "flip_sin_to_cos", (True,), "UNet")
    _require(cfg, "freq_shift", (0,), "UNet")
    heads = cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 8)  # SD 1.x: "head_dim" = heads
    if isinstance(heads, list | tuple):
        if len(set(heads)) != 1:
            raise ValueError(f"per-level head counts {heads} are not supported")
        heads = heads[0]
    layers = cfg.get("layers_per_block", 2)
    depth = cfg.get("transformer_layers_per_block", 1)
    if isinstance(depth, list | tuple):
        depth = depth[0]
    return UNetConfig(
        in_channels=cfg.get("in_channels", 4),
        out_channels=cfg.get("out_channels", 4),
        model_channels=base,
        channel_mult=tuple(b // base for b in blocks),
        num_res_blocks=layers,
        attention_levels=attention,
        num_heads=int(heads),
        context_dim=cfg.get("cross_attention_dim", 768),
        transformer_depth=int(depth),
        norm_groups=cfg.get("norm_num_groups", 32),
    )


def vae_from_diffusers(cfg: dict[str, Any]) -> AutoencoderConfig:
    """``AutoencoderKL`` config.json -> ``AutoencoderConfig``."""
    blocks = tuple(cfg["block_out_channels"])
    base = blocks[0]
    return AutoencoderConfig(
        in_channels=cfg.get("in_channels", 3),
        out_channels=cfg.get("out_channels", 3),
        ch=base,
        ch_mult=tuple(b // base for b in blocks),
        num_res_blocks=cfg.get("layers_per_block", 2),
        z_channels=cfg.get("latent_channels", 4),
        mid_attention=cfg.get("mid_block_add_attention", True),
        norm_groups=cfg.get("norm_num_groups", 32),
        scale_factor=cfg.get("scaling_factor", 0.18215),
    )


def text_encoder_from_transformers(cfg: dict[str, Any]) -> TextEncoderConfig:
    """transformers ``CLIPTextConfig`` (or its config.json) -> ``TextEncoderConfig``."""
    return TextEncoderConfig(
        vocab_size=cfg.get("vocab_size", 49408),
        max_positions=cfg.get("max_position_embeddings", 77),
        width=cfg.get("hidden_size", 768),
        layers=cfg.get("num_hidden_layers", 12),
        heads=cfg.get("num_attention_heads", 12),
        mlp_width=cfg.get("intermediate_size", 3072),
        eps=cfg.get("layer_norm_eps", 1e-5),
        activation=_require(cfg, "hidden_act", ("quick_gelu", "gelu"), "text encoder"),
    )


def schedule_from_diffusers(cfg: dict[str, Any]) -> ScheduleConfig:
    """A diffusers scheduler_config.json -> ``ScheduleConfig``."""
    pred = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
    return ScheduleConfig(
        name=cfg.get("beta_schedule", "scaled_linear"),
        num_timesteps=cfg.get("num_train_timesteps", 1000),
        beta_start=cfg.get("beta_start", 0.00085),
        beta_end=cfg.get("beta_end", 0.012),
        prediction=pred.get(cfg.get("prediction_type", "epsilon"), cfg.get("prediction_type")),
        timestep_spacing=cfg.get("timestep_spacing", "leading"),
        steps_offset=cfg.get("steps_offset", 1),
        set_alpha_to_one=cfg.get("set_alpha_to_one", False),
    )
