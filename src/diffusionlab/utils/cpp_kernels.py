"""Build and load one of our C++ CPU kernels (a ``TORCH_LIBRARY`` source file) on first use.

A kernel is compiled once per machine (g++ and ninja, ``-march=native``) into PyTorch's extensions folder
(``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``); the build folder's name carries a hash of
the source, the flags and the CPU's feature flags, so an edited source, other flags or another CPU build
anew. Processes that start together build it once (``utils.locks.file_lock`` on the build folder; a build
killed half-way leaves no lock that blocks the next one). Without a compiler, or with the kernel's switch set
to ``0`` in the environment, :func:`load_kernel` returns False and says once why; callers keep a slower
PyTorch route.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import warnings
from pathlib import Path

from diffusionlab.utils.cpuinfo import cpuinfo_fields
from diffusionlab.utils.locks import file_lock

# -fopenmp: at::parallel_for is a header template, so without it a kernel would run on one thread; the
# libgomp it links against resolves, at load time, to the libgomp.so.1 PyTorch has already loaded (one pool).
CFLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-ffast-math", "-fopenmp"]
LDFLAGS = ["-fopenmp"]
# build names loaded into this process: loading one again would register its TORCH_LIBRARY twice (an abort)
_LOADED: set[str] = set()


def build_name(source: Path, prefix: str, cflags: list[str]) -> str:
    """``<prefix>_<hash>``: the hash covers the source, the flags and this CPU's feature flags."""
    cpu_flags = cpuinfo_fields().get("flags", "")
    digest = hashlib.sha256(source.read_bytes() + " ".join(cflags + LDFLAGS).encode() + cpu_flags.encode())
    return f"{prefix}_{digest.hexdigest()[:12]}"


def build_dir(name: str) -> Path | None:
    """The folder cpp_extension builds ``name`` in (created), or None if PyTorch's private helper moved."""
    try:
        from torch.utils.cpp_extension import _get_build_directory

        return Path(_get_build_directory(name, verbose=False))
    except Exception:
        return None


def load_kernel(
    source: Path, prefix: str, what: str, env_switch: str, fallback: str, cflags: list[str] = CFLAGS
) -> bool:
    """Compile (if not built yet) and load ``source``; True once its ops are registered in ``torch.ops``.
    False, with a warning naming ``what`` failed and the ``fallback`` used instead, when ``env_switch`` is
    ``0`` (silently) or the build fails (no compiler, no ninja, a read-only cache...)."""
    if os.environ.get(env_switch, "1") == "0":
        return False
    try:
        from torch.utils.cpp_extension import load

        if shutil.which("ninja") is None:  # the PyPI package puts its binary beside the interpreter
            try:
                import ninja

                os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
            except ImportError:
                pass
        name = build_name(source, prefix, cflags)
        if name in _LOADED:
            return True
        folder = build_dir(name)
        with file_lock(folder) if folder else contextlib.nullcontext():
            if folder:
                # We hold the only build lock, so cpp_extension's own lock file there is a killed build's
                # leftover, which would make load() wait for ever.
                (folder / "lock").unlink(missing_ok=True)
            if not (folder and (folder / f"{name}.so").exists()):
                print(f"diffusionlab: building {what} {name} (once per machine, ~15 s)", file=sys.stderr)
            load(
                name=name,
                sources=[str(source)],
                extra_cflags=list(cflags),  # copies: load() appends its own flags to the lists it is given,
                extra_ldflags=list(LDFLAGS),  # which changed the next kernel's build name in the same process
                is_python_module=False,
                verbose=False,
            )
            _LOADED.add(name)
    except Exception as error:
        warnings.warn(
            f"diffusionlab: the {what} could not be built ({type(error).__name__}: {error}); {fallback}. "
            f"Set {env_switch}=0 to skip the attempt.",
            stacklevel=3,
        )
        return False
    return True
