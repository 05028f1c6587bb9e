"""What one core's vector units can do at most, beside the matmul peak ``bench_unet.py`` divides by.

    python benchmarks/bench_cpu_peak.py           # ~10 s: compiles kernels/cpu_peak.cpp with g++ and runs it

Rows (GFLOP/s on one core):

* ``fma_ymm`` / ``fma_zmm``: float32 fused multiply-adds on 256- / 512-bit registers, the ceiling of every
  float32 convolution (the FID Inception's);
* ``dpbf16_zmm``: ``vdpbf16ps`` (AVX512-BF16), the ceiling of oneDNN's bf16 convolutions and of our
  weight-gradient kernel on CPUs without AMX;
* ``torch bf16 matmul``: the 4096^3 product ``bench_unet.py`` measures as the "peak" of its "% of peak"
  column (one thread, CPU time).

A loop of independent multiply-adds with nothing else in it, built with ``-O3 -march=native``: instructions
this CPU lacks are left out. AMX tiles, where a CPU has them, are not measured here; the matmul row uses
them. A training step whose convolutions already run near ``dpbf16_zmm`` can only get faster by doing less
work outside them (``bench_unet.py``'s ``bound`` column).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from diffusionlab.utils import allocator

allocator.tune_cpu_allocator()  # before torch is imported (by bench_unet in main), as for every bench

SOURCE = Path(__file__).resolve().parent / "kernels" / "cpu_peak.cpp"


def instruction_peaks(source: Path = SOURCE, iterations: int = 50_000_000) -> dict[str, float]:
    """``{name: GFLOP/s}`` for each multiply-add instruction ``source`` measures on this CPU (one core), the
    best of three runs of ``iterations`` loop passes (12 instructions each)."""
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise SystemExit(f"bench_cpu_peak: no C++ compiler (g++ or c++) on PATH to build {source}; install g++")
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "cpu_peak"
        built = subprocess.run(
            [compiler, "-O3", "-march=native", str(source), "-o", str(binary)], capture_output=True, text=True
        )
        if built.returncode != 0:
            raise SystemExit(f"bench_cpu_peak: {compiler} could not build {source}:\n{built.stderr[-2000:]}")
        out = subprocess.run([str(binary), str(iterations)], capture_output=True, text=True, check=True).stdout
    peaks = {}
    for line in out.splitlines():
        name, gflops, _ns = line.split()
        peaks[name] = float(gflops)
    return peaks


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_unet import bf16_matmul_peak

    from diffusionlab.utils import hardware

    print(f"one core's multiply-add peaks; {hardware.describe_cpu()}")
    rows = instruction_peaks()
    rows["torch bf16 matmul 4096^3"] = 1e3 * bf16_matmul_peak(threads=1)
    for name, gflops in rows.items():
        print(f"{name:26s} {gflops:8.1f} GFLOP/s")
    if "dpbf16_zmm" in rows:
        share = rows["torch bf16 matmul 4096^3"] / rows["dpbf16_zmm"]
        print(f"the matmul 'peak' of bench_unet.py is {share:.2f} of vdpbf16ps's")


if __name__ == "__main__":
    main()
