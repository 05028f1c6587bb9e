"""Checkpoint loading: SD 1.5's full-size architecture (meta tensors), EMA checkpoints, memory use of
memory-mapped loading, and the errors for damaged, malicious, foreign and non-checkpoint files."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from diffusionlab.sd.checkpoint import (
    CheckpointError,
    build_meta,
    load_compvis,
    load_diffusers,
    load_single_file,
)
from diffusionlab.sd.config import sd15, tiny
from diffusionlab.sd.convert import compvis_ema_key, to_compvis
from diffusionlab.sd.pipeline import StableDiffusion
from tests.sd_tiny import compvis_state_dict, reference_models, saved

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread (tests/conftest.py)

# Facts about SD 1.5's public checkpoint layout (diffusers' v1-5 configs).
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768,
    attention_head_dim=8,
)
SD15_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    sample_size=512,
)
SD15_TEXT = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12)
# Non-weight keys found in the public original checkpoints.
EXTRA_KEYS = [
    "betas",
    "alphas_cumprod",
    "posterior_mean_coef1",
    "logvar",
    "model_ema.decay",
    "model_ema.num_updates",
]


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def full_meta():
    """SD 1.5 at full size on the meta device (no memory): our modules and their original-layout dict."""
    cfg = sd15()
    modules = {name: build_meta(name, getattr(cfg, name)) for name in ("unet", "vae", "text_encoder")}
    flat = to_compvis({k: m.state_dict() for k, m in modules.items()}, cfg)
    return modules, flat


def test_full_size_parameter_counts(full_meta):
    modules, _ = full_meta
    assert round(count(modules["unet"]) / 1e6, 1) == 859.5
    assert round(count(modules["vae"]) / 1e6, 2) == 83.65
    assert round(count(modules["text_encoder"]) / 1e6, 1) == 123.1
    # and exactly the reference implementation's counts for the same configuration
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with init_empty_weights():
        assert count(modules["unet"]) == count(UNet2DConditionModel(**SD15_UNET))
        assert count(modules["vae"]) == count(AutoencoderKL(**SD15_VAE))
        assert count(modules["text_encoder"]) == count(CLIPTextModel(CLIPTextConfig(**SD15_TEXT)))


def test_full_original_layout_loads_without_missing_or_unexpected_keys(full_meta):
    _, flat = full_meta
    assert len(flat) == 686 + 248 + 196
    source = dict(flat)
    source.update({k: torch.empty(1000, device="meta") for k in EXTRA_KEYS})
    source["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.empty(1, 77, device="meta")
    config, modules = load_compvis(source, None, device="meta")
    assert config == sd15()
    assert count(modules["unet"]) == 859_520_964
    # the 9-channel inpainting checkpoint is recognised from its first convolution
    source["model.diffusion_model.input_blocks.0.0.weight"] = torch.empty(320, 9, 3, 3, device="meta")
    config, modules = load_compvis(source, None, device="meta")
    assert config == sd15(in_channels=9) and modules["unet"].conv_in.in_channels == 9


def test_full_original_layout_agrees_with_diffusers_converter(full_meta):
    """diffusers' own original->diffusers converter maps our full-size original key set onto exactly the
    keys and shapes of diffusers' SD 1.5 UNet and VAE."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    _, flat = full_meta
    with init_empty_weights():
        for model, convert in (
            (UNet2DConditionModel(**SD15_UNET), convert_ldm_unet_checkpoint),
            (AutoencoderKL(**SD15_VAE), convert_ldm_vae_checkpoint),
        ):
            expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
            got = convert(flat, dict(model.config))
            assert {k: tuple(v.shape) for k, v in got.items()} == expected


def test_ema_weights_of_a_full_checkpoint(tmp_path):
    flat = compvis_state_dict(reference_models())
    ema = {compvis_ema_key(k): v + 1.0 for k, v in flat.items() if k.startswith("model.diffusion_model.")}
    save_file({**flat, **ema, "model_ema.decay": torch.tensor(0.9999)}, tmp_path / "full.safetensors")
    _, with_ema = load_single_file(tmp_path / "full.safetensors", "tiny")
    _, without = load_single_file(tmp_path / "full.safetensors", "tiny", use_ema=False)
    w = "model.diffusion_model.out.2.weight"
    assert torch.equal(with_ema["unet"].conv_out.weight, flat[w] + 1)
    assert torch.equal(without["unet"].conv_out.weight, flat[w])
    # an incomplete EMA copy is reported, not silently mixed
    del ema[compvis_ema_key(w)]
    save_file({**flat, **ema}, tmp_path / "partial.safetensors")
    with pytest.raises(CheckpointError, match="EMA.*use_ema=False"):
        load_single_file(tmp_path / "partial.safetensors", "tiny")


