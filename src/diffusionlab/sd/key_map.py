"""Parameter names of SD 1.x in three layouts, written once as patterns.

Layouts: ``ours`` (this package's modules), ``compvis`` (the original single-file checkpoints: keys under
``model.diffusion_model.``, ``first_stage_model.``, ``cond_stage_model.transformer.``) and ``diffusers``
(one folder per component; the text encoder in transformers' layout).

Each component is a list of *block patterns* ``(ours, compvis, diffusers, scope, leaves)``: the three
names of one block, with placeholders filled in for every position the ``scope`` enumerates (a level, a
residual block, ...), and ``leaves``, the rows ``(ours, compvis, diffusers[, transform])`` naming the
layers inside that block. Any cell may be a tuple: the first name is written, all are read (old diffusers
files name the VAE attention ``query``/``key``/``value``/``proj_attn``; transformers 5 drops the text
tower's ``text_model.`` level). ``transform`` ``"conv1x1"`` marks a linear weight that CompVis stores as
a 1x1 convolution (``[C, C, 1, 1]``).
"""

from __future__ import annotations

from collections.abc import Iterator

from diffusionlab.sd.config import AutoencoderConfig, TextEncoderConfig, UNetConfig

LAYOUTS = ("ours", "compvis", "diffusers")
COMPONENTS = ("unet", "vae", "text_encoder")

# Where each component sits in an original single-file checkpoint.
COMPVIS_PREFIX = {
    "unet": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "text_encoder": "cond_stage_model.transformer.",
}
# EMA copies of the UNet in full (non-pruned) checkpoints: "model_ema." + UNet key without its dots.
COMPVIS_EMA_PREFIX = "model_ema."
# Keys of an original checkpoint that hold no weights of ours (schedule buffers, EMA bookkeeping, ...).
COMPVIS_IGNORED_KEYS = frozenset(
    [
        "betas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod",
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
        "logvar",
        "lvlb_weights",
        "model_ema.decay",
        "model_ema.num_updates",
    ]
)
COMPVIS_IGNORED_PREFIXES = (COMPVIS_EMA_PREFIX, "first_stage_model.loss.")
# Buffers inside a component's own namespace that carry no weights.
IGNORED_COMPONENT_KEYS = {"text_encoder": frozenset(["text_model.embeddings.position_ids", "embeddings.position_ids"])}

# ----------------------------------------------------------------------------------------- leaf tables
PLAIN = [("", "", "")]

UNET_RESNET = [
    ("norm1", "in_layers.0", "norm1"),
    ("conv1", "in_layers.2", "conv1"),
    ("time_proj", "emb_layers.1", "time_emb_proj"),
    ("norm2", "out_layers.0", "norm2"),
    ("conv2", "out_layers.3", "conv2"),
    ("skip", "skip_connection", "conv_shortcut"),
]

_ATTN = [("q", "to_q", "to_q"), ("k", "to_k", "to_k"), ("v", "to_v", "to_v"), ("out", "to_out.0", "to_out.0")]
SPATIAL_TRANSFORMER = [
    ("norm", "norm", "norm"),
    ("proj_in", "proj_in", "proj_in"),
    ("proj_out", "proj_out", "proj_out"),
    *[
        (f"blocks.{{d}}.{a}", f"transformer_blocks.{{d}}.{b}", f"transformer_blocks.{{d}}.{c}")
        for a, b, c in [
            ("norm1", "norm1", "norm1"),
            ("norm2", "norm2", "norm2"),
            ("norm3", "norm3", "norm3"),
            ("ff.proj", "ff.net.0.proj", "ff.net.0.proj"),
            ("ff.out", "ff.net.2", "ff.net.2"),
            *[(f"attn1.{x}", f"attn1.{y}", f"attn1.{z}") for x, y, z in _ATTN],
            *[(f"attn2.{x}", f"attn2.{y}", f"attn2.{z}") for x, y, z in _ATTN],
        ]
    ],
]

VAE_RESNET = [
    ("norm1", "norm1", "norm1"),
    ("conv1", "conv1", "conv1"),
    ("norm2", "norm2", "norm2"),
    ("conv2", "conv2", "conv2"),
    ("skip", "nin_shortcut", "conv_shortcut"),
]

VAE_ATTENTION = [
    ("norm", "norm", "group_norm"),
    ("q", "q", ("to_q", "query"), "conv1x1"),
    ("k", "k", ("to_k", "key"), "conv1x1"),
    ("v", "v", ("to_v", "value"), "conv1x1"),
    ("out", "proj_out", ("to_out.0", "proj_attn"), "conv1x1"),
]

CLIP_LAYER = [
    ("norm1", "layer_norm1", "layer_norm1"),
    ("attn.q", "self_attn.q_proj", "self_attn.q_proj"),
    ("attn.k", "self_attn.k_proj", "self_attn.k_proj"),
    ("attn.v", "self_attn.v_proj", "self_attn.v_proj"),
    ("attn.out", "self_attn.out_proj", "self_attn.out_proj"),
    ("norm2", "layer_norm2", "layer_norm2"),
    ("mlp.fc1", "mlp.fc1", "mlp.fc1"),
    ("mlp.fc2", "mlp.fc2", "mlp.fc2"),
]

