"""Our convolution weight-gradient kernel (``nets/conv_weight_grad.py``) against oneDNN's, alone and in a step.

    python benchmarks/bench_conv_weight_grad.py                       # both parts (~3 min)
    python benchmarks/bench_conv_weight_grad.py --no-step             # the per-shape table only (~30 s)
    python benchmarks/bench_conv_weight_grad.py --models unet_small unet_small_28 --rounds 8

Per shape: the weight and bias gradients of each 3x3 stride-1 convolution of ``unet_small`` at 32x32 (batch 128,
bf16, channels_last, one thread), by ``aten::convolution_backward`` (oneDNN) and by the kernel, each timed after
writing 96 MB elsewhere, so the inputs come from memory as they do inside a training step (found on L3 they
flatter a kernel that reads them in small pieces). Fastest of 5.

In a step: ``benchmarks/bench_unet.py``'s training step of ours (bf16, channels_last, batch 128, one thread),
the kernel switched off and on in alternating rounds inside one process (CPU time, median of 3 steps per
round); the ratio of the medians over the rounds is the step's speed-up. The kernel runs wherever the CPU has
``avx512_bf16`` here (``DIFFUSIONLAB_CONV_WEIGHT_GRAD=1``): on an AMX CPU this shows why ``auto`` leaves the
pass to oneDNN there.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial
from pathlib import Path

from diffusionlab.utils import allocator  # no torch: tuned in __main__ before torch is imported

# (input [N, Ci, H, W], Co): unet_small's 3x3 stride-1 convolutions at 32x32
SHAPES = [
    ((128, 32, 32, 32), 32),
    ((128, 64, 32, 32), 32),
    ((128, 64, 32, 32), 64),
    ((128, 96, 32, 32), 32),
    ((128, 64, 16, 16), 64),
    ((128, 128, 16, 16), 64),
    ((128, 96, 16, 16), 64),
    ((128, 64, 8, 8), 64),
    ((128, 128, 8, 8), 64),
    ((128, 32, 32, 32), 1),
]


def fastest(fn, flush, repeats: int = 5) -> float:
    """Fastest of ``repeats`` calls of ``fn`` (seconds), each after ``flush()``."""
    fn()
    times = []
    for _ in range(repeats):
        flush()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def shape_table() -> None:
    import torch

    evict = torch.empty(96 * 1024 * 1024 // 4)
    print(f"{'input':>20} {'Co':>3} | {'oneDNN ms':>9} {'GFLOP/s':>7} | {'ours ms':>8} {'GFLOP/s':>7} | {'ratio':>5}")
    total = [0.0, 0.0]
    for shape, co in SHAPES:
        x = torch.randn(shape).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        w = torch.randn(co, shape[1], 3, 3).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        dy = torch.randn(shape[0], co, *shape[2:]).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        args = (dy, x, w, [co], (1, 1), (1, 1), (1, 1), False, (0, 0), 1, [False, True, True])
        flop = 2 * dy.numel() * shape[1] * 9
        theirs = fastest(partial(torch.ops.aten.convolution_backward, *args), partial(evict.fill_, 1.0))
        ours = fastest(partial(torch.ops.diffusionlab_conv.weight_grad, dy, x, 3), partial(evict.fill_, 1.0))
        total[0] += theirs
        total[1] += ours
        print(
            f"{str(shape):>20} {co:>3} | {theirs * 1e3:9.2f} {flop / theirs / 1e9:7.0f} | {ours * 1e3:8.2f} "
            f"{flop / ours / 1e9:7.0f} | {theirs / ours:5.2f}"
        )
    ratio = total[0] / total[1]
    print(f"{'all shapes':>24} | {total[0] * 1e3:9.1f} {'':>7} | {total[1] * 1e3:8.1f} {'':>7} | {ratio:5.2f}")


def step_speedup(model: str, rounds: int, switch) -> None:
    """``switch(state)`` turns the kernel on or off (see :func:`main`)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_unet

    off_ms, on_ms = bench_unet.alternating_step_ms(model, rounds, switch)
    print(
        f"{model:<14} oneDNN {off_ms:7.1f} ms  ours {on_ms:7.1f} ms per step (medians of {rounds} rounds)  "
        f"speed-up {off_ms / on_ms:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-step", action="store_true", help="only the per-shape table")
    parser.add_argument("--models", nargs="+", default=["unet_small"], help="bench_unet.py's model names")
    parser.add_argument("--rounds", type=int, default=6, help="alternating off/on rounds per model")
    args = parser.parse_args()
    import torch

    if not torch.cpu._is_avx512_bf16_supported():
        print("conv weight-gradient kernel: skipped, this CPU has no avx512_bf16")
        return
    os.environ["DIFFUSIONLAB_CONV_WEIGHT_GRAD"] = "1"
    from diffusionlab.nets import conv_weight_grad
    from diffusionlab.utils import hardware

    if not conv_weight_grad.available():
        print("conv weight-gradient kernel: skipped, it did not build (see the warning)")
        return
    torch.set_num_threads(1)
    print(
        f"conv weight gradients, bf16 channels_last, batch 128, 1 thread, torch {torch.__version__}, "
        f"{hardware.describe_cpu()}; {allocator.describe()}"
    )
    shape_table()
    if not args.no_step:

        def switch(state: bool) -> None:  # built above; Conv2d looks `available` up at each call
            conv_weight_grad.available = lambda: state

        for model in args.models:
            step_speedup(model, args.rounds, switch)


if __name__ == "__main__":
    allocator.tune_cpu_allocator()
    main()
