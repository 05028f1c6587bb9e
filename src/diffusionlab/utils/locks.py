"""One builder per cache across processes: an exclusive ``fcntl.flock`` on ``<cache>.lock``.

Two jobs of a sweep that need the same latent cache, reference statistics or classifier run
``with file_lock(cache): <check, build if still missing>``: the second blocks until the first is done, then
finds the cache complete and reuses it. The lock file is removed on release; a waiter that wakes up on a
removed file takes the lock again on the new one, so no two holders ever coexist. A killed holder's lock is
released by the kernel. (flock is per machine: on NFS shared by several hosts it may not exclude.)
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("diffusionlab.locks")


def lock_path(target: str | os.PathLike) -> Path:
    target = Path(target)
    return target.with_name(target.name + ".lock")


@contextlib.contextmanager
def file_lock(target: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive lock of ``target`` (a file or folder that need not exist yet); yields the lock path."""
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for %s: another process is building %s", path.name, Path(target).name)
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file we waited on: lock the current one
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)  # before unlocking: a waiter on this inode sees it is gone and retries
        os.close(fd)
