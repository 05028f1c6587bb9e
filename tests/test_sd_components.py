"""SD components against the reference implementation: diffusers' UNet2DConditionModel and AutoencoderKL,
transformers' CLIPTextModel, with the same tiny random weights, loaded through our three loaders."""

from __future__ import annotations

import pytest
import torch

from diffusionlab.sd.checkpoint import load_component, load_diffusers, load_single_file
from diffusionlab.sd.config import AutoencoderConfig, tiny, vae_from_diffusers
from diffusionlab.sd.convert import convert_state_dict
from diffusionlab.sd.key_map import COMPVIS_PREFIX
from diffusionlab.sd.unet import UNet
from diffusionlab.sd.vae import AutoencoderKL, DiagonalGaussian
from tests.sd_tiny import compvis_state_dict, our_configs, reference_models, saved

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread (tests/conftest.py)

TOL = 1e-4
FORMATS = ("diffusers", "safetensors", "ckpt")


@pytest.fixture(scope="module", params=FORMATS)
def loaded(request):
    """Our modules loaded from one of the three on-disk formats of the reference weights."""
    paths = saved()
    if request.param == "diffusers":
        _, modules, tok = load_diffusers(paths["diffusers"])
        assert tok is not None
    else:
        cfgs = our_configs(reference_models())
        config = tiny().replace(**cfgs)
        _, modules = load_single_file(paths[request.param], config)
    return modules


def maxdiff(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()


def test_tiny_preset_is_the_reference_architecture():
    cfgs = our_configs(reference_models())
    assert tiny().unet == cfgs["unet"] and tiny().vae == cfgs["vae"] and tiny().text_encoder == cfgs["text_encoder"]


def test_text_encoder_matches_transformers(loaded):
    ref = reference_models()["text_encoder"]
    ids = torch.randint(0, 49408, (3, 77), generator=torch.Generator().manual_seed(1))
    ids[:, 0], ids[:, -1] = 49406, 49407
    with torch.no_grad():
        assert maxdiff(loaded["text_encoder"](ids), ref(ids).last_hidden_state) < TOL


def test_unet_matches_diffusers(loaded):
    ref = reference_models()["unet"]
    g = torch.Generator().manual_seed(2)
    # 8x8 (exact powers of two) and 5x7 latents (the up path must resize to the skip sizes)
    for h, w in ((8, 8), (5, 7)):
        z, ctx = torch.randn(2, 4, h, w, generator=g), torch.randn(2, 77, 32, generator=g)
        t = torch.tensor([1, 981])
        with torch.no_grad():
            ours = loaded["unet"](z, t, ctx)
            theirs = ref(z, t, encoder_hidden_states=ctx).sample
        assert ours.shape == (2, 4, h, w)
        assert theirs.abs().max() > 0.1  # not a degenerate comparison
        assert maxdiff(ours, theirs) < TOL


def test_vae_matches_diffusers(loaded):
    ref = reference_models()["vae"]
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 64, 48, generator=g) * 2 - 1
    z = torch.randn(2, 4, 8, 6, generator=g)
    with torch.no_grad():
        ours, theirs = loaded["vae"].encode(x), ref.encode(x).latent_dist
        assert maxdiff(ours.mean, theirs.mean) < TOL and maxdiff(ours.logvar, theirs.logvar) < TOL
        assert maxdiff(ours.kl(), theirs.kl()) < TOL * ours.kl().abs().max().item()
        assert maxdiff(loaded["vae"].decode(z), ref.decode(z).sample) < TOL


