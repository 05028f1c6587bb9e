"""Reading checkpoints safely: ``weights_only`` pickles and safetensors, with errors that say what is wrong."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, unsafe or of another architecture."""


def load_torch_checkpoint(path: str | Path, map_location="cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with clear errors for missing, truncated and unsafe files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing to load {str(path)!r}: it contains Python objects other than tensors and plain "
            f"containers, which could run arbitrary code ({str(err).splitlines()[0]}). Only weights-only "
            "checkpoints and .safetensors files are loaded."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(
            f"{str(path)!r} is not a readable checkpoint (truncated or not a torch file?): {str(err).splitlines()[0]}"
        ) from None


def check_state_dict_keys(expected: set[str], found: set[str], what: str) -> None:
    """Raise :class:`CheckpointError` listing missing and unexpected keys when the two sets differ."""
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:

        def show(keys):
            return ", ".join(keys[:10]) + (f" ... (+{len(keys) - 10} more)" if len(keys) > 10 else "")

        raise CheckpointError(
            f"{what} does not match the network's architecture: "
            f"{len(missing)} missing keys [{show(missing)}]; {len(unexpected)} unexpected keys [{show(unexpected)}]"
        )


def check_state_dict_shapes(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], what: str) -> None:
    """Raise :class:`CheckpointError` listing the keys both hold with different shapes (another width, ...)."""
    wrong = [k for k in expected.keys() & found.keys() if tuple(expected[k].shape) != tuple(found[k].shape)]
    if wrong:
        shown = "; ".join(
            f"{k}: {tuple(found[k].shape)} in the checkpoint, {tuple(expected[k].shape)} here"
            for k in sorted(wrong)[:5]
        )
        more = f" (+{len(wrong) - 5} more)" if len(wrong) > 5 else ""
        raise CheckpointError(f"{what} does not fit the network ({len(wrong)} tensors of other shapes): {shown}{more}")
