"""Noise schedules against diffusers' tables, the forward process, target conversions and the posterior."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler

from diffusionlab.diffusion import NoiseSchedule, canonical_prediction
from diffusionlab.diffusion.schedule import split_prediction

DIFFUSERS_NAMES = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "cosine"])
@pytest.mark.parametrize("num_timesteps", [1000, 400])
def test_tables_equal_diffusers(name, num_timesteps):
    ours = NoiseSchedule.from_name(name, num_timesteps)
    kw = {}
    if name == "linear":
        kw = dict(beta_start=1e-4, beta_end=0.02)
    elif name == "scaled_linear":
        kw = dict(beta_start=0.00085, beta_end=0.012)
    theirs = DDPMScheduler(num_train_timesteps=num_timesteps, beta_schedule=DIFFUSERS_NAMES[name], **kw)
    assert ours.betas.dtype == ours.alphas_cumprod.dtype == torch.float64
    # diffusers keeps float32 betas: ours round to exactly those
    assert torch.equal(ours.betas.float(), theirs.betas)
    # its float32 cumulative product agrees with our float64 one to float32 accuracy
    assert torch.allclose(ours.alphas_cumprod, theirs.alphas_cumprod.double(), rtol=2e-5, atol=0)
    if name != "cosine":  # same betas -> the float64 products are identical
        assert torch.equal(ours.alphas_cumprod, torch.cumprod(1 - theirs.betas.double(), 0))


def test_sigmoid_and_custom_end_points_equal_diffusers():
    ours = NoiseSchedule.from_name("sigmoid", 500, beta_start=2e-4, beta_end=0.03)
    theirs = DDPMScheduler(num_train_timesteps=500, beta_schedule="sigmoid", beta_start=2e-4, beta_end=0.03)
    assert torch.allclose(ours.betas, theirs.betas.double(), rtol=1e-6, atol=0)
    ours = NoiseSchedule.from_name("linear", 400, beta_start=1e-4, beta_end=0.02)  # the seed paper's
    theirs = DDPMScheduler(num_train_timesteps=400, beta_start=1e-4, beta_end=0.02)
    assert torch.equal(ours.betas.float(), theirs.betas)


def test_cosine_matches_nichol_dhariwal_closed_form():
    s = NoiseSchedule.from_name("cosine", 1000)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    for t in (0, 1, 250, 500, 900):  # before the 0.999 clip abar_t = f(t + 1) / f(0)
        assert float(s.alphas_cumprod[t]) == pytest.approx(f(t + 1) / f(0), rel=1e-12)
    assert float(s.betas.max()) == pytest.approx(0.999)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_q_sample_matches_diffusers_add_noise_and_velocity(name):
    s = NoiseSchedule.from_name(name, 1000)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule=DIFFUSERS_NAMES[name])
    sched.alphas_cumprod = s.alphas_cumprod  # compare the formulas on one table
    g = torch.Generator().manual_seed(0)
    x0, noise = (
        torch.randn(6, 3, 5, 5, generator=g, dtype=torch.float64),
        torch.randn(6, 3, 5, 5, generator=g),
    )
    noise = noise.double()
    t = torch.tensor([0, 1, 10, 500, 998, 999])
    assert torch.allclose(s.q_sample(x0, t, noise), sched.add_noise(x0, noise, t), atol=1e-12)
    assert torch.allclose(s.target(x0, noise, t, "v"), sched.get_velocity(x0, noise, t), atol=1e-12)


def test_q_sample_has_the_right_mean_and_variance():
    s = NoiseSchedule.from_name("linear", 1000)
    g = torch.Generator().manual_seed(0)
    n = 200_000
    for t in (0, 100, 500, 999):
        x0 = torch.full((n,), 0.7, dtype=torch.float64)
        xt = s.q_sample(x0, torch.full((n,), t), torch.randn(n, generator=g, dtype=torch.float64))
        abar = float(s.alphas_cumprod[t])
        var = 1 - abar
        assert abs(float(xt.mean()) - math.sqrt(abar) * 0.7) < 5 * math.sqrt(var / n)
        assert abs(float(xt.var()) - var) < 5 * var * math.sqrt(2 / n)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "epsilon", "sample", "v_prediction"])
def test_target_conversions_round_trip(prediction):
    s = NoiseSchedule.from_name("cosine", 1000)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(5, 2, 3, generator=g, dtype=torch.float64)
    noise = torch.randn(5, 2, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 3, 400, 800, 990])
    xt = s.q_sample(x0, t, noise)
    out = s.target(x0, noise, t, prediction)
    assert torch.allclose(s.predict_x0(xt, t, out, prediction), x0, atol=1e-9)
    assert torch.allclose(s.predict_eps(xt, t, out, prediction), noise, atol=1e-9)
    # the value-based helper agrees, with tensors or python floats as coefficients
    a, sig = math.sqrt(float(s.alphas_cumprod[400])), math.sqrt(1 - float(s.alphas_cumprod[400]))
    xt1 = a * x0 + sig * noise
    tgt = {"eps": noise, "x0": x0, "v": a * noise - sig * x0}[canonical_prediction(prediction)]
    x0_hat, eps_hat = split_prediction(xt1, a, sig, tgt, prediction)
    assert torch.allclose(x0_hat, x0, atol=1e-12) and torch.allclose(eps_hat, noise, atol=1e-12)


def test_posterior_equals_independent_gaussian_conditioning():
    """q(x_{t-1} | x_t, x0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x0), both Gaussian: precision-weighted product,
    computed here in python floats from the betas (DDPM eqs. 6-7 are the closed form of this)."""
    s = NoiseSchedule.from_name("linear", 1000)
    betas = s.betas.tolist()
    abar = []
    prod = 1.0
    for b in betas:
        prod *= 1 - b
        abar.append(prod)
    x0, xt = torch.tensor([[0.3, -1.2]], dtype=torch.float64), torch.tensor([[1.1, 0.4]], dtype=torch.float64)
    for t in (1, 2, 50, 500, 999):
        a_t, ab_prev = 1 - betas[t], abar[t - 1]
        precision = a_t / betas[t] + 1 / (1 - ab_prev)
        var = 1 / precision
        mean = var * (math.sqrt(a_t) / betas[t] * xt + math.sqrt(ab_prev) / (1 - ab_prev) * x0)
        m, v, logv = s.posterior_mean_variance(x0, xt, torch.tensor([t]))
        assert torch.allclose(m, mean, rtol=1e-9, atol=1e-12)
        assert float(v) == pytest.approx(var, rel=1e-9)
        assert float(logv) == pytest.approx(math.log(var), rel=1e-9)
    # t = 0: x_{-1} is x0 itself (variance 0); the log variance is clipped to the t = 1 value
    m, v, logv = s.posterior_mean_variance(x0, xt, torch.tensor([0]))
    assert torch.allclose(m, x0) and float(v) == 0.0
    assert float(logv) == pytest.approx(float(s.posterior_log_variance_clipped[1]))


def test_snr_sigmas_and_gather_broadcast_to_any_rank():
    s = NoiseSchedule.from_name("scaled_linear", 1000)
    t = torch.tensor([0, 500, 999])
    assert torch.allclose(s.sigmas[t] ** 2, 1 / s.snr(t), rtol=1e-12)
    for shape in ((3,), (3, 4), (3, 2, 5, 5), (3, 1, 2, 2, 2)):
        like = torch.zeros(shape, dtype=torch.float32)
        g = s.sqrt_alphas_cumprod(t, like)
        assert g.shape == (3,) + (1,) * (len(shape) - 1) and g.dtype == torch.float32
