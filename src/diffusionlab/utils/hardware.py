"""What the machine computes fast: native bfloat16 or not, and the precision names that follow from it.

On a CPU without bf16 instructions (no ``avx512_bf16``, no AMX) PyTorch emulates bf16 by converting to float32
and back around every kernel: measured on such a machine (Intel Xeon, AVX-512 without bf16, 2026-12-04,
``benchmarks/bench_unet.py --quick --models unet_small_28 --threads 2``) the training step of ``unet_small`` ran
at 29.9 img/s in bf16-mixed against 63.8 in float32. ``"auto"`` picks bf16 only where it is native.
"""

from __future__ import annotations

import os

import torch

from diffusionlab.utils.cpuinfo import cpuinfo_fields

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


def describe_cpu(cpuinfo: str | None = None) -> str:
    """One line for benchmark headers naming the machine kind a figure belongs to, e.g. ``CPU: AMD EPYC
    (AuthenticAMD family 25 model 17), 2 cores, avx512_bf16 yes, AMX no``. ``cpuinfo``: the text of
    ``/proc/cpuinfo`` (read when None; fields it lacks are left out)."""
    fields = cpuinfo_fields(cpuinfo)
    name = fields.get("model name", "unknown CPU")
    kind = " ".join(
        f"{label} {fields[key]}" if label else fields[key]
        for key, label in (("vendor_id", ""), ("cpu family", "family"), ("model", "model"))
        if fields.get(key)
    )
    bf16 = "yes" if torch.cpu._is_avx512_bf16_supported() else "no"
    amx = "yes" if torch.cpu._is_amx_tile_supported() else "no"
    return f"CPU: {name}{f' ({kind})' if kind else ''}, {os.cpu_count()} cores, avx512_bf16 {bf16}, AMX {amx}"
