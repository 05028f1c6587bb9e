"""``benchmarks/bench_cpu_peak.py``: the per-core multiply-add peaks the README's hardware bounds rest on."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from diffusionlab.utils.cpuinfo import cpuinfo_fields

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "benchmarks" / "kernels" / "cpu_peak.cpp"
# row -> (the /proc/cpuinfo flags it needs, the instruction it times)
ROWS = {
    "fma_ymm": ({"avx2", "fma"}, "vfmadd"),
    "fma_zmm": ({"avx512f"}, "vfmadd"),
    "dpbf16_zmm": ({"avx512_bf16"}, "vdpbf16ps"),
}

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")


def _bench():
    spec = importlib.util.spec_from_file_location("bench_cpu_peak", ROOT / "benchmarks" / "bench_cpu_peak.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_instruction_of_this_cpu_gets_a_positive_rate():
    flags = set(cpuinfo_fields().get("flags", "").split())
    peaks = _bench().instruction_peaks(iterations=200_000)
    expected = {row for row, (needs, _) in ROWS.items() if needs <= flags}
    assert set(peaks) == expected, (peaks, flags)
    assert all(rate > 0 for rate in peaks.values())


def test_the_timed_loops_keep_twelve_independent_sums(tmp_path):
    """Twelve accumulators that start equal would let the compiler compute one sum and copy it (a 12x
    overstated peak, as a first version printed): the assembly must hold twelve multiply-adds per loop."""
    asm = tmp_path / "cpu_peak.s"
    subprocess.run(["g++", "-O3", "-march=native", "-S", str(SOURCE), "-o", str(asm)], check=True)
    text = asm.read_text()
    for register in ("ymm", "zmm"):
        fmas = re.findall(rf"\tvfmadd\w*ps\t%{register}", text)
        assert len(fmas) in (0, 12), f"{len(fmas)} {register} multiply-adds in the timed loop, not 12"
    assert len(re.findall(r"\tvdpbf16ps\t", text)) in (0, 12)
