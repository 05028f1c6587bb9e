"""Resuming a run: refuse a requested config that changes what the checkpoint was trained as.

The checkpoint's config is the run's ``checkpoints/config.yaml`` (written by every training session). Keys
that define the network, the data it models or the noise schedule (:data:`GUARDED_KEYS`) must be equal;
everything else (``trainer.max_steps``, ``max_epochs``, loggers, callbacks, learning rate, ...) may change
freely. ``resume_allow_changes=[model.dropout,diffusion]`` lets named keys, or whole groups, change on purpose.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from diffusionlab.cli.runs import CONFIG_FILENAME

log = logging.getLogger("diffusionlab.train")

GUARDED_KEYS = (
    "model",
    "data.name",
    "data.image_size",
    "data.channels",
    "data.num_classes",
    "diffusion",
    "autoencoder",
)
"""Config keys (a node covers everything under it) a resumed run must share with its checkpoint."""

ALLOW_KEY = "resume_allow_changes"
_ABSENT = "<absent>"


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    """``{dotted key: leaf}`` of a plain container; lists are leaves (compared whole)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}"))
        return out
    return {prefix: value}


def _guarded_leaves(cfg: DictConfig, keys: Iterable[str]) -> dict[str, Any]:
    leaves: dict[str, Any] = {}
    for key in keys:
        node = OmegaConf.select(cfg, key, default=None)
        if node is None:
            continue
        value = OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node
        leaves.update(_flatten(value, key))
    return leaves


def config_changes(saved: DictConfig, requested: DictConfig, keys: Iterable[str] = GUARDED_KEYS) -> list[tuple]:
    """``[(key, saved value, requested value)]`` for every guarded leaf that differs (``<absent>`` if missing)."""
    keys = tuple(keys)
    old, new = _guarded_leaves(saved, keys), _guarded_leaves(requested, keys)
    return [
        (k, old.get(k, _ABSENT), new.get(k, _ABSENT))
        for k in sorted(old.keys() | new.keys())
        if old.get(k, _ABSENT) != new.get(k, _ABSENT)
    ]


def _allowed(key: str, allow: Iterable[str]) -> bool:
    return any(key == a or key.startswith(f"{a}.") for a in allow)


def check_resume_config(requested: DictConfig, resume_from: str | Path) -> None:
    """Raise ``ValueError`` listing ``key: checkpoint value -> requested value`` for every guarded change not
    named in ``requested.resume_allow_changes``; log the allowed ones. A checkpoint with no ``config.yaml``
    beside it (not written by train.py) cannot be checked: logged, not refused."""
    saved_path = Path(resume_from).parent / CONFIG_FILENAME
    if not saved_path.is_file():
        log.warning("resuming %s: no %s beside it, the config cannot be compared", resume_from, CONFIG_FILENAME)
        return
    allow = requested.get(ALLOW_KEY) or []
    if isinstance(allow, str) or not all(isinstance(a, str) for a in allow):
        raise ValueError(f"{ALLOW_KEY} must be a list of config keys, e.g. {ALLOW_KEY}=[model.dropout], got {allow!r}")
    changes = config_changes(OmegaConf.load(saved_path), requested)
    refused = [c for c in changes if not _allowed(c[0], allow)]
    lines = [f"  {k}: {old!r} -> {new!r}" for k, old, new in refused]
    if refused:
        keys = ",".join(k for k, _, _ in refused)
        raise ValueError(
            f"refusing to resume {str(resume_from)!r}: the requested config changes the network, data or noise "
            f"schedule the checkpoint was trained with ({saved_path}), key: checkpoint value -> requested value:\n"
            + "\n".join(lines)
            + f"\nResume with the checkpoint's values, start a new run (no ckpt_path), or allow the change on "
            f"purpose with {ALLOW_KEY}=[{keys}]"
        )
    for k, old, new in changes:
        log.warning("resuming with a changed config (allowed by %s): %s: %r -> %r", ALLOW_KEY, k, old, new)