# ----------------------------------------------------------------------------------------- block tables
# Placeholders: i = level (resolution index, 0 = full), j = block within a level, k = up-path position
# (0 = lowest resolution), ib / ob = CompVis input_blocks / output_blocks index, ci = CompVis level of
# decoder position k, up_at = CompVis sub-index of an output block's upsampler, n = CLIP layer.
UNET_BLOCKS = [
    ("time_embed.linear1", "time_embed.0", "time_embedding.linear_1", "once", PLAIN),
    ("time_embed.linear2", "time_embed.2", "time_embedding.linear_2", "once", PLAIN),
    ("conv_in", "input_blocks.0.0", "conv_in", "once", PLAIN),
    ("down.{i}.res.{j}", "input_blocks.{ib}.0", "down_blocks.{i}.resnets.{j}", "down", UNET_RESNET),
    (
        "down.{i}.attn.{j}",
        "input_blocks.{ib}.1",
        "down_blocks.{i}.attentions.{j}",
        "down_attn",
        SPATIAL_TRANSFORMER,
    ),
    (
        "down.{i}.downsample.conv",
        "input_blocks.{ib}.0.op",
        "down_blocks.{i}.downsamplers.0.conv",
        "downsample",
        PLAIN,
    ),
    ("mid.res1", "middle_block.0", "mid_block.resnets.0", "once", UNET_RESNET),
    ("mid.attn", "middle_block.1", "mid_block.attentions.0", "once", SPATIAL_TRANSFORMER),
    ("mid.res2", "middle_block.2", "mid_block.resnets.1", "once", UNET_RESNET),
    ("up.{k}.res.{j}", "output_blocks.{ob}.0", "up_blocks.{k}.resnets.{j}", "up", UNET_RESNET),
    (
        "up.{k}.attn.{j}",
        "output_blocks.{ob}.1",
        "up_blocks.{k}.attentions.{j}",
        "up_attn",
        SPATIAL_TRANSFORMER,
    ),
    (
        "up.{k}.upsample.conv",
        "output_blocks.{ob}.{up_at}.conv",
        "up_blocks.{k}.upsamplers.0.conv",
        "upsample",
        PLAIN,
    ),
    ("norm_out", "out.0", "conv_norm_out", "once", PLAIN),
    ("conv_out", "out.2", "conv_out", "once", PLAIN),
]

VAE_BLOCKS = [
    ("encoder.conv_in", "encoder.conv_in", "encoder.conv_in", "once", PLAIN),
    (
        "encoder.down.{i}.res.{j}",
        "encoder.down.{i}.block.{j}",
        "encoder.down_blocks.{i}.resnets.{j}",
        "down",
        VAE_RESNET,
    ),
    (
        "encoder.down.{i}.downsample.conv",
        "encoder.down.{i}.downsample.conv",
        "encoder.down_blocks.{i}.downsamplers.0.conv",
        "downsample",
        PLAIN,
    ),
    ("encoder.mid.res1", "encoder.mid.block_1", "encoder.mid_block.resnets.0", "once", VAE_RESNET),
    ("encoder.mid.attn", "encoder.mid.attn_1", "encoder.mid_block.attentions.0", "mid_attn", VAE_ATTENTION),
    ("encoder.mid.res2", "encoder.mid.block_2", "encoder.mid_block.resnets.1", "once", VAE_RESNET),
    ("encoder.norm_out", "encoder.norm_out", "encoder.conv_norm_out", "once", PLAIN),
    ("encoder.conv_out", "encoder.conv_out", "encoder.conv_out", "once", PLAIN),
    ("quant_conv", "quant_conv", "quant_conv", "once", PLAIN),
    ("post_quant_conv", "post_quant_conv", "post_quant_conv", "once", PLAIN),
    ("decoder.conv_in", "decoder.conv_in", "decoder.conv_in", "once", PLAIN),
    ("decoder.mid.res1", "decoder.mid.block_1", "decoder.mid_block.resnets.0", "once", VAE_RESNET),
    ("decoder.mid.attn", "decoder.mid.attn_1", "decoder.mid_block.attentions.0", "mid_attn", VAE_ATTENTION),
    ("decoder.mid.res2", "decoder.mid.block_2", "decoder.mid_block.resnets.1", "once", VAE_RESNET),
    (
        "decoder.up.{k}.res.{j}",
        "decoder.up.{ci}.block.{j}",
        "decoder.up_blocks.{k}.resnets.{j}",
        "up",
        VAE_RESNET,
    ),
    (
        "decoder.up.{k}.upsample.conv",
        "decoder.up.{ci}.upsample.conv",
        "decoder.up_blocks.{k}.upsamplers.0.conv",
        "upsample",
        PLAIN,
    ),
    ("decoder.norm_out", "decoder.norm_out", "decoder.conv_norm_out", "once", PLAIN),
    ("decoder.conv_out", "decoder.conv_out", "decoder.conv_out", "once", PLAIN),
]


