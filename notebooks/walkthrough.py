# Source of walkthrough.ipynb (jupytext "percent" format). Edit this file, then run
#   python notebooks/build_walkthrough.py            (rewrites walkthrough.ipynb)
#   python notebooks/build_walkthrough.py --render   (also executes it and writes docs/walkthrough.md)

# %% [markdown]
# # Diffusion models, step by step, with diffusionlab
#
# This notebook explains denoising diffusion with the framework's own code: every formula below is computed by
# `diffusionlab` and checked with an `assert`, so a number in the text that stops being true stops the notebook.
#
# 1. **The forward process**: how data is turned into noise, in one step or in a thousand.
# 2. **The reverse process**: the posterior of one step back, and why a network that predicts the noise is enough.
# 3. **Training**: a small class-conditional U-Net on real MNIST, on a CPU, in a couple of minutes.
# 4. **Sampling**: DDPM, DDIM and DPM-Solver++ at several step counts, classifier-free guidance, a trajectory.
# 5. **Evaluation**: what FID measures, the FID of real data against real data, and why the sample count matters.
# 6. **Latent diffusion and Stable Diffusion**: an autoencoder's latents, the CLIP tokenizer, cross-attention,
#    and a whole Stable Diffusion 1.5 pipeline with small random weights.
#
# **Parameters** (environment variables, read in the next cell):
#
# | variable | meaning |
# | --- | --- |
# | `DIFFUSIONLAB_DATA_DIR` | folder with `MNIST/raw/*.gz` (torchvision's layout; `make data` links it to `data/`) |
# | `DIFFUSIONLAB_WALKTHROUGH_FAST=1` | the quick variant the test suite runs: fewer training and sampling steps |
# | `DIFFUSIONLAB_WALKTHROUGH_RUN` | a run folder of `python train.py` (MNIST) to sample from instead of our net |
# | `DIFFUSIONLAB_INCEPTION_WEIGHTS` | the FID Inception network (TorchScript file) for the Inception FID in section 5 |
# | `DIFFUSIONLAB_CACHE_DIR` | cached domain classifier and reference features (default `~/.cache/diffusionlab`) |

# %%
import os
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from diffusionlab.utils.images import labelled_grid

FAST = os.environ.get("DIFFUSIONLAB_WALKTHROUGH_FAST", "0") == "1"
DATA_DIR = Path(os.environ.get("DIFFUSIONLAB_DATA_DIR") or ("../data" if Path("../data/MNIST").is_dir() else "data"))
RUN = os.environ.get("DIFFUSIONLAB_WALKTHROUGH_RUN")
INCEPTION = os.environ.get("DIFFUSIONLAB_INCEPTION_WEIGHTS")
CACHE_DIR = os.environ.get("DIFFUSIONLAB_CACHE_DIR")  # None: ~/.cache/diffusionlab
START = time.time()
torch.manual_seed(0)
plt.rcParams.update({"figure.dpi": 80, "axes.grid": True, "grid.alpha": 0.3})


