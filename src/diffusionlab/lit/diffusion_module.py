"""LightningModule wrapping a denoising network and a :class:`GaussianDiffusion` (pixel or latent space)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from lightning import LightningModule
from lightning.pytorch.strategies import FSDPStrategy
from torch import Tensor, nn
from torchmetrics.aggregation import MeanMetric

from diffusionlab.data.samplers import global_batch_index
from diffusionlab.diffusion.gaussian import GaussianDiffusion, NonFiniteLossError
from diffusionlab.lit.ema import EMA
from diffusionlab.lit.lr_schedules import max_time_used, warmup_cosine
from diffusionlab.lit.optim import clip_gradients, make_optimizer
from diffusionlab.pipelines import PRECISIONS, default_sampler_opts, generate
from diffusionlab.utils import faults
from diffusionlab.utils.checkpoints import check_state_dict_shapes


class DiffusionModule(LightningModule):
    """Trains ``net`` to denoise with ``diffusion``; keeps an EMA copy used for sampling and export.

    Batches are ``(x [B, C, H, W], y [B])`` with ``x`` in the model's data space (pixels in [-1, 1], or
    latents). Subclasses change :meth:`encode_batch` / :meth:`decode` for latent diffusion and
    :meth:`condition` for image-conditioned models (super-resolution).

    Args:
        net: ``net(x_t, t, y) -> prediction``; ``net.num_classes`` set for class-conditional models.
        diffusion: schedule, prediction type and loss weighting.
        optimizer: ``partial`` of a ``torch.optim`` class (``_partial_: true`` in configs).
        scheduler: optional ``partial`` taking the optimizer (and ``total_steps`` if it accepts it).
        ema_decay, ema_warmup, ema_start_step: see :class:`EMA`.
        compile: ``torch.compile`` the training forward.
        channels_last: keep weights and batches in channels-last memory format (faster convs on CPU/GPU).
        val_seed: seeds the timesteps and noise of the validation loss, so epochs are comparable.
        noise_seed: seeds the training draws (timesteps, noise, label dropout). Each training batch gets its
            own generator seeded by ``(noise_seed, number of batches drawn so far)``; under DDP every rank draws
            for the global batch and keeps its share, so ranks differ and N processes draw exactly what one
            process with the global batch would. The counter travels in checkpoints (exact resume). ``None``:
            a random seed (chosen on rank 0 and broadcast).
    """

    latent = False  # True for modules that diffuse autoencoder latents (decode after sampling)

    def __init__(
        self,
        net: nn.Module,
        diffusion: GaussianDiffusion,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        ema_decay: float = 0.9999,
        ema_warmup: bool = True,
        ema_start_step: int = 0,
        compile: bool = False,
        channels_last: bool = False,
        val_seed: int = 0,
        noise_seed: int | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["net", "diffusion", "optimizer", "scheduler"])
        self.net = net
        self.diffusion = diffusion
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.channels_last = channels_last
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.ema = EMA(self.net, decay=ema_decay, warmup=ema_warmup, start_step=ema_start_step)
        self._train_net = torch.compile(self.net) if compile else self.net
        self.val_seed = val_seed
        self.val_losses = nn.ModuleDict({"loss": MeanMetric(), "loss_ema": MeanMetric()})
        self.noise_seed = noise_seed
        self._batches_drawn = 0
        self._noise_gen: torch.Generator | None = None

    # ------------------------------------------------------------------ data hooks
    @property
    def num_classes(self) -> int | None:
        return getattr(self.net, "num_classes", None)

    def encode_batch(self, x: Tensor) -> Tensor:
        """Map a batch from the dataloader to the diffusion space (identity for pixel models)."""
        return x

    def decode(self, z: Tensor) -> Tensor:
        """Map diffusion-space samples to images in [-1, 1] (identity for pixel models)."""
        return z

    def condition(self, x: Tensor) -> Tensor | None:
        """The conditioning image ``net(x_t, t, y, cond=...)`` gets for the training batch ``x`` (None: none)."""
        return None

    def _prepare(self, batch) -> tuple[Tensor, Tensor | None]:
        x, y = batch if isinstance(batch, (list, tuple)) else (batch, None)
        x = self.encode_batch(x)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, (y if self.num_classes is not None else None)

    # ------------------------------------------------------------------ training randomness
    def setup(self, stage: str) -> None:
        """Fix the training-noise seed (same on every rank) and give each rank its own global RNG stream
        (dropout and anything else that draws from ``torch``'s default generator)."""
        if stage != "fit":
            return
        if self.noise_seed is None:
            self.noise_seed = int(torch.randint(0, 2**23, ()))
        world = self.trainer.world_size
        if world > 1:
            self.noise_seed = int(self.trainer.strategy.broadcast(self.noise_seed, src=0))
            torch.manual_seed(torch.initial_seed() + self.global_rank)

    def _training_generator(self, device: torch.device) -> torch.Generator:
        """The generator of the next training batch, seeded by ``(noise_seed, batches drawn so far)``."""
        if self._noise_gen is None or self._noise_gen.device != device:
            self._noise_gen = torch.Generator(device=device)
        seed = ((int(self.noise_seed or 0) % 2**23) << 40) | (self._batches_drawn % 2**40)
        self._batches_drawn += 1
        return self._noise_gen.manual_seed(seed)

    def _shard(self) -> tuple[int, int]:
        trainer = self._trainer
        return (0, 1) if trainer is None else (trainer.global_rank, trainer.world_size)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch, batch_idx: int) -> Tensor:
        faults.fault_point("train_step", self.global_step)
        x, y = self._prepare(batch)
        loss = self.diffusion.training_loss(
            self._train_net,
            x,
            y,
            num_classes=self.num_classes,
            generator=self._training_generator(x.device),
            shard=self._shard(),
            cond=self.condition(x),
        )
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"training loss became {loss.item()} at global step {self.global_step} "
                f"(epoch {self.current_epoch}, batch {batch_idx}); stopping. The last good checkpoint is "
                "left in place: lower the learning rate or enable gradient clipping, then resume from it."
            )
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(x))
        return loss

    def optimizer_step(self, *args, **kwargs) -> None:
        """The optimizer step, then the EMA update, so a checkpoint saved after this step holds both."""
        super().optimizer_step(*args, **kwargs)
        self.ema.update(self.net, self.global_step)

    def validation_step(self, batch, batch_idx: int) -> None:
        """``val/loss`` and ``val/loss_ema`` on noise seeded by the batch's single-process position, averaged
        over all images of all ranks (:class:`MeanMetric` sums across ranks): the value one process gets."""
        faults.fault_point("validation", self.global_step)
        x, y = self._prepare(batch)
        seed = self.val_seed + global_batch_index(batch_idx, self._trainer)
        cond = self.condition(x)
        for key, net in (("loss", self.net), ("loss_ema", self.ema.shadow)):
            gen = torch.Generator(device=x.device).manual_seed(seed)
            loss = self.diffusion.training_loss(net, x, y, num_classes=self.num_classes, generator=gen, cond=cond)
            self.val_losses[key].update(loss, weight=len(x))
            self.log(f"val/{key}", self.val_losses[key], prog_bar=key == "loss", batch_size=len(x))

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        optimizer = make_optimizer(self.optimizer_factory, self.net.parameters(), self._trainer)
        if self.scheduler_factory is None:
            return optimizer
        factory, trainer = self.scheduler_factory, self.trainer
        if getattr(factory, "func", factory) is warmup_cosine:
            # the total is asked for at the first decay step: estimating it here would build the training loader
            # before a resumed checkpoint has restored the position in the epoch (it would restart the epoch)
            scheduler = factory(
                optimizer=optimizer,
                total_steps=lambda: trainer.estimated_stepping_batches,
                time_used=lambda: max_time_used(trainer),
            )
        else:
            try:
                scheduler = factory(optimizer=optimizer, total_steps=trainer.estimated_stepping_batches)
            except TypeError:
                scheduler = factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Lightning's clipping, also for the fused optimizer under ``bf16-mixed`` (:mod:`diffusionlab.lit.optim`)."""
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ------------------------------------------------------------------ resume: RNG state travels too
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["diffusionlab_rng"] = {
            "torch": torch.get_rng_state(),
            "noise_seed": self.noise_seed,
            "batches_drawn": self._batches_drawn,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore the training-noise position and rank 0's global RNG state (other ranks derive theirs from
        it, so a resumed multi-process run with dropout is not bit-identical to an uninterrupted one). Weights of
        other shapes (a resume that changed the network on purpose) stop with the list of them."""
        if self._trainer is None or not isinstance(self.trainer.strategy, FSDPStrategy):  # FSDP: flat shards
            check_state_dict_shapes(self.state_dict(), checkpoint.get("state_dict", {}), "the checkpoint")
        state = checkpoint.get("diffusionlab_rng")
        if state is None:
            return
        torch.set_rng_state(state["torch"])
        if self._trainer is not None and self.trainer.world_size > 1:
            torch.manual_seed(int(torch.randint(0, 2**62, ())) + self.global_rank)
        if state.get("noise_seed") is not None:
            self.noise_seed = state["noise_seed"]
            self._batches_drawn = int(state["batches_drawn"])

    # ------------------------------------------------------------------ inference
    def sample_shape(self, x_example: Tensor | None = None) -> tuple[int, int, int]:
        """``(C, H, W)`` of one sample in diffusion space, from the network's declared size."""
        net = self.net
        return (net.in_channels, net.image_size, net.image_size)

    def sampling_precision(self) -> str:
        """The trainer's precision if sampling supports it (``"bf16-mixed"``, ``"16-mixed"``), else ``"32"``."""
        name = str(self._trainer.precision) if self._trainer is not None else "32"
        return name if name in PRECISIONS else "32"

    @torch.no_grad()
    def sample(self, labels: Tensor | None = None, n: int | None = None, use_ema: bool = True, **kwargs):
        """Images in [-1, 1] from the EMA (default) or raw weights; kwargs go to :func:`generate`
        (``sampler_opts`` on top of :func:`default_sampler_opts`: x0 clamped for pixel models; by default the
        denoiser runs in the training precision and memory format: :meth:`sampling_precision`)."""
        net = self.ema.shadow if use_ema else self.net
        kwargs["sampler_opts"] = default_sampler_opts(self.latent, kwargs.get("sampler_opts"))
        kwargs.setdefault("precision", self.sampling_precision())
        kwargs.setdefault("channels_last", self.channels_last)
        images, trajectory = generate(
            net, self.diffusion, self.sample_shape(), labels=labels, n=n, decode=self.decode, **kwargs
        )
        return images, trajectory
