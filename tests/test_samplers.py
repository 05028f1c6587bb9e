"""Every sampler against the diffusers scheduler of the same algorithm and config, step for step.

The same deterministic model (a fixed random linear function of x and t, shaped like the optimal denoiser of
a Gaussian data distribution so trajectories stay bounded) drives our sampler and a plain diffusers loop
(``scale_model_input`` -> model -> ``step``). Stochastic samplers get the same noise because both draw it
from generators with the same seed in the same order. We compare the state after every step and the result.

The oracle's ``alphas_cumprod`` (float32 in diffusers) is replaced by our float64 table after checking they
agree, so that in float64 the comparison measures the algorithms and not float32 table rounding (the tables
themselves are compared in tests/test_schedule.py); likewise the float32 sigma grids of the VE/DPM schedulers
are checked against ours and then used by both. Euler/Heun states live in sigma space (``x0 + sigma eps``,
magnitudes up to sigma_max); they are compared after scaling to VP space (``x / sqrt(1 + sigma^2)``), which is
what the model sees.
"""

from __future__ import annotations

import inspect
import itertools
import math

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
)

from diffusionlab.diffusion import NoiseSchedule
from diffusionlab.sampling import SAMPLER_NAMES, get_sampler

T = 1000
SHAPE = (2, 3, 4, 4)
TOL = {torch.float64: 1e-5, torch.float32: 1e-4}
# DPMSolverMultistep, EulerDiscrete and HeunDiscrete do part of their arithmetic in float32 whatever the input
# dtype (float32 sigmas, ``sample.to(torch.float32)``). Where the grid starts at a near-zero SNR (cosine at
# t = 999: sigma = 2e4), converting eps to x0 multiplies that float32 rounding by sigma and Heun's first
# correction multiplies it again by the step size, so the oracle is only good to ~1e-3 relative there:
# those runs are checked to REL_TOL relative to the state's magnitude (a wrong step is off by O(1)).
REL_TOL = 1e-2
FLOAT32_ORACLES = ("dpmpp_2m", "euler", "heun")

DIFFUSERS_BETAS = {
    "linear": dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "cosine": dict(beta_schedule="squaredcos_cap_v2"),
}
DIFFUSERS_PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
SCHEDULES = {name: NoiseSchedule.from_name(name, T) for name in DIFFUSERS_BETAS}


