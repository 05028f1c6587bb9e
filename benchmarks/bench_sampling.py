"""Sampling images/s: our UNet + samplers against diffusers' UNet2DModel + schedulers, same weights, same run.

The network is ``--model``: ``unet_small`` (configs/model/unet_small.yaml at 32x32, 10 classes, the default)
or ``unet_small_28`` (experiment=mnist_fast's network at native 28x28), built as ``bench_unet.py`` builds them.
diffusers' UNet2DModel of the identical architecture gets our random weights ported (nets.diffusers_compat),
so both compute the same function; the script checks the final samples agree before timing. Classifier-free guidance
(scale 2) runs cond + uncond in one batch in both.

    python benchmarks/bench_sampling.py [--model unet_small_28] [--batch 64]
        [--samplers ddim dpmpp_2m euler heun ddpm] [--bf16] [--channels-last]

``--bf16`` autocasts both networks (what ``sample.py precision=bf16-mixed`` does for ours); ``--channels-last``
puts both networks and their inputs in channels-last memory format (``channels_last=true``).

Two rates per row, each the best of ``--repeats`` interleaved runs: images per CPU-second (``time.process_time``,
steady on a shared machine, but at two threads it also counts OpenMP's threads spinning between ops, which
counts against the side with more small ops) and images per wall-clock second (what a user waits for), each
with its ratio diffusers / ours.

A second table times the samplers alone: the same loops around a network that costs next to nothing
(``0.1 * x``), so what is left is each sampler's own arithmetic, guidance combination and bookkeeping per step.
It runs on one thread: over these small tensors, CPU time at two threads counts OpenMP's threads waiting for
work, and the same rows moved by 2x between repetitions in one process (DDIM 1.17x then 2.26x, 2026-12-06)
where one thread read 1.24x and 1.27x.

Both sides run in one process with the CPU allocator the entry points use (:mod:`diffusionlab.utils.allocator`,
printed in the header; ``DIFFUSIONLAB_TUNE_ALLOCATOR=0`` for the defaults).
"""

from __future__ import annotations

from diffusionlab.utils import allocator

allocator.tune_cpu_allocator()  # before torch is imported; the same for every peer timed here

import argparse
import inspect
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from diffusionlab.diffusion import NoiseSchedule
from diffusionlab.nets.diffusers_compat import convert_unet2d_state_dict
from diffusionlab.sampling import classifier_free_guidance, get_sampler
from diffusionlab.utils import hardware

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_unet import DATA, build  # noqa: E402  (the same networks as the training bench)

NUM_CLASSES = 10  # label 10 = the null class of classifier-free guidance

STEPS = {"ddim": 50, "dpmpp_2m": 20, "euler": 30, "heun": 15, "ddpm": 100}


def diffusers_scheduler(name: str):
    import diffusers as d

    common = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    if name == "ddim":
        return d.DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True, timestep_spacing="leading")
    if name == "ddpm":
        return d.DDPMScheduler(**common, clip_sample=False, timestep_spacing="leading")
    if name == "dpmpp_2m":
        return d.DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", timestep_spacing="leading")
    if name == "euler":
        return d.EulerDiscreteScheduler(**common, timestep_spacing="leading")
    return d.HeunDiscreteScheduler(**common, timestep_spacing="leading")


OVERHEAD_REPEATS = 15  # the sampler-overhead rows time 7-65 ms per run: best of 3 moved by 2x between runs


def ours(net, name, x_T, labels, steps, gen_seed):
    schedule = NoiseSchedule.from_name("linear", 1000)
    smp = get_sampler(name, schedule, steps)
    y_null = torch.full_like(labels, NUM_CLASSES)
    fn = classifier_free_guidance(lambda x, t, c: net(x, t, c), labels, y_null, 2.0)
    g = torch.Generator().manual_seed(gen_seed)
    return smp.sample(fn, smp.prepare_noise(x_T), generator=g, progress=False)


def theirs(model, name, x_T, labels, steps, gen_seed):
    sch = diffusers_scheduler(name)
    sch.set_timesteps(steps)
    x = x_T * sch.init_noise_sigma
    y = torch.cat([torch.full_like(labels, NUM_CLASSES), labels])
    g = torch.Generator().manual_seed(gen_seed)
    takes_generator = "generator" in inspect.signature(sch.step).parameters  # Heun's step has none
    for t in sch.timesteps:
        xin = sch.scale_model_input(torch.cat([x, x]), t)
        out = model(xin, t, class_labels=y).sample
        u, c = out.chunk(2)
        extra = {"generator": g} if takes_generator else {}
        x = sch.step(u + 2.0 * (c - u), t, x, **extra).prev_sample
    return x


class NullNet(torch.nn.Module):
    """A stand-in network of negligible cost, ``0.1 * x``, callable as ours (``net(x, t, y)``) and as diffusers'
    (``model(x, t, class_labels=y).sample``)."""

    def forward(self, x, t, y=None, class_labels=None):
        out = 0.1 * x
        return SimpleNamespace(sample=out) if class_labels is not None else out


