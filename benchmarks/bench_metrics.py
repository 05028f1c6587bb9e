"""Speed of the evaluation pieces on this machine: Inception feature extraction (images/s), FID and KID cost.

    python benchmarks/bench_metrics.py                       # offline TorchScript Inception from ../shared
    python benchmarks/bench_metrics.py --batches 5 --repeats 3 --json bench_metrics.json

Rows (batch 50 of 28x28 grayscale images, so the resize to 299x299 is included):
- ``inception torchscript fp32``: the offline FID Inception as the TorchScript graph (the reference), on the
  whole batch at once and in batches of 8 (small batches keep activations in cache: a fairer peer);
- ``inception folded fp32``: the default extractor, the same network with batch norms folded, a grayscale
  first conv, channels-last, pools moved after their 1x1 convs, three stages run on a few images at a time
  (:mod:`diffusionlab.metrics.inception_folded`) and 48 of its convolutions by Winograd
  (:mod:`diffusionlab.metrics.winograd`), its speed-up over the TorchScript graph and its largest per-image
  relative feature deviation ``|f - f_ref| / |f_ref|`` from it (must stay < 1e-3); ``without Winograd``: the
  same with direct convolutions only;
- lossy variants, on record but not used: the TorchScript graph and the folded network (direct convolutions) under
  ``torch.autocast('cpu', torch.bfloat16)``, and the folded network in float32 with oneDNN rounding its
  convolutions' inputs to bf16 (``torch.backends.mkldnn.conv.fp32_precision = "bf16"``), each with its largest
  per-image relative feature deviation from the TorchScript graph (FID is not computed this way: > 1e-3);
- ``float32 ceiling``: the Inception's FLOPs per image (``torch.utils.flop_counter``: 11.4 G at 299x299) at
  the rate of its fastest convolution measured in the same run (Mixed_5b's 5x5, batch 64, all threads; at
  or above a float32 matmul's rate here): the images/s a direct float32 extractor would reach with every
  FLOP at that rate, its ratio to the TorchScript graph, and the folded network's share of it (above 1 with
  Winograd, which needs fewer products);
- ``torchscript, allocator defaults``: the TorchScript graph in a child process with glibc's and PyTorch's
  allocator defaults (``DIFFUSIONLAB_TUNE_ALLOCATOR=0``): the FID extractor as the framework ran it before the
  speed work of issue 13, so ``folded / that`` is the speed-up a user of the framework sees. The child runs
  before and after the in-process rows and the faster of its two runs is kept;
- ``inception torch-fidelity fp32``: torch-fidelity's eager network holding the same weights;
- ``domain classifier``: the MNIST CNN's features (random weights: speed only);
- ``fid 2048-d`` / ``kid 100x1000``: seconds for one FID (2048 x 2048 eigenvalue problem, independent of n)
  and one KID at the default subsets.
Each row is timed ``--repeats`` times after a warm-up batch; the fastest repeat is kept (the machine is shared).
The TorchScript graph and the folded network with and without Winograd are timed in turns, ``--repeats`` + 1
rounds, so that their ratios see the same moments of the machine. The process runs with the CPU allocator the
entry points use (:mod:`diffusionlab.utils.allocator`, printed in the header); the TorchScript graph gains the
most from it (its activations at batch 50 are up to 276 MB): ``DIFFUSIONLAB_TUNE_ALLOCATOR=0`` measures all
rows with glibc's and PyTorch's defaults.
"""

from __future__ import annotations

from diffusionlab.utils import allocator

allocator.tune_cpu_allocator()  # before torch is imported; the same for every peer timed here

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WEIGHTS = ROOT.parent / "shared" / "weights" / "inception-2015-12-05-pool3.torchscript.pt"


def images_per_second(fn, images: torch.Tensor, batches: int, repeats: int) -> float:
    """Images per second of ``fn`` on ``images``: the fastest of ``repeats`` runs of ``batches`` calls after a
    warm-up call (TorchScript profiles its first calls)."""
    return alternating_images_per_second({"fn": fn}, images, batches, repeats)["fn"]


