"""The training side of a Gaussian diffusion model: draw t and noise, noise the data, regress a target.

Used unchanged for pixel-space and latent-space models (the data is just a tensor ``[B, C, H, W]``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from diffusionlab.diffusion.schedule import NoiseSchedule, canonical_prediction

Net = Callable[[Tensor, Tensor, Tensor | None], Tensor]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf (the message gives the step)."""


class GaussianDiffusion:
    """A noise schedule plus what the network predicts and how the loss is weighted.

    Args:
        schedule: a :class:`NoiseSchedule` or its name (``linear``, ``cosine``, ``scaled_linear``, ``sigmoid``).
        num_timesteps: training timesteps T (used when ``schedule`` is a name).
        prediction: network output type: ``eps``, ``x0`` or ``v``.
        min_snr_gamma: if set, weight the loss by min-SNR-gamma (Hang et al. 2023), expressed for the
            chosen target so that every target optimises the same weighted x0-error.
        cond_drop_prob: probability of replacing a label by the null class ``num_classes`` in training
            (classifier-free guidance; the seed paper's context mask uses 0.1).
        beta_start, beta_end: schedule end points (defaults per schedule, see ``NoiseSchedule.from_name``).
    """

    def __init__(
        self,
        schedule: NoiseSchedule | str = "linear",
        num_timesteps: int = 1000,
        prediction: str = "eps",
        min_snr_gamma: float | None = None,
        cond_drop_prob: float = 0.1,
        beta_start: float | None = None,
        beta_end: float | None = None,
    ):
        if isinstance(schedule, str):
            schedule = NoiseSchedule.from_name(schedule, num_timesteps, beta_start=beta_start, beta_end=beta_end)
        self.schedule = schedule
        self.prediction = canonical_prediction(prediction)
        if min_snr_gamma is not None and min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma must be positive or null, got {min_snr_gamma}")
        self.min_snr_gamma = min_snr_gamma
        if not 0.0 <= cond_drop_prob < 1.0:
            raise ValueError(f"cond_drop_prob must lie in [0, 1), got {cond_drop_prob}")
        self.cond_drop_prob = cond_drop_prob

    @property
    def num_timesteps(self) -> int:
        return self.schedule.num_timesteps

    def loss_weights(self, t: Tensor) -> Tensor:
        """Per-sample loss weights ``[B]`` (all ones without min-SNR)."""
        if self.min_snr_gamma is None:
            return torch.ones(len(t), dtype=torch.float64)
        snr = self.schedule.snr(t)
        clipped = torch.clamp(snr, max=self.min_snr_gamma)
        if self.prediction == "eps":
            return clipped / snr
        if self.prediction == "v":
            return clipped / (snr + 1)
        return clipped

    def drop_labels(
        self,
        y: Tensor | None,
        num_classes: int,
        generator: torch.Generator | None = None,
        shard: tuple[int, int] = (0, 1),
    ):
        """Replace each label by the null class ``num_classes`` with probability ``cond_drop_prob``
        (``shard``: see :meth:`training_loss`)."""
        if y is None or self.cond_drop_prob == 0:
            return y
        drop = _draw(torch.rand, y.shape, shard, device=y.device, generator=generator) < self.cond_drop_prob
        return torch.where(drop, torch.full_like(y, num_classes), y)

    def training_loss(
        self,
        net: Net,
        x0: Tensor,
        y: Tensor | None = None,
        num_classes: int | None = None,
        generator: torch.Generator | None = None,
        shard: tuple[int, int] = (0, 1),
        cond: Tensor | None = None,
    ) -> Tensor:
        """Mean (weighted) MSE between ``net(x_t, t, y)`` and the target; ``x0`` is ``[B, C, H, W]``.

        ``t`` is uniform on ``{0..T-1}``; labels are dropped for guidance when ``num_classes`` is given.
        ``cond``: a conditioning image ``[B, C', H, W]`` (super-resolution: the upsampled low-resolution input),
        passed as ``net(x_t, t, y, cond=cond)``; never dropped.
        ``shard=(rank, world)``: this batch is share ``rank`` of a global batch of ``B * world`` samples dealt
        out round-robin (sample ``j`` here is global sample ``rank + j * world``). The random draws are made for
        the whole global batch and this share is kept, so with one ``generator`` seed per global step every rank
        gets different noise and together they draw exactly what one process with the global batch would.
        """
        t = _draw(torch.randint, x0.shape[:1], shard, 0, self.num_timesteps, device=x0.device, generator=generator)
        noise = _draw(torch.randn, x0.shape, shard, device=x0.device, dtype=x0.dtype, generator=generator)
        x_t = self.schedule.q_sample(x0, t, noise)
        if y is not None and num_classes is not None:
            y = self.drop_labels(y, num_classes, generator, shard)
        out = net(x_t, t, y) if cond is None else net(x_t, t, y, cond=cond)
        target = self.schedule.target(x0, noise, t, self.prediction)
        per_sample = (out.float() - target.float()).pow(2).flatten(1).mean(1)
        w = self.loss_weights(t.cpu()).to(per_sample)
        return (w * per_sample).mean()

    def __repr__(self) -> str:
        return (
            f"GaussianDiffusion(schedule={self.schedule.name!r}, T={self.num_timesteps}, "
            f"prediction={self.prediction!r}, min_snr_gamma={self.min_snr_gamma})"
        )


def _draw(fn: Callable, shape: torch.Size, shard: tuple[int, int], *args, **kwargs) -> Tensor:
    """``fn(*args, global_shape, **kwargs)[rank::world]``: a random draw for the global batch, this rank's share."""
    rank, world = shard
    if not 0 <= rank < world:
        raise ValueError(f"shard must be (rank, world) with 0 <= rank < world, got {shard}")
    out = fn(*args, (shape[0] * world, *shape[1:]), **kwargs)
    return out if world == 1 else out[rank::world]