# transformers < 5 (and the original checkpoints) nest the text tower under "text_model.", 5.x does not.
def _tm(path: str) -> tuple[str, str]:
    return ("text_model." + path, path)


TEXT_ENCODER_BLOCKS = [
    ("token_embedding", _tm("embeddings.token_embedding"), _tm("embeddings.token_embedding"), "once", PLAIN),
    (
        "position_embedding",
        _tm("embeddings.position_embedding"),
        _tm("embeddings.position_embedding"),
        "once",
        PLAIN,
    ),
    ("layers.{n}", _tm("encoder.layers.{n}"), _tm("encoder.layers.{n}"), "layer", CLIP_LAYER),
    ("final_norm", _tm("final_layer_norm"), _tm("final_layer_norm"), "once", PLAIN),
]

BLOCKS = {"unet": UNET_BLOCKS, "vae": VAE_BLOCKS, "text_encoder": TEXT_ENCODER_BLOCKS}


# ----------------------------------------------------------------------------------------- enumeration
def _unet_scope(scope: str, cfg: UNetConfig) -> Iterator[dict]:
    levels, nrb = len(cfg.channel_mult), cfg.num_res_blocks
    if scope == "once":
        yield {}
    for i in range(levels):
        last = i == levels - 1
        for j in range(nrb):
            ib = 1 + i * (nrb + 1) + j
            if scope == "down" or (scope == "down_attn" and cfg.attention_levels[i]):
                yield dict(i=i, j=j, ib=ib)
        if scope == "downsample" and not last:
            yield dict(i=i, ib=1 + i * (nrb + 1) + nrb)
    for k in range(levels):
        i = levels - 1 - k
        for j in range(nrb + 1):
            ob = k * (nrb + 1) + j
            if scope == "up" or (scope == "up_attn" and cfg.attention_levels[i]):
                yield dict(k=k, j=j, ob=ob)
        if scope == "upsample" and i > 0:
            yield dict(k=k, ob=k * (nrb + 1) + nrb, up_at=2 if cfg.attention_levels[i] else 1)


def _vae_scope(scope: str, cfg: AutoencoderConfig) -> Iterator[dict]:
    levels = len(cfg.ch_mult)
    if scope == "once" or (scope == "mid_attn" and cfg.mid_attention):
        yield {}
    for i in range(levels):
        if scope == "down":
            yield from (dict(i=i, j=j) for j in range(cfg.num_res_blocks))
        if scope == "downsample" and i < levels - 1:
            yield dict(i=i)
    for k in range(levels):
        ci = levels - 1 - k
        if scope == "up":
            yield from (dict(k=k, ci=ci, j=j) for j in range(cfg.num_res_blocks + 1))
        if scope == "upsample" and ci > 0:
            yield dict(k=k, ci=ci)


def _text_scope(scope: str, cfg: TextEncoderConfig) -> Iterator[dict]:
    if scope == "once":
        yield {}
    if scope == "layer":
        yield from (dict(n=n) for n in range(cfg.layers))


_SCOPES = {"unet": _unet_scope, "vae": _vae_scope, "text_encoder": _text_scope}


def _join(prefix: str, leaf: str) -> str:
    return f"{prefix}.{leaf}" if leaf else prefix


def _names(cell) -> tuple[str, ...]:
    return cell if isinstance(cell, tuple) else (cell,)


def module_rows(component: str, cfg) -> list[tuple[tuple[str, ...], ...]]:
    """Every weight-holding module of ``component`` built from ``cfg``, as
    ``(ours_names, compvis_names, diffusers_names, transform)``: module paths without ``.weight``/``.bias``;
    each names tuple starts with the name written and lists every name read."""
    if component not in BLOCKS:
        raise ValueError(f"unknown component {component!r}; valid choices: {', '.join(COMPONENTS)}")
    depth = getattr(cfg, "transformer_depth", 1)
    rows = []
    for *blocks, scope, leaves in BLOCKS[component]:
        for values in _SCOPES[component](scope, cfg):
            for leaf in leaves:
                transform = leaf[3] if len(leaf) > 3 else None
                for d in range(depth) if "{d}" in leaf[0] else [None]:
                    v = dict(values, d=d)
                    names = tuple(
                        tuple(_join(b.format(**v), x.format(**v)) for b in _names(bc) for x in _names(lc))
                        for bc, lc in zip(blocks, leaf[:3])
                    )
                    rows.append((*names, transform))
    return rows


def module_map(component: str, cfg, src: str, dst: str) -> dict[str, tuple[str, str | None]]:
    """``{module path in src: (module path in dst, transform)}``; ``transform`` is ``"conv1x1"`` when
    the weight must be reshaped between a 1x1 conv and a linear layer, else None."""
    for layout in (src, dst):
        if layout not in LAYOUTS:
            raise ValueError(f"unknown key layout {layout!r}; valid choices: {', '.join(LAYOUTS)}")
    out = {}
    for ours, compvis, diffusers, transform in module_rows(component, cfg):
        names = {"ours": ours, "compvis": compvis, "diffusers": diffusers}
        reshape = transform if "compvis" in (src, dst) and src != dst else None
        for name in names[src]:
            out[name] = (names[dst][0], reshape)
    return out