_LOAD_AND_MEASURE = """
import sys
import torch
from diffusionlab.sd.checkpoint import build_meta, load_component, open_state_dict
from diffusionlab.sd.config import TextEncoderConfig

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

cfg = TextEncoderConfig(width=512, layers=1, heads=8, mlp_width=512)
# warm up: the first meta-device module construction imports torch machinery (~150 MB, once)
build_meta("text_encoder", TextEncoderConfig(vocab_size=10, width=8, layers=1, heads=1, mlp_width=8))
float(torch.ones(8).sum())
base = status("VmRSS")
src = open_state_dict(sys.argv[1])
module = load_component("text_encoder", cfg, src, {k: k for k in src}, "ours")
total = sum(float(p.sum()) for p in module.parameters())  # touch every weight
size = sum(p.numel() * p.element_size() for p in module.parameters())
print(size, status("VmHWM") - base, status("VmRSS") - base)
"""


@pytest.mark.parametrize("fmt", ["safetensors", "ckpt"])
def test_loading_holds_one_copy_of_the_weights(tmp_path, fmt):
    """Peak memory while loading (and reading every weight of) a ~100 MB text encoder stays near one
    copy of the weights: the file is memory-mapped and its tensors become the parameters."""
    from diffusionlab.sd.clip import CLIPTextEncoder
    from diffusionlab.sd.config import TextEncoderConfig

    state = CLIPTextEncoder(TextEncoderConfig(width=512, layers=1, heads=8, mlp_width=512)).state_dict()
    path = tmp_path / f"te.{fmt}"
    save_file(state, path) if fmt == "safetensors" else torch.save({"state_dict": state}, path)
    del state
    out = subprocess.run([sys.executable, "-c", _LOAD_AND_MEASURE, str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    size, peak, now = map(int, out.stdout.split())
    assert size > 90e6
    assert peak < 1.3 * size and now < 1.3 * size, (size, peak, now)


# ---------------------------------------------------------------------------------------------- errors
def test_truncated_files(tmp_path):
    for name in ("safetensors", "ckpt"):
        data = saved()[name].read_bytes()
        bad = tmp_path / f"cut.{name}"
        bad.write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError, match="truncated"):
            StableDiffusion.from_single_file(bad, "tiny")


class _RunsCode:
    """Unpickling this calls os.system: what a malicious .ckpt does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_arbitrary_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    flat = compvis_state_dict(reference_models())
    torch.save({"state_dict": flat, "callback": _RunsCode(marker)}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="arbitrary code") as err:
        StableDiffusion.from_single_file(tmp_path / "evil.ckpt", "tiny")
    assert "system" in str(err.value)
    assert not marker.exists()


def test_checkpoint_of_another_architecture(tmp_path):
    path = saved()["safetensors"]
    # the tiny weights against SD 1.5's architecture: every shape differs
    with pytest.raises(CheckpointError, match=r"with another shape.*expects") as err:
        load_single_file(path)
    assert len(err.value.mismatched) > 100
    # fewer residual blocks per level: missing and unexpected keys are listed by name
    fewer = tiny().replace(unet=tiny().unet.__class__(**{**tiny().unet.__dict__, "num_res_blocks": 1}))
    with pytest.raises(CheckpointError, match=r"missing: .*unexpected: ") as err:
        load_single_file(path, fewer)
    assert "model.diffusion_model.input_blocks.2.0.in_layers.0.weight" in err.value.unexpected
    assert "model.diffusion_model.input_blocks.2.0.op.weight" in err.value.missing
    # an SDXL-style file: keys of no SD 1.x component
    sdxl = {"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": torch.zeros(3)}
    save_file({**compvis_state_dict(reference_models()), **sdxl}, tmp_path / "xl.safetensors")
    with pytest.raises(CheckpointError, match="conditioner.embedders"):
        load_single_file(tmp_path / "xl.safetensors", "tiny")
    # a checkpoint with only a UNet lists the missing VAE and text encoder keys
    unet_only = {k: v for k, v in compvis_state_dict(reference_models()).items() if k.startswith("model.")}
    save_file(unet_only, tmp_path / "unet.safetensors")
    with pytest.raises(CheckpointError, match=r"vae.*missing: .*first_stage_model\.decoder\.conv_in\.weight"):
        load_single_file(tmp_path / "unet.safetensors", "tiny")


def test_not_a_checkpoint(tmp_path):
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        StableDiffusion.from_single_file(empty)
    torch.save([1, 2, 3], tmp_path / "list.ckpt")
    with pytest.raises(CheckpointError, match="no state dict"):
        StableDiffusion.from_single_file(tmp_path / "list.ckpt")
    save_file({"foo.weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="not an SD 1.x checkpoint.*foo.weight"):
        StableDiffusion.from_single_file(tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="from_diffusers"):
        StableDiffusion.from_single_file(saved()["diffusers"])
    with pytest.raises(CheckpointError, match="config.json"):
        load_diffusers(tmp_path)
