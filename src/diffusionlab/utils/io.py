"""Crash-safe file writes: write to a temporary file in the same folder, fsync, then rename.

A reader never sees a half-written file: either the old content or the complete new one. A write that runs
out of disk space leaves the old file as it was, removes its temporary file and raises :class:`DiskFullError`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def check_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and check we can write into it; raise ``PermissionError`` naming it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise PermissionError(
            f"output folder {str(path)!r} is not writable ({err.strerror or err}); "
            "choose another folder (for example paths.output_dir=/tmp/runs)"
        ) from None
    return path


TEMP_SUFFIX = ".tmp"  # atomic writes go through ".<name>.<random>.tmp" beside the target
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
LOW_SPACE_BYTES = 1 << 20  # less than this left after a failed write: the disk is full


class DiskFullError(OSError):
    """No space left (or quota exceeded) while writing ``path``; the previous file at ``path`` is intact."""

    def __init__(self, path: str | os.PathLike, hint: str = "run again"):
        self.path = Path(path)
        super().__init__(
            errno.ENOSPC, f"disk full while writing {self.path}: free space in {self.path.parent} and {hint}"
        )

    def __str__(self) -> str:
        return self.strerror


def is_disk_full(err: BaseException, folder: str | os.PathLike) -> bool:
    """Whether ``err``, raised while writing into ``folder``, means the disk (or quota) is full.

    Writers do not all say so: Python raises ``OSError(ENOSPC)``, safetensors a ``SafetensorError`` naming
    "os error 28", and ``torch.save`` a ``RuntimeError`` ("unexpected pos ..."); for the others the free space
    left in ``folder`` decides."""
    if isinstance(err, DiskFullError) or (isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS):
        return True
    if "No space left on device" in str(err) or "os error 28" in str(err):
        return True
    try:
        return shutil.disk_usage(folder).free < LOW_SPACE_BYTES
    except OSError:
        return False


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, disk_full_hint: str = "run again") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``.

    On any error the temporary file is removed and ``path`` is left untouched; a full disk is re-raised as
    :class:`DiskFullError` (message: the path, the folder to free, then ``disk_full_hint``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    except OSError as err:
        if is_disk_full(err, path.parent):
            raise DiskFullError(path, disk_full_hint) from err
        raise
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as err:
        full = not isinstance(err, DiskFullError) and is_disk_full(err, path.parent)  # before tmp frees space
        if tmp.exists():
            tmp.unlink()
        if full:
            raise DiskFullError(path, disk_full_hint) from err
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], Any], disk_full_hint: str = "run again") -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path, disk_full_hint) as tmp:
        writer(tmp)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that :func:`atomic_path` writes under ``folder`` (recursively) and a killed
    process left behind; returns them. Only for a folder no running process writes into (a run being resumed)."""
    stale = [p for p in Path(folder).rglob(f".*{TEMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink()
    return stale
