"""Training speed and memory of our denoising nets against diffusers' UNet2DModel of the same architecture.

    python benchmarks/bench_unet.py            # eager cells + torch.compile for bf16/channels_last (~30 min)
    python benchmarks/bench_unet.py --quick    # channels_last only, 3 timed steps, no compile (~5 min)
    python benchmarks/bench_unet.py --profile ours --models unet_small_28 --precision bf16   # top ops
    python benchmarks/bench_unet.py --quick --rounds 2 --paired 8    # make bench: + the ratio in one process

Models: ``unet_small_28``, experiment=mnist_fast's network (``unet_small`` at native 28x28, attention at 7x7),
the default MNIST model ``configs/model/unet_small.yaml`` at 32x32 (diffusers' ``UNet2DModel`` built
from :func:`diffusionlab.nets.diffusers_unet2d_config`, asserted to have the same parameter count) and
``configs/model/context_unet.yaml`` at 28x28 (no diffusers counterpart: no ratio).

One training step = forward + MSE loss + backward + AdamW step (``fused=True``, the same for both) on a random
batch (content does not change the cost). Every (model, precision, channels_last, compile) cell runs in its own
subprocess, ours and diffusers' one after the other (``--rounds N``: the whole list N times over, each cell's
fastest run kept; the bf16 peak is measured before and after, the higher kept). Two rates per cell:

* ``img/s``: wall clock, batch / median step time;
* ``img/cpu-s``: batch / median CPU time of the step (``time.process_time``). On a machine shared with other
  jobs this is the stable number (wall time includes the time the scheduler gave to others); with one thread
  (the default, ``--threads``) it is the single-core speed. Ratios use it.

``--paired N``: after the table, ours and diffusers' bf16 channels-last steps alternate inside one process for
N rounds and each round's ratio is printed with their median. On a shared VM the same step moves by 10% within
minutes, so the table's ratio (two processes minutes apart) carries that noise; the paired one does not.

``fwd/cpu-s``: images per CPU-second of the inference forward pass (eval mode, ``torch.inference_mode``): the
cost of one sampling step.

``conv%``: the share of one profiled training step's CPU time spent in convolution kernels (forward and
backward; ops with ``conv`` in their name, ours' ``diffusionlab_conv::weight_grad`` included). ``bound`` = ratio
/ ours' ``conv%`` is the ratio ours would reach if everything else (normalisation, activations, attention,
adds, the optimizer) took no time: where it is below a goal, no work outside the convolutions can meet that
goal on this machine. Both networks run their convolutions through oneDNN, except that on a CPU with
AVX512-BF16 and no AMX ours' 3x3 weight gradients come from :mod:`diffusionlab.nets.conv_weight_grad`
(``DIFFUSIONLAB_CONV_WEIGHT_GRAD=0`` measures ours without it).

Memory, two columns per side:

* ``act MB``: what autograd saves for the backward in one training forward (``saved_tensors_hooks``, unique
  storages, parameters excluded; autocast's bf16 weight copies included), the activation memory of training;
  it does not depend on the allocator and the ``act`` ratio uses it (not measured for compiled cells);
* ``MB``: after the first (FLOP-counting) step the subprocess resets its peak-RSS counter
  (``echo 5 > /proc/self/clear_refs``) and reports ``VmHWM - VmRSS`` from ``/proc/self/status`` after the
  timed steps: the extra resident memory of the later steps. It depends on how much freed memory the C
  allocator kept from the first step (then reused without growing RSS), so it is not a fair comparison: on
  2026-12-06 it read 296 MB for ours against 144 for diffusers' where the saved activations were 477 against
  761 MB. ``tracemalloc`` cannot be used: PyTorch's CPU allocator bypasses Python's.

Every process (ours and diffusers' alike) sets the CPU allocator as the entry points do
(:mod:`diffusionlab.utils.allocator`, printed under the table); ``DIFFUSIONLAB_TUNE_ALLOCATOR=0`` measures with
glibc's and PyTorch's defaults, where each step faults its activations in anew.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from diffusionlab.utils import allocator  # no torch: tuned in __main__ before torch is imported

ROOT = Path(__file__).resolve().parents[1]
MODEL_CONFIGS = ROOT / "configs" / "model"
DATA = {  # what the default MNIST data config gives the model configs
    "unet_small": {"channels": 1, "num_classes": 10, "conditional": True, "image_size": 32},
    "unet_small_28": {"channels": 1, "num_classes": 10, "conditional": True, "image_size": 28},
    "context_unet": {"channels": 1, "num_classes": 10, "conditional": True, "image_size": 28},
}
# bench name -> (model config, overrides): unet_small_28 is experiment=mnist_fast's network (native 28x28)
MODELS = {
    "unet_small": ("unet_small", {}),
    "unet_small_28": ("unet_small", {"attention_resolutions": [7]}),
    "context_unet": ("context_unet", {}),
}
NUM_TIMESTEPS = 400


# ----------------------------------------------------------------------------------------------- worker


def build(model: str, impl: str):
    """``(net, forward)`` where ``forward(x, t, y) -> eps`` for ``impl`` in ``ours`` / ``diffusers``."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from diffusionlab.cli.resolvers import register_resolvers

    register_resolvers()  # the model configs' ${conditional_classes:...}
    root = OmegaConf.create(
        {
            "data": DATA[model],
            "diffusion": {"num_timesteps": NUM_TIMESTEPS},
            "model": OmegaConf.merge(OmegaConf.load(MODEL_CONFIGS / f"{MODELS[model][0]}.yaml"), MODELS[model][1]),
        }
    )
    if impl == "ours":
        net = instantiate(root.model)
        return net, lambda x, t, y: net(x, t, y)
    from diffusers import UNet2DModel

    from diffusionlab.nets import count_parameters, diffusers_unet2d_config

    kwargs = OmegaConf.to_container(root.model, resolve=True)
    kwargs.pop("_target_")
    net = UNet2DModel(**diffusers_unet2d_config(**kwargs))
    with torch.device("meta"):
        ours = instantiate(root.model)
    if count_parameters(net) != count_parameters(ours):
        raise RuntimeError(f"diffusers model has {count_parameters(net)} parameters, ours {count_parameters(ours)}")
    return net, lambda x, t, y: net(x, t, class_labels=y, return_dict=False)[0]


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def setup(spec: dict):
    """``(net, forward, train_step, (x, t, y))`` of one cell: the model, a random batch and the training step."""
    import torch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    if spec["impl"] == "ours":
        from diffusionlab.nets import conv_weight_grad

        conv_weight_grad.available()  # built, and its FLOP formula registered, before the counting step
    net, forward = build(spec["model"], spec["impl"])
    size, batch = DATA[spec["model"]]["image_size"], spec["batch"]
    x = torch.randn(batch, 1, size, size)
    target = torch.randn_like(x)
    t = torch.randint(0, NUM_TIMESTEPS, (batch,))
    y = torch.randint(0, DATA[spec["model"]]["num_classes"] + 1, (batch,))
    if spec["channels_last"]:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if spec["compile"]:
        forward = torch.compile(forward)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
    train_step = make_train_step(forward, opt, (x, t, y), target, bf16=spec["precision"] == "bf16")
    return net, forward, train_step, (x, t, y)


