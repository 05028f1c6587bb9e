"""Latent diffusion through the real entry points on real MNIST: train the autoencoder (PSNR asserted), train a
tiny class-conditional latent model on cached latents (second run encodes nothing), sample and decode."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from diffusionlab.cli.runs import load_run
from diffusionlab.cli.sample import sample
from diffusionlab.cli.train import train
from diffusionlab.nets.autoencoder import load_autoencoder, read_metadata
from diffusionlab.nets.vae import AutoencoderKL
from tests.helpers import compose_cfg

# After 120 steps (batch 32, MSE loss, lr 3e-3; ~1 min on one shared CPU core) the small autoencoder
# reconstructs 512 MNIST test images at 22.5 dB PSNR / 0.73 SSIM (seeded run); an all-black image scores
# ~11 dB. Asserted with margin:
PSNR_THRESHOLD = 18.0
SSIM_THRESHOLD = 0.6


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread (tests/conftest.py)


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("ae") / "run"
    overrides = [
        "experiment=mnist_autoencoder",
        f"paths.data_dir={data_dir}",
        "logger=csv",
        "data.train_subset=1024",
        "data.val_size=256",
        "data.test_subset=512",
        "data.batch_size=32",
        "trainer.max_steps=120",
        "trainer.max_epochs=10",
        "trainer.limit_val_batches=1",
        "model.ch=16",
        "model.mid_attention=false",
        "module.rec_loss=mse",
        "module.optimizer.lr=3e-3",
        "module.scheduler.warmup_steps=10",
        "callbacks.export_autoencoder.scale_batches=8",
    ]
    torch.manual_seed(0)
    metrics = train(compose_cfg("train.yaml", overrides, out))
    return out, metrics


def ldm_overrides(data_dir, cache, ae, *extra):
    return [
        "experiment=mnist_ldm",
        f"autoencoder.ckpt={ae}",
        f"paths.data_dir={data_dir}",
        f"paths.cache_dir={cache}",
        "logger=csv",
        "data.train_subset=256",
        "data.val_size=64",
        "data.batch_size=32",
        "trainer.max_epochs=2",
        "trainer.limit_val_batches=1",
        "model.base_channels=16",
        "callbacks.sample_grid.per_class=1",
        "callbacks.sample_grid.steps=3",
        *extra,
    ]


def test_autoencoder_reconstructs_mnist_test_images(ae_run, data_dir):
    run, metrics = ae_run
    print("autoencoder test metrics:", metrics)
    assert metrics["test/psnr"] > PSNR_THRESHOLD, metrics
    assert metrics["test/ssim"] > SSIM_THRESHOLD, metrics
    from diffusionlab.data.datamodule import ImageDataModule

    dm = ImageDataModule("mnist", str(data_dir), image_size=32, test_subset=512)
    dm.setup("test")
    x = (dm.test_set.images.float() / 255).clamp(0, 1)
    blank = -10 * torch.log10(x.pow(2).flatten(1).mean(1)).mean().item()  # PSNR of an all-black reconstruction
    assert metrics["test/psnr"] > blank + 6, (metrics["test/psnr"], blank)
    saved = json.loads((run / "reconstruction_metrics.json").read_text())
    assert saved["psnr"] == pytest.approx(metrics["test/psnr"], rel=1e-5) and saved["global_step"] == 120
    assert sorted((run / "reconstructions").glob("epoch_*.png")), "no reconstruction grid written"


def test_autoencoder_file_carries_the_measured_scale_factor(ae_run, data_dir):
    """The stored factor makes the training latents unit-variance (measured here on other images)."""
    run, _ = ae_run
    path = run / "checkpoints" / "autoencoder.safetensors"
    meta = read_metadata(path)
    ae = load_autoencoder(run)
    assert float(meta["scale_factor"]) == ae.scale_factor != 1.0
    assert meta["global_step"] == "120"
    from diffusionlab.data.datamodule import ImageDataModule

    dm = ImageDataModule("mnist", str(data_dir), image_size=32, val_size=0, train_subset=2048)
    dm.setup("fit")
    x = torch.stack([dm.train_set[i][0] for i in range(1024, 1536)])
    with torch.no_grad():
        z = ae.encode(x).sample() * ae.scale_factor
    assert 0.85 < z.std().item() < 1.15, z.std().item()


def test_latent_model_trains_on_cached_latents_and_samples_decode(ae_run, data_dir, tmp_path, monkeypatch):
    ae_dir, _ = ae_run
    cache = tmp_path / "cache"
    calls = [0]
    encode = AutoencoderKL.encode

    def counting(self, x):
        calls[0] += len(x)
        return encode(self, x)

    monkeypatch.setattr(AutoencoderKL, "encode", counting)
    first = tmp_path / "ldm1"
    metrics = train(compose_cfg("train.yaml", ldm_overrides(data_dir, cache, ae_dir), first))
    assert calls[0] == 256 + 64, "the first run encodes train and val once"
    assert torch.isfinite(torch.tensor(metrics["val/loss"]))
    calls[0] = 0
    train(compose_cfg("train.yaml", ldm_overrides(data_dir, cache, ae_dir, "trainer.max_steps=3"), tmp_path / "ldm2"))
    assert calls[0] == 0, "the second run encoded images instead of reading the cache"
    monkeypatch.undo()

    ck = first / "checkpoints"
    assert (ck / "ema.safetensors").is_file() and (ck / "autoencoder.safetensors").is_file()
    assert sorted((first / "samples").glob("*.png")), "no sample grid"
    run = load_run(first)
    assert run.sample_shape == (4, 8, 8) and run.decode is not None
    cfg = compose_cfg("sample.yaml", [f"ckpt={first}", "n=6", "steps=3", "class=[3,7]", "gif=true"], tmp_path / "s")
    grid = Image.open(sample(cfg))
    assert grid.mode == "L" and grid.size[0] > 2 * 32  # decoded 32x32 images, not 8x8 latents

    # the run folder alone is enough: its own copy of the autoencoder is used when the original is gone
    moved = tmp_path / "ldm_moved"
    shutil.copytree(first, moved)
    conf = OmegaConf.load(moved / "checkpoints" / "config.yaml")
    conf.autoencoder.ckpt = str(tmp_path / "deleted")
    OmegaConf.save(conf, moved / "checkpoints" / "config.yaml")
    run = load_run(moved)
    from diffusionlab.pipelines import generate

    images, _ = generate(run.net, run.diffusion, run.sample_shape, labels=torch.arange(4), steps=3,
                         decode=run.decode, progress=False)  # fmt: skip
    assert images.shape == (4, 1, 32, 32) and images.min() >= -1 and images.max() <= 1
    assert images.std() > 0.05


def test_reconstruction_fid_on_the_test_split(ae_run, data_dir, shared_dir, tmp_path):
    """test/rfid through the metrics package's Inception: lower for the trained autoencoder than for an
    untrained one (12 images each: a biased FID, but the order holds; ~25 s of Inception on one core)."""
    import lightning as L

    from diffusionlab.data.datamodule import ImageDataModule
    from diffusionlab.lit.autoencoder_module import AutoencoderModule
    from diffusionlab.nets.autoencoder import kl_autoencoder

    weights = shared_dir / "weights" / "inception-2015-12-05-pool3.torchscript.pt"

    def rfid(net, name):
        module = AutoencoderModule(net, optimizer=torch.optim.Adam, fid_inception=str(weights))
        dm = ImageDataModule("mnist", str(data_dir), image_size=32, test_subset=12, batch_size=12)
        out = tmp_path / name
        trainer = L.Trainer(accelerator="cpu", logger=False, default_root_dir=out, enable_progress_bar=False)
        logged = trainer.test(module, datamodule=dm, verbose=False)[0]
        saved = json.loads((out / "reconstruction_metrics.json").read_text())
        assert saved["rfid"] == pytest.approx(logged["test/rfid"]) and saved["rfid_n"] == 12
        return saved["rfid"]

    torch.manual_seed(0)
    trained, untrained = rfid(load_autoencoder(ae_run[0]), "trained"), rfid(kl_autoencoder(ch=16), "untrained")
    print("rFID (12 images): trained", trained, "untrained", untrained)
    assert 0 < trained < untrained
