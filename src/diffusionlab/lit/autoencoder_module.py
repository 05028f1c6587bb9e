"""LightningModule training a KL autoencoder (the first stage of latent diffusion), and its export callback.

Loss per image: ``rec(x_hat, x) + kl_weight * KL(q(z|x) || N(0, I))``, both per pixel (the LDM weighting:
``kl_weight = 1e-6`` relative to an L1 sum over pixels). No adversarial or perceptual term.
Logs ``train/loss``, ``val/rec_loss``, ``val/psnr``, a reconstruction grid per validation epoch and, on the
test split, ``test/psnr`` / ``test/ssim`` (torchmetrics; images mapped to [0, 1], mean over images) and, when
``fid_inception`` is given, ``test/rfid``: the FID between the test images and their reconstructions (both as
8-bit images, same size; biased upwards at small n).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from torch.utils.data import DataLoader
from torchmetrics.aggregation import MeanMetric
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from diffusionlab.data.samplers import global_batch_index
from diffusionlab.lit.callbacks import log_image
from diffusionlab.lit.diffusion_module import DiffusionModule
from diffusionlab.metrics import distributed, extract_features, load_inception, quantize, scores
from diffusionlab.nets.autoencoder import AUTOENCODER_FILENAME, measure_scale_factor, save_autoencoder, set_scale_factor
from diffusionlab.nets.vae import AutoencoderKL
from diffusionlab.utils.images import labelled_grid
from diffusionlab.utils.io import atomic_path, atomic_write_json

log = logging.getLogger("diffusionlab.autoencoder")

REC_LOSSES = {"l1": F.l1_loss, "mse": F.mse_loss}
METRICS_FILENAME = "reconstruction_metrics.json"


class AutoencoderModule(LightningModule):
    """Trains ``net`` (an ``AutoencoderKL``) on batches ``(x [B, C, H, W] in [-1, 1], y)``.

    Args:
        net: the autoencoder (``diffusionlab.nets.autoencoder.kl_autoencoder``).
        optimizer / scheduler: ``partial`` factories as in :class:`DiffusionModule`.
        rec_loss: ``l1`` or ``mse`` on pixels.
        kl_weight: weight of the per-pixel KL term.
        num_recon: images in the logged reconstruction grid (first validation batch).
        val_seed: seeds the posterior samples of the validation loss.
        fid_inception: path of the FID Inception (TorchScript, see :func:`diffusionlab.metrics.load_inception`)
            to also report the reconstruction FID on the test split (about 0.5 s per image on one CPU core).
    """

    def __init__(
        self,
        net: AutoencoderKL,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable | None = None,
        rec_loss: str = "l1",
        kl_weight: float = 1e-6,
        num_recon: int = 8,
        val_seed: int = 0,
        fid_inception: str | None = None,
    ):
        super().__init__()
        if rec_loss not in REC_LOSSES:
            raise ValueError(f"unknown rec_loss {rec_loss!r}; valid choices: {', '.join(REC_LOSSES)}")
        if kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler"])
        self.net = net
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.rec_loss, self.kl_weight = REC_LOSSES[rec_loss], kl_weight
        self.num_recon, self.val_seed = num_recon, val_seed
        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))
        self.test_psnr = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))
        self.test_ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        self.val_means = torch.nn.ModuleDict({k: MeanMetric() for k in ("loss", "rec_loss", "kl")})
        self.test_rec_loss = MeanMetric()
        self._recon_batch: Tensor | None = None
        self.fid_inception = fid_inception
        self._fid_pairs: list[tuple[Tensor, Tensor]] = []

    def losses(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(total, reconstruction, kl)`` for a batch; the reconstruction uses a posterior sample."""
        x_hat, posterior = self.net(x, generator=generator)
        rec = self.rec_loss(x_hat, x)
        kl = posterior.kl().mean() / x[0].numel()
        return rec + self.kl_weight * kl, rec, kl

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Deterministic reconstructions (posterior mean) clamped to [-1, 1]."""
        return self.net.decode(self.net.encode(x).mode()).clamp(-1.0, 1.0)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x = batch[0]
        loss, rec, kl = self.losses(x)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(x))
        self.log_dict({"train/rec_loss": rec, "train/kl": kl}, on_step=True, on_epoch=False, batch_size=len(x))
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x = batch[0]
        index = global_batch_index(batch_idx, self._trainer)  # the same posterior draws as one process
        gen = torch.Generator(device="cpu").manual_seed(self.val_seed + index)
        loss, rec, kl = self.losses(x, generator=gen)
        x_hat = self.reconstruct(x)
        self.val_psnr(_unit(x_hat), _unit(x))
        for key, value in (("loss", loss), ("rec_loss", rec), ("kl", kl)):
            self.val_means[key].update(value, weight=len(x))  # summed over ranks at the epoch's end
            self.log(f"val/{key}", self.val_means[key], batch_size=len(x))
        self.log("val/psnr", self.val_psnr, prog_bar=True, batch_size=len(x))
        if index == 0:
            self._recon_batch = torch.cat([x[: self.num_recon], x_hat[: self.num_recon]]).cpu()

    def on_validation_epoch_end(self) -> None:
        if self._recon_batch is not None and not self.trainer.sanity_checking:
            self._save_recon_grid(self._recon_batch)
        self._recon_batch = None

    @rank_zero_only
    def _save_recon_grid(self, images: Tensor) -> None:
        trainer = self.trainer
        grid = labelled_grid(images, ["input", "recon"], nrow=len(images) // 2)
        path = Path(trainer.default_root_dir) / "reconstructions"
        path = path / f"epoch_{trainer.current_epoch:04d}_step_{trainer.global_step:07d}.png"
        with atomic_path(path) as tmp:
            grid.save(tmp, format="PNG")
        log_image(trainer, "reconstructions", grid, trainer.global_step)

    def test_step(self, batch, batch_idx: int) -> None:
        x = batch[0]
        recon = self.reconstruct(x)
        x_hat, x01 = _unit(recon), _unit(x)
        self.test_psnr(x_hat, x01)
        self.test_ssim(x_hat, x01)
        self.test_rec_loss.update(self.rec_loss(recon, x), weight=len(x))
        self.log("test/rec_loss", self.test_rec_loss, batch_size=len(x))
        self.log_dict({"test/psnr": self.test_psnr, "test/ssim": self.test_ssim}, batch_size=len(x))
        if self.fid_inception:
            self._fid_pairs.append((quantize(x), quantize(recon)))

    def on_test_epoch_end(self) -> None:
        metrics = {
            "psnr": float(self.test_psnr.compute()),
            "ssim": float(self.test_ssim.compute()),
            "scale_factor": float(self.net.scale_factor),
            "global_step": int(self.global_step),
        }
        if self._fid_pairs:
            real, fake = (distributed.gather_cat(torch.cat(t)) for t in zip(*self._fid_pairs))
            self._fid_pairs = []
            metrics["rfid"] = reconstruction_fid(real, fake, load_inception(self.fid_inception, self.device))
            metrics["rfid_n"] = len(real)
            self.log("test/rfid", metrics["rfid"])
        self._write_metrics(metrics)

    @rank_zero_only
    def _write_metrics(self, metrics: dict) -> None:
        path = atomic_write_json(Path(self.trainer.default_root_dir) / METRICS_FILENAME, metrics)
        log.info("test reconstructions: PSNR %.2f dB, SSIM %.4f (%s)", metrics["psnr"], metrics["ssim"], path)

    def configure_optimizers(self):
        # Same optimizer / warm-up scheduler wiring as the diffusion module (over ``self.net``).
        return DiffusionModule.configure_optimizers(self)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        DiffusionModule.configure_gradient_clipping(self, optimizer, gradient_clip_val, gradient_clip_algorithm)


def reconstruction_fid(real: Tensor, fake: Tensor, extractor) -> float:
    """FID between uint8 images ``real`` and ``fake`` (``[N, C, H, W]``) in ``extractor``'s feature space."""
    feats = [extract_features([images], {"f": extractor}, progress=False)[0]["f"].features for images in (real, fake)]
    return scores.fid(*feats)


