"""Single changes to ours' UNet, each switched off and on in a training step: what each one buys.

    python benchmarks/bench_step_switches.py                      # every switch, unet_small and unet_small_28
    python benchmarks/bench_step_switches.py --switches upsample_conv --models unet_small --rounds 10

``benchmarks/bench_unet.py``'s training step of ours (bf16, channels_last, batch 128, one thread) with one
change switched between off and on in alternating rounds inside one process (CPU time, median of 3 steps per
round); the ratio of the medians over the rounds is the step's speed-up. The switches:

- ``skip_concat``: the skip concatenations as ``torch.cat`` (whose backward hands out strided channel slices of
  the gradient) or ``nets/skip_concat.cat_channels`` (dense channels_last gradients);
- ``upsample_conv``: ``Upsample`` as nearest interpolation + conv3x3 or as one convolution of the small image
  with 4 taps per output (``nets/upsample_conv``).

(``bench_conv_weight_grad.py`` switches the weight-gradient kernel the same way and adds a per-shape table.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diffusionlab.utils import allocator  # no torch: tuned in __main__ before torch is imported


def switches() -> dict:
    """name -> (off label, on label, switch(on: bool)); each switch leaves the library as it found it when on."""
    import torch

    from diffusionlab.nets import skip_concat, unet, upsample_conv

    def plain_cat(*tensors):
        return torch.cat(tensors, dim=1)

    def dense_skip_gradients(on: bool) -> None:
        unet.cat_channels = skip_concat.cat_channels if on else plain_cat  # unet imports it by name

    applies = upsample_conv.applies

    def upsample_on_small_image(on: bool) -> None:
        upsample_conv.applies = applies if on else (lambda x: False)

    return {
        "skip_concat": ("torch.cat", "cat_channels", dense_skip_gradients),
        "upsample_conv": ("interpolate+conv", "4-tap conv", upsample_on_small_image),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models", nargs="+", default=["unet_small", "unet_small_28"], help="bench_unet.py's UNet names"
    )
    parser.add_argument("--switches", nargs="+", default=None, help="default: all (skip_concat, upsample_conv)")
    parser.add_argument("--rounds", type=int, default=6, help="alternating off / on rounds")
    args = parser.parse_args()
    table = switches()
    unknown = sorted(set(args.switches or ()) - set(table))
    if unknown:
        parser.error(f"unknown switch {unknown}: choose from {sorted(table)}")

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_unet

    from diffusionlab.utils import hardware

    print(
        f"single changes in ours' bf16 training step, batch 128, 1 thread; {allocator.describe()}; "
        f"{hardware.describe_cpu()}"
    )
    for name in args.switches or table:
        off_label, on_label, switch = table[name]
        for model in args.models:
            off_ms, on_ms = bench_unet.alternating_step_ms(model, args.rounds, switch)
            print(
                f"{name:<14} {model:<14} {off_label} {off_ms:7.1f} ms  {on_label} {on_ms:7.1f} ms per step "
                f"(medians of {args.rounds} rounds)  speed-up {off_ms / on_ms:.3f}"
            )
        switch(True)


if __name__ == "__main__":
    allocator.tune_cpu_allocator()
    main()
