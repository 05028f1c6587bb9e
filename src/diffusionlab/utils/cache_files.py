"""Single-file caches (reference features, the domain classifier): verified before use, built once.

:func:`ensure_cached_file` is the whole protocol: a file whose sha256 matches its sidecar is reused; a
missing one is built, a damaged one (truncated, bit-flipped, no sidecar) is rebuilt with a warning naming the
file and the reason; building holds ``<file>.lock`` so concurrent processes build it once and the others
reuse it. The payload is written atomically, then its sidecar.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from diffusionlab.utils.checksums import checksum_problem, remove_checksum, write_checksum
from diffusionlab.utils.io import atomic_write
from diffusionlab.utils.locks import file_lock

log = logging.getLogger("diffusionlab.cache")


def atomic_write_checked(path: str | os.PathLike, writer: Callable[[Path], Any]) -> Path:
    """``writer(tmp)`` moved onto ``path`` atomically, then its ``.sha256`` sidecar (the old sidecar is
    removed first, so a crash in between leaves a file that is not trusted)."""
    remove_checksum(path)
    atomic_write(path, writer)
    write_checksum(path)
    return Path(path)


def ensure_cached_file(path: str | os.PathLike, writer: Callable[[Path], Any], what: str) -> bool:
    """Make ``path`` a verified cache file; ``writer(tmp)`` writes the payload when it must be (re)built.

    Returns True if this call built it, False if a verified file was reused (possibly one another process
    built while this one waited for the lock)."""
    path = Path(path)
    if checksum_problem(path) is None:
        return False
    with file_lock(path):
        problem = checksum_problem(path)
        if problem is None:
            log.info("%s %s was built by another process meanwhile: reusing it", what, path)
            return False
        if path.exists():
            warnings.warn(f"{what} {str(path)!r} is damaged ({problem}); rebuilding it", stacklevel=3)
        atomic_write_checked(path, writer)
        log.info("built %s %s", what, path)
        return True