def _unit(x: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1]."""
    return (x + 1) / 2


class ExportAutoencoderCallback(Callback):
    """Whenever a checkpoint is saved (and at the end of fit), measure the latent scale factor
    (1 / std of posterior samples of ``scale_batches`` training batches, fixed order) and write
    ``<dirpath>/autoencoder.safetensors`` (rank 0, atomically) with it in the metadata."""

    def __init__(self, dirpath: str, scale_batches: int = 20, seed: int = 0):
        if scale_batches < 1:
            raise ValueError(f"scale_batches must be >= 1, got {scale_batches}")
        self.dirpath, self.scale_batches, self.seed = Path(dirpath), scale_batches, seed
        self.last_scale_factor: float | None = None

    def _batches(self, trainer: Trainer):
        dataset = trainer.datamodule.train_dataloader().dataset
        gen = torch.Generator().manual_seed(self.seed)
        loader = DataLoader(dataset, batch_size=trainer.datamodule.batch_size, shuffle=True, generator=gen)
        for i, (x, _) in enumerate(loader):
            if i >= self.scale_batches:
                break
            yield x

    @rank_zero_only
    def export(self, trainer: Trainer, pl_module: AutoencoderModule) -> Path:
        was_training = pl_module.net.training
        pl_module.net.eval()
        with torch.random.fork_rng(devices=[]):  # do not disturb the training RNG stream
            torch.manual_seed(self.seed)
            scale = measure_scale_factor(pl_module.net, self._batches(trainer))
        pl_module.net.train(was_training)
        set_scale_factor(pl_module.net, scale)
        self.last_scale_factor = scale
        meta = {"global_step": trainer.global_step}
        path = save_autoencoder(pl_module.net, self.dirpath / AUTOENCODER_FILENAME, meta)
        log.info("latent scale factor %.5f (1 / std of training latents); wrote %s", scale, path)
        return path

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        self.export(trainer, pl_module)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.export(trainer, pl_module)
