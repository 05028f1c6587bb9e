"""Where the metrics code keeps its caches, and the checksums that key them."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import Tensor

from diffusionlab.utils.checksums import sha256_file

__all__ = ["default_cache_dir", "resolve_cache_dir", "sha256_file", "sha256_json", "sha256_tensors"]


def default_cache_dir() -> Path:
    """``$DIFFUSIONLAB_CACHE_DIR`` if set, else ``~/.cache/diffusionlab``."""
    env = os.environ.get("DIFFUSIONLAB_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "diffusionlab"


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else default_cache_dir()


def sha256_tensors(*tensors: Tensor) -> str:
    """Hex sha256 over the dtype, shape and bytes of each tensor (CPU copies are made if needed)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().contiguous().cpu()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def sha256_json(obj) -> str:
    """Hex sha256 of a JSON-serialisable object (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
