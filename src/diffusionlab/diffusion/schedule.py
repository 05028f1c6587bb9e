"""Noise schedules and the closed-form Gaussian forward/posterior process (DDPM, Ho et al. 2020).

All tables are float64 tensors of length ``num_timesteps`` indexed by integer timestep ``t`` in
``[0, num_timesteps)``. Values gathered for a batch are cast to the dtype of the tensor they act on
and broadcast as ``[B, 1, 1, 1]`` (or to whatever rank the data tensor has).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SCHEDULE_NAMES = ("linear", "scaled_linear", "cosine", "sigmoid")

# Canonical prediction names and the aliases we accept (diffusers' spellings included).
_PREDICTION_ALIASES = {
    "eps": "eps",
    "epsilon": "eps",
    "x0": "x0",
    "sample": "x0",
    "v": "v",
    "v_prediction": "v",
}
PREDICTION_TYPES = ("eps", "x0", "v")


def canonical_prediction(name: str) -> str:
    """Map a prediction-type name (``eps``/``epsilon``, ``x0``/``sample``, ``v``/``v_prediction``) to
    ``eps``, ``x0`` or ``v``; raise ``ValueError`` naming the valid choices otherwise."""
    try:
        return _PREDICTION_ALIASES[str(name)]
    except KeyError:
        raise ValueError(
            f"unknown prediction type {name!r}; valid choices: {', '.join(PREDICTION_TYPES)} "
            "(aliases: epsilon, sample, v_prediction)"
        ) from None


def split_prediction(x_t: Tensor, alpha, sigma, model_out: Tensor, prediction: str) -> tuple[Tensor, Tensor]:
    """``(x0, eps)`` implied by a model output of type ``prediction`` at ``x_t = alpha x0 + sigma eps``.

    ``alpha`` and ``sigma`` are python floats or tensors broadcastable to ``x_t`` (``alpha^2 + sigma^2 = 1``);
    both are computed from the raw output (v: ``x0 = alpha x_t - sigma v``, ``eps = sigma x_t + alpha v``).
    """
    prediction = canonical_prediction(prediction)
    if prediction == "eps":
        return (x_t - sigma * model_out) / alpha, model_out
    if prediction == "x0":
        return model_out, (x_t - alpha * model_out) / sigma
    return alpha * x_t - sigma * model_out, sigma * x_t + alpha * model_out


def _betas_for_cosine(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal (2021) eq. 17: alpha_bar(t) = cos^2((t/T + s) / (1 + s) * pi/2), betas clipped."""

    def alpha_bar(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    betas = [
        min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
        for i in range(num_timesteps)
    ]
    return torch.tensor(betas, dtype=torch.float64)


def _betas_for_sigmoid(num_timesteps: int, beta_start: float, beta_end: float) -> Tensor:
    """Sigmoid-shaped betas between ``beta_start`` and ``beta_end`` (GeoDiff / Jabri et al.)."""
    x = torch.linspace(-6, 6, num_timesteps, dtype=torch.float64)
    return torch.sigmoid(x) * (beta_end - beta_start) + beta_start


def _end_points(name: str, beta_start, beta_end, default_start: float, default_end: float) -> tuple[float, float]:
    """``(beta_start, beta_end)`` with the schedule's defaults for None; ``ValueError`` unless
    ``0 < beta_start <= beta_end < 1``."""
    lo = default_start if beta_start is None else beta_start
    hi = default_end if beta_end is None else beta_end
    for what, v in (("beta_start", lo), ("beta_end", hi)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
            raise ValueError(f"{name} schedule: {what} must be a number in (0, 1), got {v!r}")
    if lo > hi:
        raise ValueError(f"{name} schedule: beta_start {lo!r} is above beta_end {hi!r}; betas grow with t")
    return float(lo), float(hi)


class NoiseSchedule:
    """A discrete variance-preserving noise schedule with closed forms.

    ``q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)`` where ``abar_t = prod_{s<=t} (1 - beta_s)``.
    """

    def __init__(self, betas: Tensor, name: str = "custom"):
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or len(betas) == 0:
            raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
        outside = ~((betas > 0) & (betas < 1))
        if bool(outside.any()):
            i = int(outside.nonzero()[0])
            raise ValueError(
                f"every beta must lie in (0, 1); {int(outside.sum())} do not, "
                f"the first betas[{i}] = {betas[i].item()!r}"
            )
        self.name = name
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        # Posterior q(x_{t-1} | x_t, x_0) (DDPM eqs. 6-7): mean = c0 * x0 + ct * x_t.
        self.posterior_variance = betas * (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)
        # log variance clipped at t=0 (where it is 0) by using the t=1 value, as in the DDPM code.
        pv = self.posterior_variance.clone()
        if len(pv) > 1:
            pv[0] = pv[1]
        self.posterior_log_variance_clipped = torch.log(pv)
        self.posterior_mean_coef_x0 = betas * torch.sqrt(self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)
        self.posterior_mean_coef_xt = (
            (1 - self.alphas_cumprod_prev) * torch.sqrt(self.alphas) / (1 - self.alphas_cumprod)
        )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_name(
        cls,
        name: str,
        num_timesteps: int = 1000,
        beta_start: float | None = None,
        beta_end: float | None = None,
        cosine_s: float = 0.008,
        max_beta: float = 0.999,
    ) -> NoiseSchedule:
        """Build a named schedule.

        - ``linear``: DDPM, betas linear in ``[beta_start, beta_end]`` (default 1e-4..0.02).
        - ``scaled_linear``: Stable Diffusion, linear in sqrt-space (default 0.00085..0.012).
        - ``cosine``: Nichol & Dhariwal (diffusers' ``squaredcos_cap_v2``), ``s=0.008``, betas <= 0.999.
        - ``sigmoid``: sigmoid-shaped betas (default 1e-4..0.02).
        """
        if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 1:
            raise ValueError(f"num_timesteps must be a positive integer, got {num_timesteps!r}")
        if name in ("linear", "sigmoid"):
            lo, hi = _end_points(name, beta_start, beta_end, 1e-4, 0.02)
        elif name == "scaled_linear":
            lo, hi = _end_points(name, beta_start, beta_end, 0.00085, 0.012)
        elif name == "cosine" and not (cosine_s > 0 and 0 < max_beta < 1):
            raise ValueError(f"cosine needs cosine_s > 0 and max_beta in (0, 1), got {cosine_s!r} and {max_beta!r}")
        if name == "linear":
            # float32 linspace then float64, exactly as diffusers does, so the tables agree to the bit.
            betas = torch.linspace(lo, hi, num_timesteps, dtype=torch.float32).double()
        elif name == "scaled_linear":
            betas = (torch.linspace(lo**0.5, hi**0.5, num_timesteps, dtype=torch.float32) ** 2).double()
        elif name == "cosine":
            betas = _betas_for_cosine(num_timesteps, s=cosine_s, max_beta=max_beta)
        elif name == "sigmoid":
            betas = _betas_for_sigmoid(num_timesteps, lo, hi)
        else:
            raise ValueError(f"unknown noise schedule {name!r}; valid choices: {', '.join(SCHEDULE_NAMES)}")
        return cls(betas, name=name)

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def gather(table: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """``table[t]`` as ``like.dtype`` on ``like.device``, shaped ``[B, 1, ..., 1]`` to broadcast."""
        t = torch.as_tensor(t, device=table.device).long()
        if t.ndim == 0:
            t = t.expand(like.shape[0])
        out = table[t.cpu()].to(device=like.device, dtype=like.dtype)
        return out.reshape(-1, *([1] * (like.ndim - 1)))

    def sqrt_alphas_cumprod(self, t: Tensor, like: Tensor) -> Tensor:
        return self.gather(self.alphas_cumprod.sqrt(), t, like)

    def sqrt_one_minus_alphas_cumprod(self, t: Tensor, like: Tensor) -> Tensor:
        return self.gather((1 - self.alphas_cumprod).sqrt(), t, like)

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio ``abar_t / (1 - abar_t)`` for integer timesteps ``t`` (float64)."""
        ac = self.alphas_cumprod[torch.as_tensor(t).long().cpu()]
        return ac / (1 - ac)

    @property
    def sigmas(self) -> Tensor:
        """Variance-exploding noise levels ``sqrt((1 - abar_t) / abar_t)`` per timestep (float64)."""
        return ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()

    # ------------------------------------------------------------------ forward process
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Closed-form forward process (DDPM eq. 4): ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``."""
        return self.sqrt_alphas_cumprod(t, x0) * x0 + self.sqrt_one_minus_alphas_cumprod(t, x0) * noise

    def velocity(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """v-target (Salimans & Ho 2022): ``v = sqrt(abar_t) noise - sqrt(1 - abar_t) x0``."""
        return self.sqrt_alphas_cumprod(t, x0) * noise - self.sqrt_one_minus_alphas_cumprod(t, x0) * x0

    def target(self, x0: Tensor, noise: Tensor, t: Tensor, prediction: str) -> Tensor:
        """The regression target of a network trained to predict ``prediction`` (eps, x0 or v)."""
        prediction = canonical_prediction(prediction)
        if prediction == "eps":
            return noise
        if prediction == "x0":
            return x0
        return self.velocity(x0, noise, t)

    # ------------------------------------------------------------------ conversions
    def predict_x0(self, x_t: Tensor, t: Tensor, model_out: Tensor, prediction: str) -> Tensor:
        """x0 implied by a model output of type ``prediction`` at ``(x_t, t)``."""
        a, s = self.sqrt_alphas_cumprod(t, x_t), self.sqrt_one_minus_alphas_cumprod(t, x_t)
        return split_prediction(x_t, a, s, model_out, prediction)[0]

    def predict_eps(self, x_t: Tensor, t: Tensor, model_out: Tensor, prediction: str) -> Tensor:
        """eps implied by a model output of type ``prediction`` at ``(x_t, t)``."""
        a, s = self.sqrt_alphas_cumprod(t, x_t), self.sqrt_one_minus_alphas_cumprod(t, x_t)
        return split_prediction(x_t, a, s, model_out, prediction)[1]

    # ------------------------------------------------------------------ posterior
    def posterior_mean_variance(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Posterior ``q(x_{t-1} | x_t, x_0)`` (DDPM eqs. 6-7; the seed paper's eqs. 13-14).

        Returns ``(mean, variance, log_variance_clipped)``, each broadcastable to ``x_t``.
        """
        mean = (
            self.gather(self.posterior_mean_coef_x0, t, x_t) * x0
            + self.gather(self.posterior_mean_coef_xt, t, x_t) * x_t
        )
        var = self.gather(self.posterior_variance, t, x_t)
        log_var = self.gather(self.posterior_log_variance_clipped, t, x_t)
        return mean, var, log_var

    def __repr__(self) -> str:
        return f"NoiseSchedule(name={self.name!r}, num_timesteps={self.num_timesteps})"