def timed(fn, repeats: int, *args) -> tuple[float, float, torch.Tensor]:
    """Best CPU time (``time.process_time``: stable on a shared machine; with one thread = core-seconds) and best
    wall time of ``repeats`` calls, and the last output."""
    best, best_wall, out = float("inf"), float("inf"), None
    for _ in range(repeats):
        t0, w0 = time.process_time(), time.perf_counter()
        out = fn(*args)
        best, best_wall = min(best, time.process_time() - t0), min(best_wall, time.perf_counter() - w0)
    return best, best_wall, out


def interleaved(
    repeats: int, a: tuple, b: tuple
) -> tuple[tuple[float, float], tuple[float, float], torch.Tensor, torch.Tensor]:
    """Best (CPU, wall) times of ``a[0](*a[1:])`` and ``b[0](*b[1:])`` timed in turn (a, b, a, b, ...), so a slow
    spell of the machine lands on both rather than on whichever ran second; returns (times a, times b, out a,
    out b)."""
    best_a, best_b = [float("inf")] * 2, [float("inf")] * 2
    out_a = out_b = None
    for _ in range(repeats):
        *t, out_a = timed(a[0], 1, *a[1:])
        best_a = [min(u, v) for u, v in zip(best_a, t)]
        *t, out_b = timed(b[0], 1, *b[1:])
        best_b = [min(u, v) for u, v in zip(best_b, t)]
    return tuple(best_a), tuple(best_b), out_a, out_b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["unet_small", "unet_small_28"], default="unet_small")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--samplers", nargs="+", default=list(STEPS), choices=list(STEPS))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for both")
    ap.add_argument("--channels-last", action="store_true", help="channels-last weights and inputs for both")
    args = ap.parse_args()

    torch.manual_seed(0)
    net, _ = build(args.model, "ours")
    model, _ = build(args.model, "diffusers")
    # port diffusers' random init into ours so both compute the same function
    net.load_state_dict(convert_unet2d_state_dict(model.state_dict(), flip_sin_to_cos=False))
    net.eval()
    model.eval()
    size = DATA[args.model]["image_size"]
    x_T = torch.randn(args.batch, 1, size, size)
    if args.channels_last:
        net, model = (m.to(memory_format=torch.channels_last) for m in (net, model))
        x_T = x_T.contiguous(memory_format=torch.channels_last)
    labels = torch.arange(args.batch) % 10
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if args.bf16 else torch.autocast("cpu", enabled=False)
    print(
        f"sampling {args.model} ({size}x{size}), batch {args.batch}, CFG scale 2, {torch.get_num_threads()} threads, "
        f"{'bf16 autocast' if args.bf16 else 'float32'}{', channels_last' if args.channels_last else ''}; "
        + allocator.describe()
        + "; "
        + hardware.describe_cpu()
    )
    head = (
        f"{'ours img/CPU-s':>15} {'diffusers img/CPU-s':>20} {'ratio':>6} "
        f"{'ours img/s':>11} {'diffusers img/s':>16} {'wall ratio':>10} {'max|diff|':>10}"
    )
    print(f"{'sampler':10} {'steps':>5} {head}")
    with torch.no_grad(), ctx:
        # Warm-up, untimed: whichever sampler came first ran 10-30% slower for ours (2026-12-05: DPM-Solver++
        # 1.60x first vs 2.77-2.93x second), even as the better of two repeats.
        first = args.samplers[0]
        ours(net, first, x_T, labels, STEPS[first], 1)
        theirs(model, first, x_T, labels, STEPS[first], 1)
        for name in args.samplers:
            steps = STEPS[name]
            (t_ours, w_ours), (t_them, w_them), a, b = interleaved(
                args.repeats, (ours, net, name, x_T, labels, steps, 1), (theirs, model, name, x_T, labels, steps, 1)
            )
            diff = (a.float() - b.float()).abs().max().item()
            print(
                f"{name:10} {steps:5d} {args.batch / t_ours:15.2f} {args.batch / t_them:20.2f} "
                f"{t_them / t_ours:6.2f} {args.batch / w_ours:11.2f} {args.batch / w_them:16.2f} "
                f"{w_them / w_ours:10.2f} {diff:10.2e}"
            )
        null = NullNet()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # see the module docstring
        print(f"\nsampler overhead (network replaced by 0.1 * x), CPU-ms per step, batch {args.batch}, 1 thread")
        print(f"{'sampler':10} {'steps':>5} {'ours':>8} {'diffusers':>10} {'ratio':>6}")
        for name in args.samplers:
            steps = STEPS[name]
            (t_ours, _), (t_them, _), _, _ = interleaved(  # cheap without a network: more repeats for milliseconds
                OVERHEAD_REPEATS, (ours, null, name, x_T, labels, steps, 1), (theirs, null, name, x_T, labels, steps, 1)
            )
            per_ours, per_them = 1e3 * t_ours / steps, 1e3 * t_them / steps
            print(f"{name:10} {steps:5d} {per_ours:8.3f} {per_them:10.3f} {t_them / t_ours:6.2f}")
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
