"""Turn expected user errors into one clear line on stderr and a non-zero exit (no traceback wall)."""

from __future__ import annotations

import functools
import os
import sys

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from diffusionlab.diffusion.gaussian import NonFiniteLossError
from diffusionlab.utils.io import DISK_FULL_ERRNOS, DiskFullError

# Errors a user causes (bad value, path or file) or must act on (a diverged loss, a full disk); anything else
# is a bug and keeps its traceback.
USER_ERRORS = (
    DiskFullError,
    ValueError,
    TypeError,
    FileNotFoundError,
    PermissionError,
    KeyError,
    OmegaConfBaseException,
    NonFiniteLossError,
)


def user_error_message(err: BaseException) -> str | None:
    """The message to show for a user error (unwrapping Hydra's instantiation wrapper), else None."""
    while isinstance(err, HydraException) and (err.__cause__ or err.__context__) is not None:
        err = err.__cause__ or err.__context__
    if isinstance(err, OSError) and not isinstance(err, DiskFullError) and err.errno in DISK_FULL_ERRNOS:
        where = f" while writing {err.filename}" if err.filename else ""  # a write outside the atomic writers
        return f"disk full{where} ({err.strerror}): free space and run again"
    if isinstance(err, USER_ERRORS):
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        return str(msg).strip() or type(err).__name__
    if isinstance(err, HydraException):
        return str(err).strip()
    return None


def exit_on_user_error(fn):
    """Decorator for entry-point tasks: user errors print ``error: <message>`` and exit with code 2.
    Set ``DIFFUSIONLAB_TRACEBACK=1`` to see the full traceback instead."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            msg = user_error_message(err)
            if msg is None or os.environ.get("DIFFUSIONLAB_TRACEBACK"):
                raise
            print(f"error: {msg}", file=sys.stderr)
            sys.exit(2)

    return wrapper