def alternating_images_per_second(fns: dict, images: torch.Tensor, batches: int, repeats: int) -> dict:
    """``images_per_second`` of each of ``fns`` (name -> callable) timed in turns, ``fn1, fn2, fn3, fn1, ...``,
    so that a slow phase of a shared machine costs each the same; the fastest repeat of each is kept."""
    best = dict.fromkeys(fns, float("inf"))
    with torch.inference_mode():
        for fn in fns.values():
            fn(images)  # warm-up
        for _ in range(repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                for _ in range(batches):
                    fn(images)
                best[name] = min(best[name], time.perf_counter() - start)
    return {name: batches * images.shape[0] / t for name, t in best.items()}


def seconds(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def graph_with_allocator_defaults(args) -> float:
    """Images/s of the TorchScript graph in a child process with the allocator defaults (this process's
    settings are not inherited: ``THP_MEM_ALLOC_ENABLE`` is dropped from its environment)."""
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    env[allocator.SWITCH] = "0"
    cmd = [sys.executable, __file__, "--graph-only", "--weights", args.weights, "--batch", str(args.batch)]
    cmd += ["--batches", str(args.batches), "--repeats", str(args.repeats)]
    cmd += ["--threads", str(args.threads)] if args.threads else []
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the allocator-defaults child failed:\n{done.stderr[-2000:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["images_per_s"])


def fastest_layer_flops_per_second(repeats: int) -> float:
    """FLOP/s of the Inception's fastest float32 convolution on this machine (Mixed_5b's 5x5: 48 -> 64 channels
    at 35x35, batch 64, channels-last; wall clock, all threads, best of ``repeats``)."""
    x = torch.randn(64, 48, 35, 35).contiguous(memory_format=torch.channels_last)
    w = torch.randn(64, 48, 5, 5).contiguous(memory_format=torch.channels_last)
    flops = 2 * 64 * 35 * 35 * 64 * 48 * 25
    return flops / seconds(lambda: torch.nn.functional.conv2d(x, w, padding=2), repeats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=os.environ.get("DIFFUSIONLAB_INCEPTION_WEIGHTS", str(DEFAULT_WEIGHTS)))
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--batches", type=int, default=2, help="timed batches per repeat")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--graph-only", action="store_true", help="time only the TorchScript graph, print one JSON line")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch, 1, 28, 28), dtype=torch.uint8, generator=g)
    if args.graph_only:
        from diffusionlab.metrics.features import load_inception

        graph = load_inception(args.weights, folded=False)
        rate = images_per_second(graph, images, args.batches, args.repeats + 1)  # as many runs as the folded rows
        print(json.dumps({"images_per_s": rate, "allocator": allocator.describe()}))
        return
    defaults_rates = [graph_with_allocator_defaults(args)]

    from diffusionlab.metrics import scores
    from diffusionlab.metrics.classifier import ClassifierFeatures, DomainClassifier
    from diffusionlab.metrics.features import (
        load_inception,
        torch_fidelity_skeleton,
        torch_fidelity_weights_from_torchscript,
    )
    from diffusionlab.metrics.inception_folded import FoldedInceptionNet
    from diffusionlab.utils import hardware
    from diffusionlab.utils.io import atomic_write_json

    ts = load_inception(args.weights, folded=False)
    folded = load_inception(args.weights)
    direct = FoldedInceptionNet(torch_fidelity_skeleton(), with_logits=False, winograd=False)
    direct.load_state_dict(folded.net.state_dict())
    rows: dict[str, float] = {}

    rows.update(
        alternating_images_per_second(
            {
                "inception torchscript fp32 (img/s)": ts,
                "inception folded fp32 (img/s)": folded,
                "inception folded fp32 without Winograd (img/s)": direct,
            },
            images,
            args.batches,
            args.repeats + 1,
        )
    )
    speedup = rows["inception folded fp32 (img/s)"] / rows["inception torchscript fp32 (img/s)"]
    rows["folded / torchscript (x)"] = speedup
    rows["folded without Winograd / torchscript (x)"] = (
        rows["inception folded fp32 without Winograd (img/s)"] / rows["inception torchscript fp32 (img/s)"]
    )

    defaults_rates.append(graph_with_allocator_defaults(args))
    rows["inception torchscript fp32, allocator defaults (img/s)"] = max(defaults_rates)
    rows["folded / torchscript with allocator defaults (x)"] = (
        rows["inception folded fp32 (img/s)"] / rows["inception torchscript fp32, allocator defaults (img/s)"]
    )

    def in_chunks_of_8(x):  # the TorchScript graph with the folded net's trick of small batches (a fairer peer)
        return torch.cat([ts(part)[0] for part in x.split(8)]), None

    rows["inception torchscript fp32, batches of 8 (img/s)"] = images_per_second(
        in_chunks_of_8, images, args.batches, args.repeats
    )
    rows["folded / torchscript in batches of 8 (x)"] = (
        rows["inception folded fp32 (img/s)"] / rows["inception torchscript fp32, batches of 8 (img/s)"]
    )
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        direct(images[:1])  # the kernel's Winograd products are invisible to the counter: count the direct ones
    conv_flops = fastest_layer_flops_per_second(args.repeats + 3)
    ceiling = conv_flops / counter.get_total_flops()
    rows["float32 conv, fastest Inception layer (GFLOP/s)"] = conv_flops / 1e9
    rows["float32 ceiling: FLOPs/img at that rate (img/s)"] = ceiling
    rows["float32 ceiling / torchscript (x)"] = ceiling / rows["inception torchscript fp32 (img/s)"]
    rows["folded / float32 ceiling"] = rows["inception folded fp32 (img/s)"] / ceiling
    with torch.inference_mode():
        ref, fast = ts(images)[0], folded(images)[0]
    rows["folded max relative feature deviation"] = float(((fast - ref).norm(dim=1) / ref.norm(dim=1)).max())

    def relative_deviation(fn) -> float:
        with torch.inference_mode():
            feats = fn(images)[0].float()
        return float(((feats - ref).norm(dim=1) / ref.norm(dim=1)).max())

    def autocast_bf16(net):
        def run(x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return net(x)

        return run

    def onednn_bf16(x):  # float32 tensors, oneDNN rounds the convolutions' inputs to bf16 inside
        torch.backends.mkldnn.conv.fp32_precision = "bf16"
        try:
            return direct(x)
        finally:
            torch.backends.mkldnn.conv.fp32_precision = "none"

    # faster but not exact enough for FID (> 1e-3): measured so the trade-off is on record
    lossy = {
        "inception torchscript bf16 autocast": autocast_bf16(ts),
        "inception folded bf16 autocast": autocast_bf16(direct),
        "inception folded fp32, oneDNN bf16 convs": onednn_bf16,
    }
    for name, fn in lossy.items():
        try:
            rows[f"{name} (img/s)"] = images_per_second(fn, images, args.batches, args.repeats)
            rows[f"{name}: max relative feature deviation"] = relative_deviation(fn)
        except (RuntimeError, AttributeError) as err:  # bf16 kernels or the precision switch missing
            print(f"{name} failed: {err}")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tf.pth"
        torch.save(torch_fidelity_weights_from_torchscript(args.weights), path)
        tf = load_inception(path, folded=False)
    rows["inception torch-fidelity fp32 (img/s)"] = images_per_second(tf, images, args.batches, args.repeats)

    torch.manual_seed(0)
    clf = ClassifierFeatures(DomainClassifier(), "mnist")
    big = torch.randint(0, 256, (500, 1, 28, 28), dtype=torch.uint8, generator=g)
    rows["domain classifier (img/s)"] = images_per_second(clf, big, args.batches, args.repeats)

    real = torch.rand(1000, 2048, generator=g)
    fake = torch.rand(1000, 2048, generator=g) + 0.01
    rows["fid 2048-d, n=1000 (s)"] = seconds(lambda: scores.fid(real, fake), 1)
    rows["kid 100 subsets x 1000 (s)"] = seconds(lambda: scores.kid(real, fake), 1)

    print(
        f"metrics benchmark: batch {args.batch}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
        + allocator.describe()
        + "; "
        + hardware.describe_cpu()
    )
    for name, value in rows.items():
        print(f"  {name:<66} {value:10.2e}" if "deviation" in name else f"  {name:<66} {value:10.3f}")
    if args.json:
        atomic_write_json(args.json, rows)


if __name__ == "__main__":
    main()