def show(images, nrow, labels=None, title=None):
    """Display images ``[B, C, H, W]`` in [-1, 1] as a grid with ``nrow`` per row and one label per row."""
    grid = labelled_grid(images.float().cpu(), None, nrow=nrow, scale=2)
    rows = -(-len(images) // nrow)
    fig, ax = plt.subplots(figsize=(grid.width / 80 + (1 if labels else 0), grid.height / 80 + (0.3 if title else 0)))
    ax.imshow(grid, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([(r + 0.5) * grid.height / rows for r in range(rows)] if labels else [], labels or [])
    ax.tick_params(length=0)
    ax.grid(False)
    ax.spines[:].set_visible(False)
    if title:
        ax.set_title(title)
    plt.show()


print(f"fast mode: {FAST}; torch {torch.__version__} on {torch.get_num_threads()} CPU thread(s)")

# %% [markdown]
# ## 1. The forward process
#
# A diffusion model destroys data by adding a little Gaussian noise at each of `T` steps,
#
# $$x_t = \sqrt{1-\beta_t}\,x_{t-1} + \sqrt{\beta_t}\,\varepsilon_t, \qquad \varepsilon_t \sim \mathcal N(0, I),$$
#
# and learns to undo one step at a time. The variances $\beta_t$ are the *noise schedule*. Because a sum of
# independent Gaussians is Gaussian, any $x_t$ can be drawn from $x_0$ in one go:
#
# $$x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon, \qquad
#   \bar\alpha_t = \prod_{s \le t} (1 - \beta_s).$$
#
# `NoiseSchedule` holds the tables ($\beta_t$, $\bar\alpha_t$, ...) as float64 tensors indexed by
# `t = 0 ... T-1`, and `q_sample` is the closed form. First, some real MNIST digits
# (`ImageDataModule` scales them to [-1, 1]).

# %%
from diffusionlab.data import ImageDataModule
from diffusionlab.diffusion import NoiseSchedule

data = ImageDataModule("mnist", data_dir=str(DATA_DIR), image_size=28, batch_size=64, val_size=1000)
data.setup("fit")
digits = torch.stack([data.train_set[i][0] for i in range(8)])  # [8, 1, 28, 28] in [-1, 1]
linear = NoiseSchedule.from_name("linear", 1000)  # DDPM: betas from 1e-4 to 0.02
cosine = NoiseSchedule.from_name("cosine", 1000)  # Nichol & Dhariwal 2021
print(f"{len(data.train_set)} training and {len(data.val_set)} held-out images in [{digits.min()}, {digits.max()}]")
show(digits, nrow=8)

# %% [markdown]
# Now noise one digit step by step, 4,000 times independently, for 500 steps, and compare with the closed form.
# We also track, for the step-by-step recursion, the coefficient of $x_0$ and the variance of the accumulated
# noise: they must be exactly $\sqrt{\bar\alpha_t}$ and $1 - \bar\alpha_t$.

# %%
t = 499  # after the steps 0..499
x0 = digits[:1].double()
gen = torch.Generator().manual_seed(0)
chains = x0.repeat(4000, 1, 1, 1)  # 4000 independent noising chains of one digit
signal, noise_var = 1.0, 0.0  # x_t = signal * x0 + noise of variance noise_var
for s in range(t + 1):
    beta = float(linear.betas[s])
    chains = (1 - beta) ** 0.5 * chains + beta**0.5 * torch.randn(chains.shape, generator=gen, dtype=torch.float64)
    signal, noise_var = (1 - beta) ** 0.5 * signal, (1 - beta) * noise_var + beta

abar = float(linear.alphas_cumprod[t])
assert abs(signal - abar**0.5) < 1e-6 and abs(noise_var - (1 - abar)) < 1e-6
# The noise the chains accumulated, in units of its standard deviation, is standard normal ...
eps_bar = (chains - signal * x0) / noise_var**0.5
assert abs(eps_bar.mean()) < 0.01 and abs(eps_bar.std() - 1) < 0.01
# ... and with that noise the closed form gives every chain's x_t, to 1e-6.
closed = linear.q_sample(x0.expand_as(chains), torch.full((len(chains),), t), eps_bar)
assert (closed - chains).abs().max() < 1e-6
print(f"t={t}: sqrt(abar)={abar**0.5:.6f} (recursion {signal:.6f}), 1-abar={1 - abar:.6f} (recursion {noise_var:.6f})")
print(f"accumulated noise: mean {eps_bar.mean():+.4f}, std {eps_bar.std():.4f}; closed form matches every chain")

# %% [markdown]
# How fast the signal disappears depends on the schedule. Below, one digit noised with the *same* $\varepsilon$
# at increasing $t$: with the linear schedule the digit is gone well before the end, the cosine schedule of
# Nichol & Dhariwal (2021) destroys it more gradually.

# %%
steps = torch.tensor([0, 50, 100, 200, 300, 400, 500, 600, 750, 999])
noise = torch.randn((1, 1, 28, 28), generator=torch.Generator().manual_seed(1)).expand(len(steps), -1, -1, -1)
one = digits[:1].expand(len(steps), -1, -1, -1)
rows = [sched.q_sample(one, steps, noise) for sched in (linear, cosine)]
show(torch.cat(rows), nrow=len(steps), labels=["linear", "cosine"], title=f"t = {steps.tolist()}")

# %% [markdown]
# Their $\bar\alpha_t$ curves (Nichol & Dhariwal's Figure 5): the linear schedule reaches $\bar\alpha_t < 10^{-3}$,
# where less than 0.1% of the signal's variance is left, at about 80% of the way; the last steps are wasted on
# pure noise. The cosine schedule gets there only in the last few percent.

# %%
first = {name: int((s.alphas_cumprod < 1e-3).nonzero()[0]) for name, s in (("linear", linear), ("cosine", cosine))}
assert 800 < first["linear"] < 850 and first["cosine"] > 970
fig, ax = plt.subplots(figsize=(5, 3))
for name, s in (("linear", linear), ("cosine", cosine)):
    ax.plot(torch.arange(1000) / 1000, s.alphas_cumprod, label=f"{name} (abar < 1e-3 from t={first[name]})")
ax.set_xlabel("diffusion step t / T")
ax.set_ylabel(r"$\bar\alpha_t$")
ax.legend()
plt.show()

# %% [markdown]
# ## 2. The reverse process
#
# To generate, we need to go back: $q(x_{t-1} \mid x_t)$ is intractable, but conditioned on the clean image it
# is a Gaussian with closed-form parameters (the seed's equations 11–14; DDPM eqs. 6–7):
#
# $$q(x_{t-1} \mid x_t, x_0) = \mathcal N\big(\tilde\mu_t(x_t, x_0), \tilde\beta_t I\big),\quad
#   \tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}\,x_0
#               + \frac{\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}\,x_t,\quad
#   \tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\,\beta_t .$$
#
# `NoiseSchedule.posterior_mean_variance` computes them; here they are checked against the formulas written out
# from the schedule's tables, and the variance against Bayes' rule (the precision of a product of two Gaussians
# in $x_{t-1}$, $q(x_t \mid x_{t-1})$ and $q(x_{t-1} \mid x_0)$, is the sum of their precisions).

# %%
t = 300
x0 = digits[:4]
eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
x_t = linear.q_sample(x0, torch.tensor(t), eps)
mean, var, _ = linear.posterior_mean_variance(x0, x_t, torch.tensor(t))

tables = (linear.betas, linear.alphas, linear.alphas_cumprod, linear.alphas_cumprod_prev)
b, a, ab, ab_prev = (float(v[t]) for v in tables)  # beta_t, alpha_t, abar_t, abar_{t-1}
mean_formula = ab_prev**0.5 * b / (1 - ab) * x0 + a**0.5 * (1 - ab_prev) / (1 - ab) * x_t
var_formula = (1 - ab_prev) / (1 - ab) * b
assert (mean - mean_formula).abs().max() < 1e-6
assert abs(float(linear.posterior_variance[t]) - var_formula) < 1e-12  # the float64 table
assert abs(float(var.flatten()[0]) - var_formula) < 1e-8  # returned in the data's dtype (float32)
assert abs(1 / (a / b + 1 / (1 - ab_prev)) - var_formula) < 1e-12  # Bayes: precisions add
print(f"t={t}: posterior variance {var_formula:.6f} vs beta_t {b:.6f}")

# %% [markdown]
# **Why predicting the noise suffices.** At sampling time $x_0$ is unknown, but $x_t$ determines it once the noise
# is known: $x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\varepsilon)/\sqrt{\bar\alpha_t}$. Substituting,
#
# $$\tilde\mu_t = \frac{1}{\sqrt{\alpha_t}}\Big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,\varepsilon\Big),$$
#
# so the mean of each reverse step is a fixed linear function of $x_t$ and $\varepsilon$, and its variance is fixed
# by the schedule. A network $\varepsilon_\theta(x_t, t)$ trained with the plain regression loss
# $\lVert \varepsilon - \varepsilon_\theta(x_t, t)\rVert^2$ learns $\mathbb E[\varepsilon \mid x_t]$, which gives
# the best estimate of $x_0$ and hence of the reverse step. (The library can also train on $x_0$ or on
# $v = \sqrt{\bar\alpha_t}\varepsilon - \sqrt{1-\bar\alpha_t}x_0$: `GaussianDiffusion(prediction="x0" | "v")`.)

# %%
mean_from_eps = (x_t - b / (1 - ab) ** 0.5 * eps) / a**0.5
assert (mean_from_eps - mean).abs().max() < 1e-5
assert (linear.predict_x0(x_t, torch.tensor(t), eps, "eps") - x0).abs().max() < 1e-5
print("posterior mean from (x_t, eps) == posterior mean from (x_t, x0); predict_x0 recovers x0")

# %% [markdown]
# A sanity check of the whole sampling machinery: an *oracle* that returns the true noise of the current state
# (the noise that leads from `x0` to `x_t`) turns pure noise into exactly `x0`, with the stochastic DDPM sampler
# as well as the deterministic DDIM one, in 20 steps. A trained network is an approximation of this oracle that
# has to work for every image at once.

# %%
from diffusionlab.sampling import get_sampler

target = digits[:4]


def oracle(x_t, t):
    return linear.predict_eps(x_t, t, target, "x0")  # the eps implied by x_t and the true x0


for name in ("ddpm", "ddim"):
    sampler = get_sampler(name, linear, 20)
    start = sampler.prepare_noise(torch.randn(target.shape, generator=torch.Generator().manual_seed(3)))
    out = sampler.sample(oracle, start, generator=torch.Generator().manual_seed(4), progress=False)
    assert (out - target).abs().max() < 1e-4, name
    print(f"{name}: timesteps {sampler.timesteps[:3].tolist()} ... {sampler.timesteps[-2:].tolist()}; result == x0")

# %% [markdown]
# ## 3. Training
#
# `GaussianDiffusion.training_loss` is the whole training objective: draw $t$ uniformly, draw $\varepsilon$, build
# $x_t$ with `q_sample`, and regress the network output on $\varepsilon$. For classifier-free guidance it also
# replaces 10% of the labels by a "null" class, so the same network learns the unconditional model too.
#
# The network is the library's DDPM-style `UNet` (like `configs/model/unet_small.yaml`, with half the width and
# one residual block per level so that it trains on a CPU). The loop below is all there is to training; the
# framework's `DiffusionModule` runs the same loss under Lightning (`python train.py`), with checkpoints, logging
# and evaluation. bf16 autocast speeds up the steps on CPUs that support bf16 (see the README's benchmarks).

# %%
from diffusionlab.diffusion import GaussianDiffusion
from diffusionlab.lit.ema import EMA
from diffusionlab.lit.lr_schedules import warmup_cosine
from diffusionlab.nets import UNet, count_parameters

TRAIN_STEPS = 40 if FAST else 300
torch.manual_seed(0)
net = UNet(
    in_channels=1,
    num_classes=10,
    image_size=28,
    base_channels=16,
    channel_mult=(1, 2, 2),
    num_res_blocks=1,
    attention_resolutions=(7,),
    norm_groups=8,
    dropout=0.0,
)
diffusion = GaussianDiffusion("linear", num_timesteps=1000, prediction="eps", cond_drop_prob=0.1)
ema = EMA(net, decay=0.995)  # the exponential moving average of the weights is what we sample from
opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
lr_schedule = warmup_cosine(opt, warmup_steps=20, total_steps=TRAIN_STEPS, cosine=True, min_factor=0.1)
print(f"{count_parameters(net):,} parameters; {diffusion}")

# %%
losses, t0 = [], time.time()
for step, (x, y) in zip(range(TRAIN_STEPS), data.train_dataloader()):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = diffusion.training_loss(net, x, y, num_classes=10)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    lr_schedule.step()
    ema.update(net, step)
    losses.append(loss.item())
print(f"{TRAIN_STEPS} steps of batch {data.batch_size} in {time.time() - t0:.0f} s; last loss {losses[-1]:.3f}")

# %% [markdown]
# The U-Net's output layer starts at zero, so the first prediction is $\varepsilon_\theta = 0$ and the first loss
# is $\mathbb E\,\varepsilon^2 = 1$. It falls quickly: most of what the network has to learn early is that digits
# are mostly black background.

# %%
k = min(20, TRAIN_STEPS // 4)
first_loss, late_loss = losses[0], sum(losses[-k:]) / k
assert abs(first_loss - 1) < 0.05, first_loss
assert late_loss < 0.5 * first_loss, late_loss
smooth = [sum(losses[max(0, i - k + 1) : i + 1]) / len(losses[max(0, i - k + 1) : i + 1]) for i in range(len(losses))]
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(losses, alpha=0.4, label="loss per batch")
ax.plot(smooth, label=f"running mean of {k}")
ax.set_xlabel("training step")
ax.set_ylabel("MSE on the noise")
ax.set_yscale("log")
ax.legend()
plt.show()
print(f"first loss {first_loss:.3f}, mean of the last {k}: {late_loss:.3f}")

# %% [markdown]
# What the averaged (EMA) network makes of pure noise after this short training, two digits per class
# (`generate` is explained in section 4):

# %%
from diffusionlab.pipelines import generate

own, _ = generate(
    ema.shadow, diffusion, (1, 28, 28), labels=torch.arange(20) % 10, sampler="dpmpp_2m", steps=20, guidance=2.0,
    sampler_opts={"clip_x0": 1.0}, progress=False,
)  # fmt: skip
show(own, nrow=10, title=f"the network trained above, after {TRAIN_STEPS} steps")

# %% [markdown]
# A few hundred steps give blurry digits at best; the default experiment (`python train.py`) trains the same kind
# of network for thousands of steps. If a longer-trained run folder is available (`DIFFUSIONLAB_WALKTHROUGH_RUN`,
# or, outside the fast mode, the newest run of `python train.py` under `logs/train/runs`), the rest of the notebook
# samples from it: `load_run` rebuilds the network from the run's `config.yaml` and loads `ema.safetensors`.

# %%
from diffusionlab.cli.runs import load_run, newest_run_checkpoint

run = None
if RUN:
    run = load_run(RUN)
elif not FAST:
    for root in ("logs/train/runs", "../logs/train/runs"):
        try:
            run = load_run(newest_run_checkpoint(root))
            break
        except FileNotFoundError:
            continue
if run is not None and run.cfg.data.name != "mnist":
    print(f"{run.ckpt_dir} was trained on {run.cfg.data.name}, not MNIST: using the network trained above")
    run = None
if run is not None:
    model, model_diffusion, shape, decode = run.net, run.diffusion, run.sample_shape, run.decode
    print(f"sampling from {run.ckpt_dir.parent.name}: {type(model).__name__}, {count_parameters(model):,} parameters,")
    print(f"  {run.global_step} training steps, {model_diffusion}")
else:
    model, model_diffusion, shape, decode = ema.shadow, diffusion, (1, 28, 28), None
    print(f"sampling from the network trained above ({TRAIN_STEPS} steps)")
assert getattr(model, "num_classes", None) == 10, "the walkthrough needs a class-conditional MNIST model"
from diffusionlab.pipelines import default_sampler_opts

OPTS = default_sampler_opts(latent=decode is not None)  # pixel models: clamp every x0 prediction to [-1, 1]

# %% [markdown]
# ## 4. Sampling
#
# `diffusionlab.pipelines.generate` draws noise (on the CPU, from a seed), wraps the network with classifier-free
# guidance and runs any sampler of the registry (`get_sampler`): `ddpm` (ancestral sampling, stochastic),
# `ddim` (deterministic with `eta=0`) and `dpmpp_2m` (DPM-Solver++(2M), a second-order multistep solver).
# The same seed gives the same starting noise for every row below: one digit per class, per sampler and step count.
# For pixel-space models the samplers clamp each prediction of $x_0$ to the data range [-1, 1]
# (`sampler_opts={"clip_x0": 1.0}`, as `sample.py` and `evaluate.py` do): a young network's estimate of $x_0$ at
# high noise can lie far outside it, and without the clamp such errors grow into samples of pure noise.


# %%
def sample(labels, sampler="dpmpp_2m", steps=20, guidance=1.0, seed=0, opts=OPTS, **kw):
    """``generate`` with the chosen model: images ``[N, C, H, W]`` in [-1, 1] and the (optional) trajectory."""
    return generate(
        model, model_diffusion, shape, labels=labels, sampler=sampler, steps=steps, guidance=guidance, seed=seed,
        decode=decode, sampler_opts=opts, progress=False, **kw,
    )  # fmt: skip


STEP_COUNTS = [5, 10] if FAST else [10, 25, 50]
labels = torch.arange(10)
samples, t0 = {}, time.time()
for name in ("ddpm", "ddim", "dpmpp_2m"):
    for n_steps in STEP_COUNTS:
        samples[name, n_steps], _ = sample(labels, name, n_steps)
print(f"{len(samples)} x 10 samples in {time.time() - t0:.0f} s")
show(torch.cat(list(samples.values())), nrow=10, labels=[f"{name} {k}" for name, k in samples])

# %% [markdown]
# The clamp is a heuristic, and it makes the result depend on the step size. Without it, DDIM and DPM-Solver++ are
# two solvers of one ordinary differential equation (the probability-flow ODE), so from the same noise they head
# for the same image, and more steps get closer to it; DDPM adds fresh noise at every step and ends elsewhere.
# To see this, every grid must also start at the same time: `trailing` spacing always starts at $t = T-1$, whereas
# DDIM's default `leading` spacing starts at $t = T - T/N$, a different point for each step count $N$ (Lin et al.
# 2023). Taking a many-step DDIM run as the exact solution, the second-order DPM-Solver++ gets closer to it than
# DDIM with the same number of steps. (Some trajectories of a young network diverge without the clamp; the two
# solvers agree on those too.)

# %%
ODE_STEPS, REF_STEPS = ([5, 10], 50) if FAST else ([10, 25], 100)
ode = {"timestep_spacing": "trailing"}  # and no clamp: a pure ODE solve
reference, _ = sample(labels, "ddim", REF_STEPS, opts=ode)
solved = {(name, k): sample(labels, name, k, opts=ode)[0] for name in ("ddim", "dpmpp_2m") for k in ODE_STEPS}
error = {key: float((x - reference).abs().mean()) for key, x in solved.items()}
for name in ("ddim", "dpmpp_2m"):
    print(f"{name:9s} mean |x - x_ref|:", "  ".join(f"{k} steps: {error[name, k]:.4f}" for k in ODE_STEPS))
show(torch.cat([*solved.values(), reference]).clamp(-1, 1), nrow=10,
     labels=[f"{name} {k}" for name, k in solved] + [f"ddim {REF_STEPS}"])  # fmt: skip
few, more = ODE_STEPS
assert error["dpmpp_2m", few] < error["ddim", few] and error["dpmpp_2m", more] < error["ddim", more]
assert error["ddim", more] < error["ddim", few] and error["dpmpp_2m", more] < error["dpmpp_2m", few]

# %% [markdown]
# **Classifier-free guidance.** With guidance scale $s$ the sampler uses
# $\varepsilon_u + s\,(\varepsilon_c - \varepsilon_u)$: $s = 0$ is the unconditional model (the null class),
# $s = 1$ the plain conditional one, $s > 1$ pushes further towards what makes the class different from the
# average digit (the seed paper writes $s = 1 + w$). To count how often the samples are of the requested class,
# we use the library's MNIST domain classifier (the one section 5 uses for FID); if `make classifier` has not
# cached one, a quick one is trained now (a few seconds, at least 85% accurate).

# %%
from diffusionlab.data.transforms import to_native_size
from diffusionlab.metrics import ClassifierFeatures, load_classifier_extractor, quantize, train_classifier

try:
    domain, info = load_classifier_extractor("mnist", CACHE_DIR)
except FileNotFoundError:
    clf, info = train_classifier(
        "mnist", DATA_DIR, cache_dir=CACHE_DIR, epochs=1, max_train=3000, max_test=1000, progress=False, save=False
    )
    domain = ClassifierFeatures(clf, "mnist")  # its feature cache is keyed by a hash of these weights
    assert info["test_accuracy"] > 0.85
print(f"domain classifier: {info['test_accuracy']:.1%} test accuracy ({info['train_size']} training images)")


def classify(images):
    """Predicted classes of images ``[B, 1, H, W]`` in [-1, 1] (32x32 samples are cropped back to 28x28)."""
    return domain(quantize(to_native_size(images, "mnist")))[1].argmax(1)


# %%
DIGIT, N_GUIDED = 7, 8 if FAST else 16
SCALES = [0.0, 1.0, 3.0] if FAST else [0.0, 1.0, 2.0, 4.0]
guided = {s: sample(torch.full((N_GUIDED,), DIGIT), "dpmpp_2m", 20, guidance=s, seed=1)[0] for s in SCALES}
hits = {s: float((classify(x) == DIGIT).float().mean()) for s, x in guided.items()}
show(torch.cat([x[:8] for x in guided.values()]), nrow=8, labels=[f"s={s:g}: {hits[s]:.0%}" for s in SCALES])
print("share classified as", DIGIT, {f"s={s:g}": f"{h:.0%}" for s, h in hits.items()})
if not FAST:  # a property of a trained model: checked in the full run, not in the fast one
    assert hits[SCALES[-1]] > hits[0.0]

# %% [markdown]
# **A denoising trajectory.** `generate(..., trajectory_every=k)` also returns the network's prediction of the
# clean image $\hat x_0$ every `k` steps. The coarse shape is decided in the first, noisiest steps; the last
# steps only change details.

# %%
TRAJ_STEPS = 10 if FAST else 50
final, trajectory = sample(torch.tensor([2, 3, 5, 8]), "ddim", TRAJ_STEPS, 2.0, trajectory_every=TRAJ_STEPS // 10)
frames = torch.stack(trajectory)  # [frames, 4, C, H, W]: x0 predictions from the noisiest step to the last
show(frames.transpose(0, 1).flatten(0, 1), nrow=len(frames), labels=["2", "3", "5", "8"])
change = [float((frames[i + 1] - frames[i]).abs().mean()) for i in range(len(frames) - 1)]
print("mean change of the x0 prediction between frames:", " ".join(f"{c:.3f}" for c in change))
assert change[-1] < change[0]

# %% [markdown]
# ## 5. Evaluation
#
# The Fréchet Inception Distance fits a Gaussian to the features of real images and one to the features of
# generated images, and measures the distance between the two Gaussians:
#
# $$\mathrm{FID} = \lVert \mu_r - \mu_g \rVert^2
#   + \operatorname{Tr}\big(\Sigma_r + \Sigma_g - 2(\Sigma_r\Sigma_g)^{1/2}\big).$$
#
# It only sees means and covariances: shifting every feature vector by $\delta$ adds exactly
# $\lVert\delta\rVert^2$. `diffusionlab.metrics.fid` works on any features (it wraps torchmetrics):

# %%
from diffusionlab.metrics import fid

feats = torch.randn(2000, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
delta = torch.full((16,), 0.5)
assert abs(fid(feats, feats + delta) - float(delta.pow(2).sum())) < 1e-6
assert abs(fid(feats, feats)) < 1e-6
print(f"FID(features, features + delta) = {fid(feats, feats + delta):.6f} = |delta|^2 = {float(delta.pow(2).sum())}")

# %% [markdown]
# Which features? The standard choice is the pool3 layer of an Inception network trained on ImageNet photographs.
# For digits, the library also offers the domain classifier's 128-d penultimate layer ("domain FID"), which is
# fast on a CPU. The **floor** is the FID of real data against other real data: `compare_datasets` takes `n`
# training images and `n` test images. A model cannot be expected to beat it, and it is far from zero at small
# `n`, because means and covariances estimated from few samples are noisy; FID is biased upwards at small `n`.
# FIDs are only comparable at the same `n` (papers use 10,000 or 50,000 samples).

# %%
from diffusionlab.metrics import Evaluator, compare_datasets

N_FID = 100 if FAST else 200
SIZES = sorted({50, N_FID, 400, 1000 if FAST else 2000})
ev = Evaluator("mnist:test", data_dir=DATA_DIR, cache_dir=CACHE_DIR, extractor=domain, classifier=False, progress=False)
floor = {n: compare_datasets("mnist:train", "mnist:test", n, evaluator=ev)["fid"] for n in SIZES}
print("domain FID floor, MNIST train vs test:", "  ".join(f"n={n}: {f:.2f}" for n, f in floor.items()))
assert all(floor[a] > floor[b] for a, b in zip(SIZES, SIZES[1:]))  # decreasing in n
assert floor[50] > floor[400]

# %% [markdown]
# Now the model's samples against the test split at the same `n`, and, for scale, another dataset
# (Fashion-MNIST against MNIST): a model's FID lies above the floor, and unrelated images far above it.
# The classifier also gives the class accuracy of conditional samples.

# %%
labels = torch.arange(N_FID) % 10
fake, _ = sample(labels, "dpmpp_2m", 10, guidance=2.0, seed=3)
fake = to_native_size(fake, "mnist")  # 32x32 samples of a padded-MNIST model are cropped back to 28x28
result = ev.evaluate([(fake, labels)], reference_n=N_FID)
accuracy = float((classify(fake) == labels).float().mean())
print(f"model: domain FID {result['fid']:.2f} at n={N_FID} (floor {floor[N_FID]:.2f}); class accuracy {accuracy:.0%}")
assert result["fid"] > floor[N_FID]
try:
    other = compare_datasets("fashion_mnist:test", "mnist:test", N_FID, evaluator=ev)["fid"]
    print(f"Fashion-MNIST vs MNIST: domain FID {other:.2f} at n={N_FID}")
    assert other > 5 * floor[N_FID]
except FileNotFoundError as err:
    print(f"Fashion-MNIST is not in {DATA_DIR} ({type(err).__name__}); skipped")

# %% [markdown]
# With the real Inception network (`DIFFUSIONLAB_INCEPTION_WEIGHTS`, the TorchScript port of the TensorFlow FID
# graph) the same comparisons are slow on a CPU (299x299 inputs), so only `n = 50` here, and not in the fast mode.
# `python evaluate.py ckpt=<run> num_samples=10000` is the real measurement (a GPU job).

# %%
if INCEPTION and not FAST:
    ev_inception = Evaluator(
        "mnist:test", data_dir=DATA_DIR, cache_dir=CACHE_DIR, inception_weights=INCEPTION, classifier=False,
        progress=False, batch_size=25,
    )  # fmt: skip
    n = 50
    inc_floor = compare_datasets("mnist:train", "mnist:test", n, evaluator=ev_inception)["fid"]
    inc_model = ev_inception.evaluate([fake[:n]], reference_n=n)["fid"]
    inc_other = compare_datasets("fashion_mnist:test", "mnist:test", n, evaluator=ev_inception)["fid"]
    print(f"Inception FID at n={n}: floor {inc_floor:.1f}, model {inc_model:.1f}, Fashion-MNIST {inc_other:.1f}")
    assert inc_floor < inc_model and inc_floor < inc_other
else:
    reason = "fast mode" if FAST else "DIFFUSIONLAB_INCEPTION_WEIGHTS is not set"
    print(f"Inception FID skipped ({reason}); the domain FID above measured the same things")

# %% [markdown]
# ## 6. Latent diffusion and Stable Diffusion
#
# Diffusion in pixel space spends most of its computation on imperceptible detail. Latent diffusion (Rombach et
# al. 2022) first trains an autoencoder, then runs the very same `GaussianDiffusion` on its latents. The library's
# small KL autoencoder (`configs/autoencoder/kl_f4.yaml`) maps a 28x28 digit to 4 channels of 7x7; it is trained
# with a reconstruction loss plus a tiny KL term that keeps the latents near a standard normal
# (`AutoencoderModule.losses`). A short training run here (`python train.py experiment=mnist_autoencoder` is the
# real one):

# %%
from diffusionlab.lit.autoencoder_module import AutoencoderModule
from diffusionlab.nets.autoencoder import kl_autoencoder, latent_shape, measure_scale_factor, set_scale_factor

torch.manual_seed(0)
ae = kl_autoencoder(in_channels=1, ch=32, factor=4)
assert latent_shape(ae, 28) == (4, 7, 7)  # 784 pixels -> 196 latent numbers
ae_module = AutoencoderModule(ae, optimizer=torch.optim.AdamW, rec_loss="l1", kl_weight=1e-6)
ae_opt = torch.optim.AdamW(ae.parameters(), lr=2e-3)
held_out = torch.stack([data.val_set[i][0] for i in range(256)])
before = float((ae_module.reconstruct(held_out) - held_out).abs().mean())
AE_STEPS, t0 = (15 if FAST else 100), time.time()
for _, (x, _) in zip(range(AE_STEPS), data.train_dataloader()):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, rec, kl = ae_module.losses(x[:32])
    ae_opt.zero_grad(set_to_none=True)
    loss.backward()
    ae_opt.step()
ae.eval()
after = float((ae_module.reconstruct(held_out) - held_out).abs().mean())
print(f"{AE_STEPS} steps in {time.time() - t0:.0f} s; held-out L1 error {before:.3f} -> {after:.3f}")
assert after < before

# %% [markdown]
# Diffusion expects inputs of roughly unit variance, so latents are multiplied by a scale factor, 1 / (standard
# deviation of the training latents); Stable Diffusion's 0.18215 is that number for its autoencoder.
# `measure_scale_factor` measures it on training images; on held-out images the scaled latents then have a
# standard deviation close to 1.

# %%
train_batches = [x for _, (x, _) in zip(range(4), data.train_dataloader())]
scale = measure_scale_factor(ae, train_batches)
set_scale_factor(ae, scale)
with torch.no_grad():
    z = ae.encode_scaled(held_out, sample=True, generator=torch.Generator().manual_seed(0))
print(f"scale factor {scale:.3f}; held-out scaled latents: mean {z.mean():+.3f}, std {z.std():.3f}")
assert abs(float(z.std()) - 1) < 0.1
channels = z[:4].transpose(0, 1).reshape(16, 1, 7, 7)  # the 4 latent channels of 4 digits
show((channels / channels.abs().max()).repeat_interleave(4, -1).repeat_interleave(4, -2), nrow=4,
     labels=[f"z channel {c}" for c in range(4)], title="latents (4 x 7 x 7 per digit, upscaled)")  # fmt: skip
with torch.no_grad():
    recon = ae_module.reconstruct(held_out[:8])
show(torch.cat([held_out[:8], recon]), nrow=8, labels=["input", "recon"])

# %% [markdown]
# **Stable Diffusion 1.5** is latent diffusion at scale: a KL-f8 autoencoder (512x512x3 images, 64x64x4 latents),
# a U-Net with cross-attention, and a CLIP text encoder whose 77 token embeddings are what the U-Net attends to.
# `diffusionlab.sd` rebuilds all of it in plain PyTorch. First the tokenizer, which ships with the package:
# byte-level BPE, `<|startoftext|>`, the tokens, `<|endoftext|>`, padded to 77.

# %%
from diffusionlab.sd import CLIPTokenizer

tokenizer = CLIPTokenizer()
ids = tokenizer("a photo of a cat")
assert ids.shape == (1, 77)
assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]  # as OpenAI's CLIP tokenizer
assert (ids[0, 7:] == tokenizer.pad_id).all()
print(ids[0, :10].tolist(), "...")
prompt = "an astronaut riding a horse, watercolour"
print(prompt, "->", [tokenizer.decoder[i] for i in tokenizer.encode(prompt)])

# %% [markdown]
# The real model's sizes, from the library's `sd15()` configuration (built on PyTorch's `meta` device, so no
# memory is used): 860M parameters in the U-Net, 123M in the text encoder, 84M in the autoencoder, whose latents
# have 4 channels at 1/8 of the image size and are scaled by 0.18215.

# %%
from diffusionlab.sd import AutoencoderKL, CLIPTextEncoder, StableDiffusion, sd15, tiny
from diffusionlab.sd import UNet as SDUNet

with torch.device("meta"):
    full = sd15()
    sizes = {
        name: count_parameters(module(cfg))
        for name, module, cfg in (
            ("unet", SDUNet, full.unet),
            ("text_encoder", CLIPTextEncoder, full.text_encoder),
            ("vae", AutoencoderKL, full.vae),
        )
    }
assert sizes == {"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863}
assert (full.vae.z_channels, full.vae.downsample_factor, full.vae.scale_factor) == (4, 8, 0.18215)
print({name: f"{n / 1e6:.1f}M" for name, n in sizes.items()})

# %% [markdown]
# The same architecture with small widths (`diffusionlab.sd.tiny()`, what the tests use) and random weights runs
# quickly on a CPU. Forward hooks on the U-Net's cross-attention layers (`attn2` in each transformer block)
# show the shapes: the image's `h * w` positions are the queries, the 77 text embeddings the keys and values, so
# every attention map is `[batch, heads, h * w, 77]`.

# %%
torch.manual_seed(0)
cfg = tiny()
sd = StableDiffusion(SDUNet(cfg.unet), AutoencoderKL(cfg.vae), CLIPTextEncoder(cfg.text_encoder), config=cfg)
seen = []


def record(name):
    def hook(module, args, output):
        x, context = args
        seen.append((name, tuple(x.shape), tuple(context.shape), module.heads, tuple(output.shape)))

    return hook


hooks = [m.register_forward_hook(record(n)) for n, m in sd.unet.named_modules() if n.endswith("attn2")]
context = sd.encode_prompt("a photo of a cat")  # [1, 77, width]
with torch.no_grad():
    sd.unet(torch.randn(1, 4, 8, 8), torch.tensor([500]), context)  # latents of a 64x64 image
for h in hooks:
    h.remove()
for name, q, kv, heads, _ in seen:
    print(f"{name:30s} queries {q}  keys/values {kv}  attention map {(q[0], heads, q[1], kv[1])}")
assert all(kv == (1, 77, cfg.text_encoder.width) and out == q for _, q, kv, _, out in seen)
assert len(seen) == 16  # 2 per down level and 3 per up level at the 3 attention levels, 1 in the middle ...
assert (cfg.unet.attention_levels, cfg.unet.num_res_blocks) == (full.unet.attention_levels, full.unet.num_res_blocks)
# ... the same layout as SD 1.5, whose attention levels see these (channels, query positions) at 512x512:
assert {q[1] for _, q, _, _, _ in seen} == {64, 16, 4, 1}  # 8x8, 4x4, 2x2 latent positions and the 1x1 middle
sd15_queries = [
    (full.unet.level_channels(i), (64 // 2**i) ** 2) for i, att in enumerate(full.unet.attention_levels) if att
]
assert sd15_queries == [(320, 4096), (640, 1024), (1280, 256)]
print("SD 1.5 at 512x512: (channels, query positions) per attention level:", sd15_queries)

# %% [markdown]
# And the whole text-to-image pipeline, end to end: tokenizer, text encoder (for the prompt and for the empty
# negative prompt), DPM-Solver++ with classifier-free guidance at 7.5 in latent space, then the decoder. With random
# weights the picture is noise, but every shape, the schedule (Stable Diffusion's `scaled_linear` betas,
# `leading` timesteps offset by 1) and the seeding are those of the real model.

# %%
SD_STEPS = 4 if FAST else 10
kw = dict(steps=SD_STEPS, guidance=7.5, sampler="dpmpp_2m", seed=42, height=64, width=64, progress=False)
out = sd.txt2img("a photo of a cat", save_trajectory=True, **kw)
assert out.images.shape == (1, 3, 64, 64) and 0 <= out.images.min() and out.images.max() <= 1
assert out.latents.shape == (1, 4, 8, 8) and out.trajectory_x0.shape == (SD_STEPS, 1, 4, 8, 8)
assert torch.equal(sd.txt2img("a photo of a cat", **kw).images, out.images)  # same seed, same image
assert sd.make_sampler("ddim", 10).timesteps.tolist() == list(range(901, 0, -100))
print("timesteps of dpmpp_2m:", out.timesteps.tolist(), "of ddim:", sd.make_sampler("ddim", 10).timesteps.tolist())
show(out.images * 2 - 1, nrow=1, title="random weights")

# %% [markdown]
# With the real weights (`v1-5-pruned-emaonly.safetensors`, not bundled) the same pipeline makes pictures; on a
# CPU that takes many minutes per 512x512 image, on a GPU seconds:
#
# ```bash
# python sample.py model=sd15 sd.checkpoint=/path/v1-5-pruned-emaonly.safetensors \
#     prompt="a photo of a cat" steps=30 sampler=dpmpp_2m guidance=7.5 seed=42 n=4
# ```
#
# ```python
# from diffusionlab.sd import StableDiffusion
#
# sd = StableDiffusion.from_single_file("v1-5-pruned-emaonly.safetensors", dtype=torch.bfloat16)
# image = sd.txt2img("a photo of a cat", steps=30, sampler="dpmpp_2m", guidance=7.5, seed=42).images[0]
# ```

# %%
print(f"walkthrough finished in {time.time() - START:.0f} s (fast mode: {FAST})")
