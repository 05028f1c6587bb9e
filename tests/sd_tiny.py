"""Tiny SD 1.x reference models for the sd tests: built in diffusers / transformers with random weights,
saved as a diffusers folder and as original single files (.safetensors and .ckpt).

Not a test module: imported by tests/test_sd_*.py. Everything is cached per process.
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

import torch

from diffusionlab.sd.config import text_encoder_from_transformers, unet_from_diffusers, vae_from_diffusers
from diffusionlab.sd.convert import convert_state_dict
from diffusionlab.sd.key_map import COMPVIS_PREFIX
from diffusionlab.sd.tokenizer import PACKAGE_FILES

SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
    timestep_spacing="leading",
    set_alpha_to_one=False,
    clip_sample=False,
    prediction_type="epsilon",
)


def unet_kwargs(in_channels: int = 4) -> dict:
    """The same layout as SD 1.5 (4 levels, attention on the first 3, 2 blocks per level), small widths."""
    return dict(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=32,
        attention_head_dim=2,  # diffusers' SD 1.x naming: this is the number of heads
        norm_num_groups=8,
    )


VAE_KWARGS = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(16, 32, 32, 32),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    scaling_factor=0.18215,
)

TEXT_KWARGS = dict(
    vocab_size=49408,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
)


def perturb(model: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    """Add noise to every parameter, so norms are not all 1/0 and a swapped mapping would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model.eval()


@functools.lru_cache(maxsize=4)
def reference_models(in_channels: int = 4, seed: int = 0) -> dict:
    """``{"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel}``, eval mode."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    return {
        "unet": perturb(UNet2DConditionModel(**unet_kwargs(in_channels)), seed + 1),
        "vae": perturb(AutoencoderKL(**VAE_KWARGS), seed + 2),
        "text_encoder": perturb(CLIPTextModel(CLIPTextConfig(**TEXT_KWARGS)), seed + 3),
    }


def our_configs(models: dict) -> dict:
    return {
        "unet": unet_from_diffusers(dict(models["unet"].config)),
        "vae": vae_from_diffusers(dict(models["vae"].config)),
        "text_encoder": text_encoder_from_transformers(models["text_encoder"].config.to_dict()),
    }


def compvis_state_dict(models: dict) -> dict[str, torch.Tensor]:
    """The reference weights in the original single-file layout (through our key patterns)."""
    cfgs = our_configs(models)
    out = {}
    for name, model in models.items():
        sd, unexpected = convert_state_dict(model.state_dict(), name, cfgs[name], "diffusers", "compvis")
        assert not unexpected, unexpected
        out.update({COMPVIS_PREFIX[name] + k: v.clone().contiguous() for k, v in sd.items()})
    return out


_ROOT = Path(tempfile.mkdtemp(prefix="diffusionlab-sd-tests-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


def saved(in_channels: int = 4) -> dict[str, Path]:
    """Write the reference models once: ``{"diffusers": folder, "safetensors": file, "ckpt": file}``."""
    return _saved(in_channels)  # one cache entry per channel count, however it is called


@functools.lru_cache(maxsize=4)
def _saved(in_channels: int) -> dict[str, Path]:
    from diffusers import DDIMScheduler
    from safetensors.torch import save_file

    models = reference_models(in_channels)
    root = _ROOT / f"in{in_channels}"
    folder = root / "diffusers"
    for name, model in models.items():
        model.save_pretrained(folder / name)
    shutil.copytree(PACKAGE_FILES, folder / "tokenizer")
    DDIMScheduler(**SCHEDULER).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    sd = compvis_state_dict(models)
    save_file(sd, root / "model.safetensors")
    torch.save({"state_dict": sd, "global_step": 1}, root / "model.ckpt")
    return {"diffusers": folder, "safetensors": root / "model.safetensors", "ckpt": root / "model.ckpt"}


def diffusers_pipe(kind: str = "", scheduler: str = "ddim", in_channels: int = 4):
    """diffusers' ``StableDiffusion{kind}Pipeline`` on the reference models, DDIM or DPM-Solver++(2M)."""
    import diffusers
    from transformers import CLIPTokenizer

    if scheduler == "ddim":
        sched = diffusers.DDIMScheduler(**SCHEDULER)
    else:
        sched = diffusers.DPMSolverMultistepScheduler(
            **{k: v for k, v in SCHEDULER.items() if k not in ("set_alpha_to_one", "clip_sample")},
            algorithm_type="dpmsolver++",
            solver_order=2,
        )
    models = reference_models(in_channels)
    cls = getattr(diffusers, f"StableDiffusion{kind}Pipeline")
    pipe = cls(
        vae=models["vae"],
        text_encoder=models["text_encoder"],
        tokenizer=CLIPTokenizer.from_pretrained(PACKAGE_FILES),
        unet=models["unet"],
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
