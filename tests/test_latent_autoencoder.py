"""The small KL autoencoder (SD VAE blocks), its file format and scale factor, the SD VAE switch (against
diffusers), and LatentDiffusionModule's data hooks (same diffusion code as pixel space)."""

from __future__ import annotations

import functools

import pytest
import torch
from safetensors.torch import save_file

from diffusionlab.diffusion import GaussianDiffusion
from diffusionlab.lit.diffusion_module import DiffusionModule
from diffusionlab.lit.latent_module import LatentDiffusionModule
from diffusionlab.nets import UNet
from diffusionlab.nets.autoencoder import (
    decode_latents,
    kl_autoencoder,
    latent_shape,
    load_autoencoder,
    measure_scale_factor,
    read_metadata,
    save_autoencoder,
    set_scale_factor,
)
from diffusionlab.nets.ldm_blocks import Downsample, ResnetBlock, Upsample
from diffusionlab.nets.vae import AutoencoderKL
from diffusionlab.sd.config import tiny
from diffusionlab.sd.vae import load_sd_vae
from diffusionlab.utils.checkpoints import CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread (tests/conftest.py)


def small_ae(seed=0, **kw):
    torch.manual_seed(seed)
    return kl_autoencoder(**{"in_channels": 1, "ch": 8, "norm_groups": 4, **kw}).eval()


@pytest.mark.parametrize(
    "size,factor,expected",
    [(32, 4, (4, 8, 8)), (28, 4, (4, 7, 7)), (32, 8, (4, 4, 4)), (32, 2, (4, 16, 16)), (32, 1, (4, 32, 32))],
)
def test_shapes_follow_the_downsampling_factor(size, factor, expected):
    ae = small_ae(factor=factor, mid_attention=factor > 1)
    assert latent_shape(ae, size) == expected
    x = torch.rand(2, 1, size, size) * 2 - 1
    with torch.no_grad():
        post = ae.encode(x)
        assert post.mean.shape == (2, *expected) and post.logvar.shape == (2, *expected)
        assert ae.decode(post.mean).shape == x.shape


def test_small_autoencoder_is_the_sd_vae_with_small_widths():
    ae = small_ae(ch=16, z_channels=3)
    assert type(ae) is AutoencoderKL and ae.config.ch_mult == (1, 2, 2) and ae.config.downsample_factor == 4
    kinds = {type(m) for m in ae.modules()}
    assert {ResnetBlock, Downsample, Upsample} <= kinds
    assert ae.config.z_channels == 3 and ae.config.in_channels == ae.config.out_channels == 1


def test_bad_architectures_are_rejected():
    with pytest.raises(ValueError, match="power of two"):
        kl_autoencoder(factor=3)
    with pytest.raises(ValueError, match="factor 4 needs 3"):
        kl_autoencoder(factor=4, ch_mult=[1, 2])
    with pytest.raises(ValueError, match="multiples of norm_groups=8"):
        kl_autoencoder(ch=12)
    with pytest.raises(ValueError, match="not a multiple of the autoencoder's downsampling factor 4"):
        latent_shape(small_ae(), 30)
    with pytest.raises(ValueError, match="positive finite"):
        set_scale_factor(small_ae(), 0.0)


def test_scale_factor_is_one_over_the_latent_std():
    ae = small_ae()
    batches = [torch.rand(8, 1, 32, 32) * 2 - 1 for _ in range(3)]
    with torch.no_grad():
        means = torch.cat([ae.encode(x).mean for x in batches])
    assert measure_scale_factor(ae, batches, sample=False) == pytest.approx(1 / means.std().item(), rel=1e-6)
    torch.manual_seed(1)
    s = measure_scale_factor(ae, batches, sample=True)
    torch.manual_seed(1)
    with torch.no_grad():
        samples = torch.cat([ae.encode(x).sample() for x in batches])
    assert s == pytest.approx(1 / samples.std().item(), rel=1e-6)


def test_save_and_load_keep_weights_architecture_and_scale_factor(tmp_path):
    ae = set_scale_factor(small_ae(ch=16, z_channels=3, factor=8, norm_groups=8), 0.731)
    path = save_autoencoder(ae, tmp_path / "run" / "checkpoints" / "autoencoder.safetensors", {"global_step": 5})
    for where in (path, tmp_path / "run", tmp_path / "run" / "checkpoints"):
        loaded = load_autoencoder(where)
        assert loaded.config == ae.config and loaded.scale_factor == 0.731
        assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert read_metadata(path)["global_step"] == "5"
    z = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        assert torch.equal(loaded.decode(z), ae.decode(z))
        expected = ae.decode(z / 0.731).clamp(-1, 1)
        assert torch.equal(decode_latents(loaded, z), expected)
        assert decode_latents(loaded, 50 * z).abs().max() <= 1.0
    assert load_autoencoder(path, scale_factor=0.5).scale_factor == 0.5