def make_train_step(forward, opt, inputs: tuple, target, bf16: bool):
    """The timed step: ``forward(*inputs)`` (bf16 autocast when ``bf16``), MSE to ``target``, backward, ``opt``."""
    import torch
    import torch.nn.functional as F

    def train_step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.mse_loss(forward(*inputs).float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return train_step


def alternating_ms(variants: dict, rounds: int) -> dict:
    """CPU ms per step of each variant in alternating rounds inside one process: ``variants`` maps a name to
    ``(prepare, train_step)``; every round runs them in turn (the order reversed every other round), each as
    ``prepare()``, one untimed step, then the median CPU time of 3 steps. Returns name -> per-round ms. One
    process and CPU time, so a slow spell of a shared machine hits every variant alike."""
    per_round: dict = {name: [] for name in variants}
    for r in range(rounds):
        for name in list(variants) if r % 2 == 0 else list(reversed(variants)):
            prepare, train_step = variants[name]
            prepare()
            train_step()
            times = []
            for _ in range(3):
                start = time.process_time()
                train_step()
                times.append(time.process_time() - start)
            per_round[name].append(1e3 * statistics.median(times))
    return per_round


def alternating_step_ms(model: str, rounds: int, switch) -> tuple[float, float]:
    """Ours' training step of ``model`` (bf16, channels_last, batch 128, one thread) with ``switch(False)`` and
    ``switch(True)`` in alternating rounds (:func:`alternating_ms`): the medians over the rounds in ms,
    ``(off, on)``."""
    spec = dict(model=model, impl="ours", precision="bf16", channels_last=True, compile=False, batch=128, threads=1)
    _, _, train_step, _ = setup(spec)
    for _ in range(2):
        train_step()
    per_round = alternating_ms({s: (lambda s=s: switch(s), train_step) for s in (False, True)}, rounds)
    return tuple(statistics.median(per_round[s]) for s in (False, True))


def paired_ratios(model: str, rounds: int, batch: int = 128, threads: int = 1) -> list[float]:
    """Ours / diffusers' training speed (bf16, channels_last, ``threads`` threads) with both networks in this one
    process, their steps alternating (:func:`alternating_ms`): each round's ratio diffusers ms / ours ms. The
    table's cells run in separate processes minutes apart, so the load of a shared machine moves their ratio;
    here both sides of each round's ratio are measured within seconds of each other."""
    steps = {}
    for impl in ("ours", "diffusers"):
        spec = dict(model=model, impl=impl, precision="bf16", channels_last=True, compile=False, batch=batch)
        _, _, steps[impl], _ = setup({**spec, "threads": threads})
        for _ in range(2):
            steps[impl]()
    per_round = alternating_ms({impl: (lambda: None, step) for impl, step in steps.items()}, rounds)
    return [theirs / ours for ours, theirs in zip(per_round["ours"], per_round["diffusers"])]


def op_averages(train_step, steps: int):
    """``torch.profiler``'s per-op CPU times (``key_averages()``) over ``steps`` calls of ``train_step``."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            train_step()
    return prof.key_averages()


def profile(spec: dict, rows: int = 20) -> str:
    """Per-op CPU time of ``spec["steps"]`` training steps after 2 warm-up steps (``torch.profiler``): the
    table of the ``rows`` ops with the most self CPU time."""
    _, _, train_step, _ = setup(spec)
    for _ in range(2):
        train_step()
    return op_averages(train_step, spec["steps"]).table(sort_by="self_cpu_time_total", row_limit=rows)


def worker(spec: dict) -> dict:
    """Run one cell in this process and return its measurements."""
    import torch

    net, forward, train_step, (x, t, y) = setup(spec)
    batch = spec["batch"]
    bf16 = spec["precision"] == "bf16"

    def timed(fn, n):
        wall, cpu = [], []
        for _ in range(n):
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
        return statistics.median(wall), statistics.median(cpu)

    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as flops:
        train_step()
    flop_per_image = flops.get_total_flops() / batch
    try:
        Path("/proc/self/clear_refs").write_text("5")
        peak_reset = True
    except OSError:  # not allowed: VmHWM is then the lifetime peak (an upper bound)
        peak_reset = False
    base = _status_kb("VmRSS")
    net.train()
    w0 = time.perf_counter()
    for _ in range(spec["warmup"]):
        train_step()
    warmup_s = time.perf_counter() - w0
    wall, cpu = timed(train_step, spec["steps"])
    peak_mb = (_status_kb("VmHWM") - base) / 1024
    conv_share = convolution_share(train_step)
    act_mb = None if spec["compile"] else saved_activation_mb(forward, list(net.parameters()), (x, t, y), bf16)
    fwd_wall = fwd_cpu = None
    if not spec["compile"]:  # eval + inference mode would compile a second graph: skipped
        net.eval()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            forward(x, t, y)
            fwd_wall, fwd_cpu = timed(lambda: forward(x, t, y), spec["steps"])
    return {
        "images_per_s": batch / wall,
        "images_per_cpu_s": batch / cpu,
        "fwd_images_per_s": batch / fwd_wall if fwd_wall else None,
        "fwd_images_per_cpu_s": batch / fwd_cpu if fwd_cpu else None,
        "peak_mb": peak_mb,
        "activation_mb": act_mb,
        "peak_reset": peak_reset,
        "warmup_s": warmup_s,
        "gflop_per_image": flop_per_image / 1e9,
        "tflops": flop_per_image * batch / cpu / 1e12,  # achieved per CPU-second (= per core)
        "conv_share": conv_share,
    }


def saved_activation_mb(forward, params, inputs: tuple, bf16: bool) -> float:
    """MB of the tensors autograd saves for the backward in one ``forward(*inputs)`` (bf16 autocast when
    ``bf16``): unique storages, those of ``params`` excluded. The graph is dropped unused."""
    import torch

    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            forward(*inputs)
    for p in params:
        saved.pop(p.untyped_storage().data_ptr(), None)
    return sum(saved.values()) / 1e6


def convolution_share(train_step) -> float:
    """Share of one training step's CPU time (``torch.profiler``, self time of every op) spent in convolution
    kernels, forward and backward (ops whose name contains ``conv``: ``mkldnn_convolution``,
    ``convolution_backward``, ...): with equal convolutions on both sides, ``ratio / share`` bounds what
    ours / diffusers can reach by speeding up everything else."""
    events = op_averages(train_step, 1)
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if "conv" in e.key.lower())
    return conv / total if total else float("nan")


def bf16_matmul_peak(threads: int, n: int = 4096, repeats: int = 5) -> float:
    """Measured bf16 matmul TFLOP/s per CPU-second (``n x n @ n x n``, best of ``repeats``): the peak the
    table's '% peak' refers to."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, dtype=torch.bfloat16), torch.randn(n, n, dtype=torch.bfloat16)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        c0 = time.process_time()
        a @ b
        best = min(best, time.process_time() - c0)
    return 2 * n**3 / best / 1e12


# ----------------------------------------------------------------------------------------------- driver


def run_cell(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p),
    }
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1][:150]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def faster(a: dict | None, b: dict) -> dict:
    """The run of the two with more images per CPU-second (a run that failed loses; None: no run yet)."""
    if a is None or "error" in a:
        return b
    if "error" in b:
        return a
    return b if b["images_per_cpu_s"] > a["images_per_cpu_s"] else a


