"""diffusionlab.utils.allocator: freed large blocks stay mapped, torch advises large tensors as huge pages, the
switch and a user's own settings are respected, and the entry points tune before anything imports torch."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from diffusionlab.utils.allocator import SWITCH, _glibc

ROOT = Path(__file__).resolve().parents[1]
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
BLOCK = 40 * 1024 * 1024  # above glibc's largest dynamic mmap threshold (32 MB): mapped anew by default

# malloc, touch and free a 40 MB block three times; prints the minor page faults of each touch
TOUCH_THREE_TIMES = """
import ctypes, json, resource, sys
from diffusionlab.utils.allocator import tune_cpu_allocator
applied = tune_cpu_allocator()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
faults = []
for _ in range(3):
    p = libc.malloc(BLOCK)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ctypes.memset(p, 1, BLOCK)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    libc.free(p)
print(json.dumps({"applied": applied, "faults": faults}))
""".replace("BLOCK", str(BLOCK))


def run(code: str, **env: str) -> dict:
    """``python -c code`` with ``env`` on top of a copy of ours minus the allocator variables; its JSON line."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "THP_MEM", SWITCH))}
    done = subprocess.run(
        [sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def thp_mode() -> str:
    """The kernel's transparent-huge-page mode (``always``, ``madvise``, ``never``), '' when unknown."""
    try:
        return THP_MODE.read_text().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return ""


needs_glibc = pytest.mark.skipif(_glibc() is None, reason="mallopt is glibc's")


@needs_glibc
@pytest.mark.skipif(thp_mode() == "always", reason="with THP always even mapped-anew blocks fault rarely")
def test_tuned_process_keeps_a_freed_large_block_mapped():
    pages = BLOCK // os.sysconf("SC_PAGE_SIZE")
    default = run(TOUCH_THREE_TIMES, **{SWITCH: "0"})
    tuned = run(TOUCH_THREE_TIMES)
    assert default["applied"] == {"mallopt": False, "thp": False}
    assert tuned["applied"]["mallopt"] is True
    # default: every block is mapped anew and faulted in page by page; tuned: only the first one
    assert all(f > pages // 2 for f in default["faults"]), default
    assert tuned["faults"][0] > pages // 2 and max(tuned["faults"][1:]) < pages // 100, tuned


TENSOR_ALIGNMENT = """
import json, sys
from diffusionlab.utils.allocator import tune_cpu_allocator
PRELUDE
applied = tune_cpu_allocator()
import torch
ptrs = [torch.empty(2**22 + 4096 * k, dtype=torch.uint8).data_ptr() for k in range(1, 6)]
print(json.dumps({"applied": applied, "aligned": [p % 4096 == 0 for p in ptrs]}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PyTorch's THP allocation is Linux's")
def test_torch_advises_large_blocks_as_huge_pages_when_tuned_before_import():
    # PyTorch page-aligns the blocks it advises (MADV_HUGEPAGE, 2 MB and up); the others are 64-byte aligned
    tuned = run(TENSOR_ALIGNMENT.replace("PRELUDE", ""))
    assert tuned["applied"]["thp"] is True and all(tuned["aligned"]), tuned
    off = run(TENSOR_ALIGNMENT.replace("PRELUDE", ""), **{SWITCH: "0"})
    assert off["applied"] == {"mallopt": False, "thp": False} and not all(off["aligned"]), off
    # too late: torch read the variable at its first allocation
    late = run(TENSOR_ALIGNMENT.replace("PRELUDE", "import torch"))
    assert late["applied"]["thp"] is False and not all(late["aligned"]), late


@needs_glibc
def test_a_users_own_settings_win():
    code = "import json\nfrom diffusionlab.utils.allocator import tune_cpu_allocator as t\nprint(json.dumps(t()))"
    assert run(code, MALLOC_TRIM_THRESHOLD_="1000000") == {"mallopt": False, "thp": True}
    assert run(code, THP_MEM_ALLOC_ENABLE="0") == {"mallopt": True, "thp": False}


def test_describe_names_the_settings_in_effect():
    code = (
        "from diffusionlab.utils import allocator as a\n"
        "before = a.describe()\n"
        "a.tune_cpu_allocator()\n"
        "import json; print(json.dumps([before, a.describe()]))"
    )
    before, after = run(code)
    assert "glibc defaults" in before and "THP_MEM_ALLOC_ENABLE=unset" in before
    if _glibc() is not None:
        assert "mallopt" in after
    assert "THP_MEM_ALLOC_ENABLE=1" in after


@pytest.mark.parametrize("script", ["train.py", "sample.py", "evaluate.py"])
def test_entry_points_tune_before_their_first_import(script):
    body = ast.parse((ROOT / script).read_text()).body
    statements = [s for s in body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    first, second = statements[:2]
    assert isinstance(first, ast.ImportFrom) and first.module == "diffusionlab.utils.allocator"
    assert isinstance(second, ast.Expr) and ast.unparse(second) == "tune_cpu_allocator()"