def test_damaged_or_foreign_files_give_clear_errors(tmp_path):
    path = save_autoencoder(small_ae(), tmp_path / "autoencoder.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "autoencoder.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_autoencoder(tmp_path / "cut")
    save_file({"w": torch.zeros(1)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="not a diffusionlab autoencoder.*load_sd_vae"):
        load_autoencoder(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError, match="experiment=mnist_autoencoder"):
        load_autoencoder(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------ the SD VAE switch
@functools.lru_cache(maxsize=1)
def _sd_files():
    from tests.sd_tiny import reference_models, saved

    return saved(), reference_models()["vae"]


@pytest.mark.parametrize("form", ["safetensors", "ckpt", "diffusers", "diffusers_vae"])
def test_sd_vae_loads_alone_and_matches_diffusers(form):
    files, ref = _sd_files()
    if form.startswith("diffusers"):
        path = files["diffusers"] / "vae" if form == "diffusers_vae" else files["diffusers"]
        ae = load_sd_vae(path)
    else:
        ae = load_sd_vae(files[form], config=tiny().vae)
    assert ae.scale_factor == pytest.approx(0.18215) and not ae.training
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        ours, theirs = ae.encode(x), ref.encode(x).latent_dist
        torch.testing.assert_close(ours.mean, theirs.mean, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours.std, theirs.std, atol=1e-4, rtol=1e-4)
        z = theirs.mean * 0.18215
        torch.testing.assert_close(decode_latents(ae, z), ref.decode(z / 0.18215).sample.clamp(-1, 1), atol=1e-4,
                                   rtol=1e-4)  # fmt: skip
    assert load_sd_vae(files["diffusers"], scale_factor=0.2).scale_factor == 0.2


def test_sd_vae_errors_name_the_problem(tmp_path):
    save_file({"model.diffusion_model.x": torch.zeros(1)}, tmp_path / "unet_only.safetensors")
    with pytest.raises(CheckpointError, match="no VAE weights"):
        load_sd_vae(tmp_path / "unet_only.safetensors")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_sd_vae(tmp_path / "missing.ckpt")
    with pytest.raises(FileNotFoundError, match="not a diffusers folder"):
        load_sd_vae(tmp_path)


# ------------------------------------------------------------------------------ LatentDiffusionModule
def _modules(scale=0.6, **kw):
    ae = set_scale_factor(small_ae(), scale)
    torch.manual_seed(1)
    net = UNet(in_channels=4, base_channels=16, channel_mult=(1, 2), attention_resolutions=(), num_classes=10,
               image_size=8, norm_groups=8)  # fmt: skip
    diffusion = GaussianDiffusion(num_timesteps=100)
    opt = functools.partial(torch.optim.AdamW, lr=1e-3)
    return LatentDiffusionModule(net, diffusion, ae, opt, **kw), DiffusionModule(net, diffusion, opt), ae


def test_latent_module_scales_cached_latents_and_uses_the_pixel_diffusion_code():
    latent, pixel, ae = _modules()
    z = torch.randn(4, 4, 8, 8)
    y = torch.tensor([1, 2, 3, 4])
    x, labels = latent._prepare((z, y))  # the parent's batch path, with this module's hook
    assert torch.equal(x, z * 0.6) and torch.equal(labels, y)
    assert torch.equal(pixel._prepare((z * 0.6, y))[0], x)
    assert latent.sample_shape() == (4, 8, 8)
    assert torch.equal(latent.decode(z), decode_latents(ae, z))
    opt = latent.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    trained = {id(p) for g in opt.param_groups for p in g["params"]}
    assert trained == {id(p) for p in latent.net.parameters()}, "the optimizer must not touch the autoencoder"
    latent.train()
    assert latent.net.training and not latent.autoencoder.training
    images, _ = latent.sample(labels=torch.tensor([0, 1]), steps=2, progress=False)
    assert images.shape == (2, 1, 32, 32) and images.abs().max() <= 1


def test_latent_module_can_encode_image_batches():
    latent, _, ae = _modules(encode_images=True, sample_posterior=False)
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        expected = ae.encode(x).mean * 0.6
    torch.testing.assert_close(latent.encode_batch(x), expected)
    with pytest.raises(ValueError, match="module.encode_images=true"):
        _modules()[0].encode_batch(x)


def test_latent_module_rejects_a_network_of_other_channels():
    ae = small_ae()
    net = UNet(in_channels=3, base_channels=16, channel_mult=(1,), attention_resolutions=(), image_size=8,
               norm_groups=8)  # fmt: skip
    with pytest.raises(ValueError, match="model.in_channels=4"):
        LatentDiffusionModule(net, GaussianDiffusion(num_timesteps=10), ae, torch.optim.AdamW)