def _num(r: dict | None, key: str, pattern: str) -> str:
    if r is None:
        return "-"
    if "error" in r:
        return "error"
    return "-" if r[key] is None else pattern.format(r[key])


def print_table(rows: list[dict], header_note: str, peak: float) -> None:
    cols = (
        f"{'model':<13} {'prec':<4} {'ch_last':<7} {'compile':<7} | {'img/s':>6} {'img/cpu-s':>9} {'fwd/cpu-s':>9} "
        f"{'act MB':>6} {'MB':>5} {'conv%':>5} | {'img/s':>6} {'img/cpu-s':>9} {'fwd/cpu-s':>9} {'act MB':>6} "
        f"{'MB':>5} {'conv%':>5} | {'ratio':>5} {'bound':>5} {'fwd':>5} {'act':>5} | {'GFLOP/img':>9} {'TFLOP/s':>7} "
        f"{'% peak':>6}"
    )
    print(header_note)
    print(f"measured bf16 matmul peak: {peak:.3f} TFLOP/s per core (4096^3, same run)")
    print(f"{'':<36} | {'ours':^46} | {'diffusers UNet2DModel':^46} | {'ours / diffusers':^23} | {'ours':^25}")
    print(cols)
    print("-" * len(cols))
    for row in rows:
        ours, theirs = row["ours"], row["diffusers"]
        ratio = bound = fwd = act = "-"
        if theirs and "error" not in theirs and "error" not in ours:
            speedup = ours["images_per_cpu_s"] / theirs["images_per_cpu_s"]
            ratio, bound = f"{speedup:.2f}", f"{speedup / ours['conv_share']:.2f}"
            if ours["fwd_images_per_cpu_s"] and theirs["fwd_images_per_cpu_s"]:
                fwd = f"{ours['fwd_images_per_cpu_s'] / theirs['fwd_images_per_cpu_s']:.2f}"
            if ours.get("activation_mb") and theirs.get("activation_mb"):
                act = f"{ours['activation_mb'] / theirs['activation_mb']:.2f}"
        cells = []
        for r in (ours, theirs):
            cells.append(
                f"{_num(r, 'images_per_s', '{:.1f}'):>6} {_num(r, 'images_per_cpu_s', '{:.1f}'):>9} "
                f"{_num(r, 'fwd_images_per_cpu_s', '{:.1f}'):>9} {_num(r, 'activation_mb', '{:.0f}'):>6} "
                f"{_num(r, 'peak_mb', '{:.0f}'):>5} "
                f"{_num(r, 'conv_share', '{:.0%}'):>5}"
            )
        gflop = _num(ours, "gflop_per_image", "{:.3f}")
        tflops = _num(ours, "tflops", "{:.3f}")
        share = "-" if "error" in ours else f"{100 * ours['tflops'] / peak:.1f}"
        print(
            f"{row['model']:<13} {row['precision']:<4} {str(row['channels_last']):<7} {str(row['compile']):<7} | "
            f"{cells[0]} | {cells[1]} | {ratio:>5} {bound:>5} {fwd:>5} {act:>5} | {gflop:>9} {tflops:>7} {share:>6}"
        )
        for name, r in (("ours", ours), ("diffusers", theirs)):
            if r and "error" in r:
                print(f"    {name}: {r['error']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="channels_last only, 3 timed steps, no compile")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per cell (default 5, quick 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1, see above)")
    parser.add_argument(
        "--compile",
        choices=["auto", "all", "off"],
        default="auto",
        help="auto: torch.compile only for bf16 + channels_last (off with --quick); all: every cell",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every cell this many times, ours and diffusers' in turn, and keep each one's fastest run "
        "(a slow spell of a shared machine then hits both, not whichever ran second)",
    )
    parser.add_argument(
        "--paired",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="after the table: ours / diffusers bf16 + channels_last with both networks in one process, their "
        "steps alternating for ROUNDS rounds (see paired_ratios); the median of the rounds' ratios",
    )
    parser.add_argument("--models", nargs="+", default=list(DATA), choices=list(DATA))
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    parser.add_argument(
        "--profile",
        choices=["ours", "diffusers"],
        default=None,
        help="instead of the table: torch.profiler's top ops (self CPU time) of the first --models entry's "
        "training step in --precision, channels_last, --steps steps",
    )
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16", help="for --profile")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    steps = args.steps or (3 if args.quick else 5)
    if args.profile:
        spec = dict(model=args.models[0], impl=args.profile, precision=args.precision, channels_last=True)
        print(profile({**spec, "compile": False, "batch": args.batch, "steps": steps, "threads": args.threads}))
        return
    from tqdm import tqdm

    layouts = (True,) if args.quick else (False, True)
    cells = [(m, p, cl, False) for m in args.models for p in ("fp32", "bf16") for cl in layouts]
    if args.compile == "all":
        cells += [(m, p, cl, True) for (m, p, cl, _) in list(cells)]
    elif args.compile == "auto" and not args.quick:
        cells += [(m, "bf16", True, True) for m in args.models]
    jobs = [
        (cell, impl) for cell in cells for impl in ("ours", "diffusers") if cell[0] != "context_unet" or impl == "ours"
    ]
    import torch

    from diffusionlab.utils import hardware

    peak = bf16_matmul_peak(args.threads)
    results: dict[tuple, dict] = {}
    for cell, impl in tqdm(jobs * args.rounds, desc="benchmark runs", unit="run"):
        model, precision, cl, comp = cell
        spec = dict(
            model=model,
            impl=impl,
            precision=precision,
            channels_last=cl,
            compile=comp,
            batch=args.batch,
            steps=steps,
            warmup=2,
            threads=args.threads,
        )
        result = run_cell(spec, timeout=2400 if comp else 900)
        results[(cell, impl)] = faster(results.get((cell, impl)), result)
    rows = [
        {
            "model": m,
            "precision": p,
            "channels_last": cl,
            "compile": c,
            "ours": results[((m, p, cl, c), "ours")],
            "diffusers": results.get(((m, p, cl, c), "diffusers")),
        }
        for (m, p, cl, c) in cells
    ]
    peak = max(peak, bf16_matmul_peak(args.threads))  # before and after the runs: the better of the two
    rounds = f", fastest of {args.rounds} alternating rounds" if args.rounds > 1 else ""
    print_table(
        rows,
        f"\ntraining step (fwd + bwd + AdamW), batch {args.batch}, {args.threads} thread(s), median of {steps} "
        f"steps{rounds}, torch {torch.__version__}; act MB = tensors saved for the backward (the act ratio); MB = "
        "peak RSS increase after the first step (allocator-dependent); ratios from img/cpu-s; "
        "TFLOP/s = GFLOP per training image (torch.utils.flop_counter) x img/cpu-s; conv% = share of a step's CPU "
        "time in convolutions (torch.profiler); bound = ratio / ours' conv%: ours / diffusers if everything but "
        "ours' convolutions took no time; " + allocator.describe() + "; " + hardware.describe_cpu(),
        peak,
    )
    if args.paired:
        print(
            f"\nours / diffusers, bf16 + channels_last, batch {args.batch}, {args.threads} thread(s), both in one "
            f"process, steps alternating ({args.paired} rounds of median-of-3 CPU times):"
        )
        for model in (m for m in args.models if m != "context_unet"):
            ratios = paired_ratios(model, args.paired, args.batch, args.threads)
            listed = " ".join(f"{r:.2f}" for r in ratios)
            print(f"  {model:<14} median {statistics.median(ratios):.2f}  (rounds: {listed})")
    if args.json:
        sys.path.insert(0, str(ROOT / "src"))
        from diffusionlab.utils.io import atomic_write_json

        atomic_write_json(args.json, rows)


if __name__ == "__main__":
    allocator.tune_cpu_allocator()  # before torch is imported; the same for every peer timed here
    main()