class LinearModel:
    """``model(x_t, t)``: a fixed random linear function of ``x_t`` and ``t``, returning eps, x0 or v.

    x0_hat = mu + g(t) (x_t - sqrt(abar_t) mu) + M x_t + c t / T, with g the Gaussian-posterior gain for
    data variance ``var``, M a small channel mixing and c a small time drift; eps/v follow from x0_hat.
    ``abar`` is interpolated linearly for fractional t. Computes in the dtype of ``x_t``.
    """

    def __init__(self, schedule: NoiseSchedule, prediction: str, shape=SHAPE, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        feat = shape[1:]
        self.abar = schedule.alphas_cumprod
        self.prediction = prediction
        self.mu = 0.3 * torch.randn(feat, generator=g, dtype=torch.float64)
        self.var = 0.2 + 0.3 * torch.rand(feat, generator=g, dtype=torch.float64)
        self.mix = 0.05 * torch.randn(shape[1], shape[1], generator=g, dtype=torch.float64)
        self.drift = 0.05 * torch.randn(feat, generator=g, dtype=torch.float64)
        self.calls = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        assert t.shape == (x.shape[0],)
        tf = t.double().clamp(0, len(self.abar) - 1)
        lo = tf.floor().long().clamp(max=len(self.abar) - 2)
        a = self.abar[lo] + (tf - lo) * (self.abar[lo + 1] - self.abar[lo])
        a = a.reshape(-1, *[1] * (x.ndim - 1)).to(x.dtype)
        mu, var, drift = (p.to(x.dtype) for p in (self.mu, self.var, self.drift))
        gain = var * a.sqrt() / (a * var + 1 - a)
        mixed = torch.einsum("ij,bj...->bi...", self.mix.to(x.dtype), x)
        x0 = mu + gain * (x - a.sqrt() * mu) + mixed + drift * (tf / len(self.abar)).reshape(a.shape).to(x.dtype)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return {"eps": eps, "x0": x0, "v": a.sqrt() * eps - (1 - a).sqrt() * x0}[self.prediction]


def diffusers_scheduler(cls, schedule: str, prediction: str, **config):
    """A diffusers scheduler whose ``alphas_cumprod`` is our float64 table of the same schedule."""
    sched = cls(
        num_train_timesteps=T,
        prediction_type=DIFFUSERS_PREDICTION[prediction],
        **DIFFUSERS_BETAS[schedule],
        **config,
    )
    assert torch.allclose(sched.alphas_cumprod.double(), SCHEDULES[schedule].alphas_cumprod, rtol=2e-5, atol=1e-7)
    sched.alphas_cumprod = SCHEDULES[schedule].alphas_cumprod.clone()
    if hasattr(sched, "final_alpha_cumprod"):
        sched.final_alpha_cumprod = (
            torch.tensor(1.0, dtype=torch.float64) if config.get("set_alpha_to_one", True) else sched.alphas_cumprod[0]
        )
    return sched


def run_diffusers(sched, model, num_steps, x, *, seed=None, start_index=0, step_kw=None, timesteps=None, edit=None):
    """Plain diffusers loop from state ``x``; returns the states after every (full) step.

    For Heun (order 2) only the states after a complete step are recorded (after the correction, and after
    the final Euler step). ``edit(x)`` is applied to the recorded states (like our callback's return).
    """
    if timesteps is None:
        sched.set_timesteps(num_steps)
    else:
        sched.set_timesteps(timesteps=timesteps)
    order = getattr(sched, "order", 1)
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(start_index * order)
    kw = dict(step_kw or {})
    if seed is not None and "generator" in inspect.signature(sched.step).parameters:
        kw["generator"] = torch.Generator().manual_seed(seed)
    todo = sched.timesteps[start_index * order :]
    states = []
    for j, t in enumerate(todo):
        out = model(sched.scale_model_input(x, t), t.reshape(1).expand(x.shape[0]))
        x = sched.step(out, t, x, **kw).prev_sample
        if order == 1 or sched.state_in_first_order or j == len(todo) - 1:
            if edit is not None:
                x = edit(x)
            states.append(x)
    return states


def run_ours(sampler, model, x, *, seed=None, start_index=0, edit=None):
    states = []

    def callback(i, t, x_i, x0):
        assert x0.shape == x_i.shape
        x_i = edit(x_i) if edit is not None else x_i
        states.append(x_i)
        return x_i if edit is not None else None

    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    out = sampler.sample(model, x, generator=gen, callback=callback, start_index=start_index, progress=False)
    assert torch.equal(out, states[-1])
    return states


def vp_scale(sampler, states, start_index=0):
    """States in VP space (identity for VP samplers; ``x / sqrt(1 + sigma^2)`` for Euler/Heun)."""
    if not sampler.ve_state:
        return states
    sig = sampler.sigmas[start_index + 1 :]
    return [x / math.sqrt(1 + float(s) ** 2) for x, s in zip(states, sig)]


def assert_same_trajectory(sampler, ours, theirs, dtype, start_index=0, rel=False):
    """Max abs diff of the VP-scaled states below the dtype's tolerance (``rel``: relative to their max)."""
    assert len(ours) == len(theirs) == sampler.num_steps - start_index
    ours, theirs = vp_scale(sampler, ours, start_index), vp_scale(sampler, theirs, start_index)
    diffs = [float((a.double() - b.double()).abs().max()) for a, b in zip(ours, theirs)]
    tol = REL_TOL * max(float(b.abs().max()) for b in theirs) if rel else TOL[dtype]
    assert max(diffs) < tol, f"max abs diff per step {[f'{d:.1e}' for d in diffs]} (tolerance {tol:.1e})"
    assert all(torch.isfinite(x).all() for x in ours)


def compare(
    name,
    schedule,
    prediction,
    num_steps,
    our_opts,
    cls,
    their_config,
    *,
    dtype=torch.float64,
    seed=None,
    step_kw=None,
    shape=SHAPE,
):
    sampler = get_sampler(name, SCHEDULES[schedule], num_steps, prediction=prediction, **our_opts)
    sched = diffusers_scheduler(cls, schedule, prediction, **their_config)
    model = LinearModel(SCHEDULES[schedule], prediction, shape)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    sched.set_timesteps(num_steps)  # init_noise_sigma depends on the timesteps
    theirs = run_diffusers(sched, model, num_steps, noise * sched.init_noise_sigma, seed=seed, step_kw=step_kw)
    # same visited timesteps and start scale as diffusers
    their_t = sched.timesteps if sched.order == 1 else torch.cat([sched.timesteps[:1], sched.timesteps[1::2]])
    assert torch.allclose(sampler.timesteps.double(), their_t.double(), atol=1e-3, rtol=0), (
        sampler.timesteps,
        their_t,
    )
    assert sampler.init_noise_sigma == pytest.approx(float(sched.init_noise_sigma), rel=1e-6)
    if hasattr(sched, "sigmas"):  # diffusers keeps its sigma grid in float32: check ours, then run on theirs
        their_sigmas = sched.sigmas if sched.order == 1 else torch.cat([sched.sigmas[:1], sched.sigmas[1::2]])
        assert torch.allclose(sampler.sigmas, their_sigmas.double(), rtol=1e-6, atol=0)
        sampler.sigmas = their_sigmas.double()
    calls_before = model.calls
    ours = run_ours(sampler, model, sampler.prepare_noise(noise), seed=seed)
    expected_calls = 2 * num_steps - 1 if name == "heun" else num_steps
    assert model.calls - calls_before == expected_calls
    ill_conditioned = name in FLOAT32_ORACLES and float(sampler.sigmas[0]) > 1e3
    assert_same_trajectory(sampler, ours, theirs, dtype, rel=ill_conditioned)


SPACINGS = [("leading", 0), ("leading", 1), ("trailing", 0), ("linspace", 0)]
PREDICTIONS = ("eps", "v", "x0")
# every prediction type on two schedules, every schedule with two prediction types
PRED_SCHEDULES = [
    ("eps", "linear"),
    ("eps", "cosine"),
    ("v", "scaled_linear"),
    ("v", "linear"),
    ("x0", "cosine"),
    ("x0", "scaled_linear"),
]


def _spacing_kw(spacing, offset):
    return dict(timestep_spacing=spacing, steps_offset=offset)


# ---------------------------------------------------------------------------------------------- DDPM
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("spacing,offset", SPACINGS)
@pytest.mark.parametrize("prediction,schedule", PRED_SCHEDULES)
def test_ddpm_matches_diffusers(prediction, schedule, spacing, offset, variance):
    kw = _spacing_kw(spacing, offset)
    compare(
        "ddpm",
        schedule,
        prediction,
        6,
        dict(variance=variance, **kw),
        DDPMScheduler,
        dict(variance_type=variance, clip_sample=False, **kw),
        seed=3,
    )


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ddpm_full_chain_with_clipping_matches_diffusers(variance):
    """N = T: DDPM Algorithm 2 on every training timestep, x0 clipped to [-1, 1] as for pixel models."""
    compare(
        "ddpm",
        "linear",
        "eps",
        T,
        dict(variance=variance, clip_x0=1.0),
        DDPMScheduler,
        dict(variance_type=variance, clip_sample=True, clip_sample_range=1.0),
        seed=4,
    )


# ---------------------------------------------------------------------------------------------- DDIM
DDIM_GRIDS = [("leading", 0, 6), ("leading", 1, 6), ("leading", 1, 7), ("trailing", 0, 8)]


@pytest.mark.parametrize("eta,final_alpha_one", [(0.0, True), (0.0, False), (0.5, False)])
@pytest.mark.parametrize("spacing,offset,steps", DDIM_GRIDS)
@pytest.mark.parametrize("prediction,schedule", PRED_SCHEDULES)
def test_ddim_matches_diffusers(prediction, schedule, spacing, offset, steps, eta, final_alpha_one):
    kw = _spacing_kw(spacing, offset)
    compare(
        "ddim",
        schedule,
        prediction,
        steps,
        dict(eta=eta, final_alpha_one=final_alpha_one, **kw),
        DDIMScheduler,
        dict(set_alpha_to_one=final_alpha_one, clip_sample=False, **kw),
        seed=5,
        step_kw=dict(eta=eta),
    )


def test_ddim_clipped_x0_matches_diffusers():
    compare(
        "ddim",
        "linear",
        "v",
        20,
        dict(eta=0.3, clip_x0=1.0),
        DDIMScheduler,
        dict(clip_sample=True, clip_sample_range=1.0),
        seed=6,
        step_kw=dict(eta=0.3),
    )


@pytest.mark.parametrize("final_alpha_one", [True, False])
@pytest.mark.parametrize("spacing,steps", [("linspace", 10), ("trailing", 7), ("linspace", 25)])
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ddim_other_grids_match_first_order_dpm_solver(prediction, spacing, steps, final_alpha_one):
    """Where diffusers' DDIMScheduler does not step to the next visited timestep (it uses ``t - T // N``),
    check DDIM (eta = 0) against first-order DPM-Solver++ on our timesteps: the same update (Lu et al.)."""
    sampler = get_sampler(
        "ddim",
        SCHEDULES["scaled_linear"],
        steps,
        prediction,
        timestep_spacing=spacing,
        final_alpha_one=final_alpha_one,
    )
    sched = diffusers_scheduler(
        DPMSolverMultistepScheduler,
        "scaled_linear",
        prediction,
        solver_order=1,
        final_sigmas_type="zero" if final_alpha_one else "sigma_min",
    )
    model = LinearModel(SCHEDULES["scaled_linear"], prediction)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    theirs = run_diffusers(sched, model, steps, noise, timesteps=sampler.timesteps.tolist())
    assert_same_trajectory(sampler, run_ours(sampler, model, noise), theirs, torch.float64)


# ------------------------------------------------------------------------------------------ DPM-Solver++(2M)
# N >= 15 with final sigma 0 (last step first order), N < 15 with lower_order_final (last step first order),
# N < 15 without it (second order to the end)
@pytest.mark.parametrize(
    "steps,final,lower_order_final", [(16, "zero", True), (6, "sigma_min", True), (6, "sigma_min", False)]
)
@pytest.mark.parametrize("spacing,offset", SPACINGS)
@pytest.mark.parametrize("prediction,schedule", PRED_SCHEDULES)
def test_dpmpp_2m_matches_diffusers(prediction, schedule, spacing, offset, steps, final, lower_order_final):
    kw = _spacing_kw(spacing, offset)
    compare(
        "dpmpp_2m",
        schedule,
        prediction,
        steps,
        dict(final_sigmas_type=final, lower_order_final=lower_order_final, **kw),
        DPMSolverMultistepScheduler,
        dict(
            algorithm_type="dpmsolver++",
            solver_order=2,
            final_sigmas_type=final,
            lower_order_final=lower_order_final,
            **kw,
        ),
    )


@pytest.mark.parametrize("steps", [6, 16])
@pytest.mark.parametrize("schedule", ["linear", "scaled_linear"])
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_dpmpp_2m_karras_matches_diffusers(prediction, schedule, steps):
    # cosine is left out: there diffusers truncates (not rounds) the Karras timesteps to integers.
    compare(
        "dpmpp_2m",
        schedule,
        prediction,
        steps,
        dict(karras=True),
        DPMSolverMultistepScheduler,
        dict(algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True),
    )


# ---------------------------------------------------------------------------------------------- Euler / Heun
@pytest.mark.parametrize("karras,final", [(False, "zero"), (True, "zero"), (False, "sigma_min")])
@pytest.mark.parametrize("spacing,offset", SPACINGS)
@pytest.mark.parametrize("prediction,schedule", PRED_SCHEDULES)
def test_euler_matches_diffusers(prediction, schedule, spacing, offset, karras, final):
    kw = _spacing_kw(spacing, offset)
    compare(
        "euler",
        schedule,
        prediction,
        6,
        dict(karras=karras, final_sigmas_type=final, **kw),
        EulerDiscreteScheduler,
        dict(use_karras_sigmas=karras, final_sigmas_type=final, **kw),
    )


@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("spacing,offset", SPACINGS)
@pytest.mark.parametrize("prediction,schedule", PRED_SCHEDULES)
def test_heun_matches_diffusers(prediction, schedule, spacing, offset, karras):
    kw = _spacing_kw(spacing, offset)
    compare(
        "heun",
        schedule,
        prediction,
        5,
        dict(karras=karras, **kw),
        HeunDiscreteScheduler,
        dict(use_karras_sigmas=karras, **kw),
    )


def test_heun_clipped_x0_matches_diffusers():
    compare(
        "heun",
        "linear",
        "eps",
        8,
        dict(clip_x0=1.0),
        HeunDiscreteScheduler,
        dict(clip_sample=True, clip_sample_range=1.0, timestep_spacing="leading"),
    )


# ---------------------------------------------------------------------------------------------- all samplers
ORACLES = {  # diffusers class, its config, our options (both with our default spacing: leading)
    "ddpm": (DDPMScheduler, dict(clip_sample=False), {}),
    "ddim": (DDIMScheduler, dict(clip_sample=False, set_alpha_to_one=False), dict(final_alpha_one=False)),
    "dpmpp_2m": (DPMSolverMultistepScheduler, dict(timestep_spacing="leading"), {}),
    "euler": (EulerDiscreteScheduler, dict(timestep_spacing="leading"), {}),
    "heun": (HeunDiscreteScheduler, dict(timestep_spacing="leading"), {}),
}


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_float32_matches_diffusers(name):
    cls, config, opts = ORACLES[name]
    compare(
        name,
        "scaled_linear",
        "eps",
        12,
        dict(steps_offset=1, **opts),
        cls,
        dict(steps_offset=1, **config),
        dtype=torch.float32,
        seed=7,
    )


@pytest.mark.parametrize("shape", [(3, 5), (2, 4, 6), (1, 4, 8, 8), (2, 2, 3, 4, 4)])
@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_any_tensor_rank(name, shape):
    cls, config, opts = ORACLES[name]
    compare(name, "linear", "v", 6, opts, cls, config, seed=8, shape=shape)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_img2img_start_and_callback_edits_match_diffusers(name):
    """Start part way (``noised_start`` = diffusers' ``add_noise``) and blend a known region into the state
    after every step (inpainting), in both loops."""
    cls, config, opts = ORACLES[name]
    steps, start = 10, 3
    schedule = SCHEDULES["scaled_linear"]
    sampler = get_sampler(name, schedule, steps, "eps", steps_offset=1, **opts)
    sched = diffusers_scheduler(cls, "scaled_linear", "eps", steps_offset=1, **config)
    model = LinearModel(schedule, "eps")
    g = torch.Generator().manual_seed(9)
    x0, noise = (
        torch.randn(SHAPE, generator=g, dtype=torch.float64),
        torch.randn(SHAPE, generator=g, dtype=torch.float64),
    )
    mask = torch.zeros(SHAPE, dtype=torch.float64)
    mask[..., :2] = 1.0
    known = torch.full(SHAPE, 0.25, dtype=torch.float64)

    sched.set_timesteps(steps)
    order = getattr(sched, "order", 1)
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(start * order)
    x_theirs = sched.add_noise(x0, noise, sched.timesteps[start * order : start * order + 1])
    x_ours = sampler.noised_start(x0, noise, start)
    assert (vp_scale(sampler, [x_ours - x_theirs], start - 1)[0]).abs().max() < 1e-6  # diffusers: float32 sigmas

    edit = lambda x: mask * known + (1 - mask) * x
    theirs = run_diffusers(sched, model, steps, x_theirs, seed=10, start_index=start, edit=edit)
    ours = run_ours(sampler, model, x_ours, seed=10, start_index=start, edit=edit)
    assert_same_trajectory(sampler, ours, theirs, torch.float64, start_index=start)


def test_noised_start_at_zero_is_prepared_noise_for_vp_samplers_and_end_is_clean():
    schedule = SCHEDULES["linear"]
    x0, noise = torch.randn(2, 3), torch.randn(2, 3)
    for name in ("ddpm", "ddim", "dpmpp_2m"):
        s = get_sampler(name, schedule, 10)
        assert torch.equal(s.noised_start(x0, noise, s.num_steps), x0)
    s = get_sampler("euler", schedule, 10, timestep_spacing="trailing")
    start = s.noised_start(torch.zeros(2, 3), noise, 0)
    assert torch.allclose(start, s.prepare_noise(noise))


def test_sampling_keeps_no_autograd_graph_and_shows_no_bar_when_asked(capsys):
    schedule = SCHEDULES["linear"]
    w = torch.nn.Parameter(torch.tensor(0.9))
    model = lambda x, t: w * x
    for name in SAMPLER_NAMES:
        out = get_sampler(name, schedule, 4).sample(model, torch.randn(2, 3), progress=False)
        assert not out.requires_grad and out.grad_fn is None
    assert "ddpm" not in capsys.readouterr().err


def test_stochastic_samplers_are_reproducible_and_depend_on_the_generator():
    schedule = SCHEDULES["linear"]
    model = LinearModel(schedule, "eps", (2, 3))
    for name, opts in (("ddpm", {}), ("ddim", dict(eta=1.0))):
        s = get_sampler(name, schedule, 10, **opts)
        x = torch.randn(2, 3, dtype=torch.float64)
        a, b, c = (s.sample(model, x, generator=torch.Generator().manual_seed(k), progress=False) for k in (0, 0, 1))
        assert torch.equal(a, b)
        assert not torch.allclose(a, c)


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("name,spacing", list(itertools.product(SAMPLER_NAMES, ("leading", "trailing", "linspace"))))
def test_timesteps_descend_within_training_range(name, spacing):
    s = get_sampler(name, SCHEDULES["cosine"], 17, timestep_spacing=spacing)
    assert s.timesteps.shape == (17,) and len(s.sigmas) == 18
    assert bool((s.timesteps[1:] < s.timesteps[:-1]).all())
    assert 0 <= float(s.timesteps.min()) and float(s.timesteps.max()) <= T - 1
    assert bool((s.sigmas[1:] <= s.sigmas[:-1]).all())


def test_default_sampler_opts_clamp_pixels_only_and_yield_to_the_caller():
    from diffusionlab.pipelines import default_sampler_opts

    assert default_sampler_opts(latent=False) == {"clip_x0": 1.0}
    assert default_sampler_opts(latent=True) == {}
    given = {"clip_x0": None, "eta": 1.0}
    assert default_sampler_opts(latent=False, given=given) == given  # the caller's options win
    assert default_sampler_opts(latent=True, given={"eta": 0.5}) == {"eta": 0.5}
