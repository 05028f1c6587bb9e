"""What the machine computes fast: native bfloat16 or not, and the precision names that follow from it.

On a CPU without bf16 instructions (no ``avx512_bf16``, no AMX) PyTorch emulates bf16 by converting to float32
and back around every kernel: measured on such a machine (Intel Xeon, AVX-512 without bf16, 2026-12-04,
``benchmarks/bench_unet.py --quick --models unet_small_28 --threads 2``) the training step of ``unet_small`` ran
at 29.9 img/s in bf16-mixed against 63.8 in float32. ``"auto"`` picks bf16 only where it is native.
"""

from __future__ import annotations

import torch

AUTO = "auto"


def has_native_bf16(device: str | torch.device = "cpu") -> bool:
    """True when ``device`` runs bfloat16 matrix products in hardware: a CUDA GPU that supports bf16, or a CPU
    with ``avx512_bf16`` or AMX tiles (what oneDNN's bf16 kernels need)."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind == "cpu":
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


def fast_precision(device: str | torch.device = "cpu", float32_name: str = "32") -> str:
    """``"bf16-mixed"`` where ``device`` has native bf16, else ``float32_name`` (``"32"`` for sampling,
    ``"32-true"`` for Lightning's trainer)."""
    return "bf16-mixed" if has_native_bf16(device) else float32_name
