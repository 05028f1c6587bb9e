"""Checkpoint I/O that never leaves a truncated file and refuses to unpickle arbitrary objects."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from diffusionlab.utils import faults
from diffusionlab.utils.checkpoints import load_torch_checkpoint
from diffusionlab.utils.io import atomic_path

# What to do after a training write ran out of disk space (the previous checkpoint is intact).
RESUME_HINT = "resume with ckpt_path=last"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves to a temporary file beside the target and renames it (local paths); loads with
    ``weights_only=True`` and a clear error for truncated or foreign files."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if get_filesystem(path).protocol not in ("file", ("file", "local")) and "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_path(path, disk_full_hint=RESUME_HINT) as tmp:
            torch.save(checkpoint, tmp)
            faults.fault_point("checkpoint_save", checkpoint.get("global_step", -1))

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        return load_torch_checkpoint(path, map_location=map_location or "cpu")

    def remove_checkpoint(self, path) -> None:
        if os.path.exists(path):
            Path(path).unlink()
