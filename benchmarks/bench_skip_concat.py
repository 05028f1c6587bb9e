"""UNet's skip concatenation (``nets/skip_concat.cat_channels``) against ``torch.cat`` in a training step.

    python benchmarks/bench_skip_concat.py                                  # unet_small, unet_small_28 (~2 min)
    python benchmarks/bench_skip_concat.py --models unet_small --rounds 10

``benchmarks/bench_unet.py``'s training step of ours (bf16, channels_last, batch 128, one thread), the UNet's
skip concatenations switched between ``torch.cat`` (whose backward hands out strided channel slices of the
gradient) and ``cat_channels`` (dense channels_last gradients) in alternating rounds inside one process (CPU
time, median of 3 steps per round); the ratio of the medians over the rounds is the step's speed-up.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diffusionlab.utils import allocator  # no torch: tuned in __main__ before torch is imported


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models", nargs="+", default=["unet_small", "unet_small_28"], help="bench_unet.py's UNet names"
    )
    parser.add_argument("--rounds", type=int, default=6, help="alternating torch.cat / cat_channels rounds")
    args = parser.parse_args()
    import torch

    from diffusionlab.nets import skip_concat, unet

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_unet

    def plain_cat(*tensors):
        return torch.cat(tensors, dim=1)

    def switch(dense: bool) -> None:
        unet.cat_channels = skip_concat.cat_channels if dense else plain_cat  # unet imports it by name

    print(f"skip concatenation in ours' bf16 training step, batch 128, 1 thread; {allocator.describe()}")
    for model in args.models:
        cat_ms, ours_ms = bench_unet.alternating_step_ms(model, args.rounds, switch)
        print(
            f"{model:<14} torch.cat {cat_ms:7.1f} ms  cat_channels {ours_ms:7.1f} ms per step "
            f"(medians of {args.rounds} rounds)  speed-up {cat_ms / ours_ms:.3f}"
        )
    switch(True)


if __name__ == "__main__":
    allocator.tune_cpu_allocator()
    main()