def test_compvis_layout_agrees_with_diffusers_converter():
    """Our original-layout names, read back by diffusers' own single-file converter, give diffusers' keys
    and tensors: an independent check of the CompVis side of the key patterns."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    models = reference_models()
    ckpt = compvis_state_dict(models)
    converted = {
        "unet": convert_ldm_unet_checkpoint(ckpt, dict(models["unet"].config)),
        "vae": convert_ldm_vae_checkpoint(ckpt, dict(models["vae"].config)),
        "text_encoder": {k.removeprefix("text_model."): v for k, v in convert_ldm_clip_checkpoint(ckpt).items()},
    }
    for name, model in models.items():
        expected = model.state_dict()
        assert set(converted[name]) == set(expected), name
        for k, v in expected.items():
            assert torch.equal(converted[name][k].reshape(v.shape), v), k


def test_old_diffusers_vae_attention_names_load():
    """Older diffusers files call the VAE attention query/key/value/proj_attn: they load the same."""
    ref = reference_models()["vae"]
    cfg = vae_from_diffusers(dict(ref.config))
    old = {
        k.replace("to_q", "query").replace("to_k", "key").replace("to_v", "value").replace("to_out.0", "proj_attn"): v
        for k, v in ref.state_dict().items()
    }
    assert any(".query." in k for k in old)
    vae = load_component("vae", cfg, old, {k: k for k in old}, "diffusers")
    z = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        assert maxdiff(vae.decode(z), ref.decode(z).sample) < TOL


def test_inpainting_unet_nine_channels():
    ref = reference_models(in_channels=9)["unet"]
    config = tiny(in_channels=9)
    _, modules = load_single_file(saved(9)["safetensors"], config)
    z, ctx = torch.randn(1, 9, 8, 8), torch.randn(1, 77, 32)
    with torch.no_grad():
        assert (
            maxdiff(modules["unet"](z, torch.tensor([500]), ctx), ref(z, 500, encoder_hidden_states=ctx).sample) < TOL
        )
    # the ordinary tiny config does not fit these weights: conv_in has 9 input channels
    with pytest.raises(ValueError, match=r"conv_in|input_blocks.0.0.weight"):
        load_single_file(saved(9)["safetensors"], tiny())


def test_small_grayscale_autoencoder_matches_diffusers():
    """The parameterised encoder/decoder at MNIST size: 1 channel, 28 px, no mid attention, f = 4."""
    from diffusers import AutoencoderKL as Reference

    torch.manual_seed(0)
    ref = Reference(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=2,
        norm_num_groups=8,
        mid_block_add_attention=False,
    ).eval()
    cfg = vae_from_diffusers(dict(ref.config))
    assert cfg == AutoencoderConfig(1, 1, 16, (1, 2, 2), 1, 2, False, 8, ref.config.scaling_factor)
    ours = AutoencoderKL(cfg).eval()
    sd, unexpected = convert_state_dict(ref.state_dict(), "vae", cfg, "diffusers", "ours")
    assert not unexpected
    ours.load_state_dict(sd, strict=True)
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    with torch.no_grad():
        post = ours.encode(x)
        assert post.mean.shape == (3, 2, 7, 7)
        assert maxdiff(post.mean, ref.encode(x).latent_dist.mean) < TOL
        rec = ours.decode(post.mode())
        assert rec.shape == x.shape
        assert maxdiff(rec, ref.decode(post.mode()).sample) < TOL


def test_diagonal_gaussian():
    g = torch.Generator().manual_seed(0)
    moments = torch.randn(2, 8, 3, 3, generator=g)
    moments[:, 4:] = moments[:, 4:].clamp(-3, 3)
    dist = DiagonalGaussian(moments)
    mean, logvar = moments[:, :4], moments[:, 4:]
    assert torch.equal(dist.mode(), mean)
    expected_kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3))
    assert torch.allclose(dist.kl(), expected_kl, atol=1e-5)
    # a sample is mean + std * eps with eps drawn from the generator (reproducible, device independent)
    s1 = dist.sample(torch.Generator().manual_seed(5))
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(s1, mean + (0.5 * logvar).exp() * eps, atol=1e-6)
    # the clamp keeps exp(logvar) finite
    assert torch.isfinite(DiagonalGaussian(torch.full((1, 2, 1, 1), 1e4)).var).all()


def test_unet_rejects_wrong_input_channels():
    unet = UNet(tiny().unet)
    with pytest.raises(ValueError, match=r"\[B, 4, h, w\]"):
        unet(torch.zeros(1, 3, 8, 8), torch.tensor([1]), torch.zeros(1, 77, 32))


def test_compvis_prefixes():
    keys = compvis_state_dict(reference_models()).keys()
    for prefix in COMPVIS_PREFIX.values():
        assert any(k.startswith(prefix) for k in keys)
    assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in keys
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "first_stage_model.encoder.mid.attn_1.q.weight" in keys
