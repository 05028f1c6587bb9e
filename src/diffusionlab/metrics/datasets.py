"""Real images for reference statistics and the domain classifier, as uint8 tensors.

All dataset access of the metrics code goes through :func:`load_split`, a thin layer over
:func:`diffusionlab.utils.datasets.load_dataset` that adds the ``'dataset:split'`` notation, an in-memory
cache, and a fallback for read-only data folders.
"""

from __future__ import annotations

import functools
import os
import stat
from pathlib import Path

from torch import Tensor

from diffusionlab.metrics.cache import resolve_cache_dir
from diffusionlab.utils.datasets import DATASET_NAMES, DatasetNotFoundError, load_dataset

_TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
_ALIASES = {"fashion-mnist": "fashion_mnist", "fashionmnist": "fashion_mnist", "cifar-10": "cifar10"}
SPLITS = ("train", "test")


def canonical_dataset(name: str) -> str:
    """``'Fashion-MNIST'`` -> ``'fashion_mnist'``; raise ValueError naming the valid choices."""
    key = str(name).lower()
    key = _ALIASES.get(key, key)
    if key not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {list(DATASET_NAMES)}")
    return key


def parse_split(spec: str) -> tuple[str, str]:
    """``'mnist:test'`` -> ``('mnist', 'test')``."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ValueError(f"expected a split written as 'dataset:split' (e.g. 'mnist:test'), got {spec!r}")
    name, split = spec.split(":")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} in {spec!r}; choose one of {list(SPLITS)}")
    return canonical_dataset(name), split


def load_split(
    dataset: str, split: str, data_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None
) -> tuple[Tensor, Tensor]:
    """All images and labels of one split: uint8 ``[N, C, H, W]`` in [0, 255] and int64 ``[N]``.

    If ``data_dir`` is read-only (or marked so) and holds only MNIST's ``.gz`` files, they are linked into
    ``cache_dir/datasets`` and extracted there; ``data_dir`` is never written to then.
    """
    dataset = canonical_dataset(dataset)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    return _load(dataset, split, str(Path(data_dir).resolve()), str(resolve_cache_dir(cache_dir)))


@functools.lru_cache(maxsize=8)
def _load(dataset: str, split: str, data_dir: str, cache_dir: str) -> tuple[Tensor, Tensor]:
    train = split == "train"
    try:  # already extracted (or CIFAR-10 pickles present): nothing to write
        return load_dataset(dataset, data_dir, train=train, download=False)
    except DatasetNotFoundError:
        pass
    folder = _TORCHVISION_FOLDERS.get(dataset)
    raw = Path(data_dir) / folder / "raw" if folder else None
    if raw is not None and raw.is_dir() and _read_only(raw):
        mirror = _writable_mirror(Path(data_dir), Path(cache_dir) / "datasets", folder)
        return load_dataset(dataset, mirror, train=train)
    return load_dataset(dataset, data_dir, train=train)


def _read_only(path: Path) -> bool:
    """True if ``path`` is not writable, or is marked read-only (mode bits; root ignores them otherwise)."""
    return not os.access(path, os.W_OK) or not (path.stat().st_mode & stat.S_IWUSR)


def _writable_mirror(data_dir: Path, mirror: Path, folder: str) -> Path:
    """Link ``data_dir/<folder>/raw/*`` into ``mirror/<folder>/raw`` so torchvision can extract there."""
    raw = mirror / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    src = data_dir / folder / "raw"
    for f in sorted(src.iterdir()) if src.is_dir() else []:
        link = raw / f.name
        if not link.exists():
            try:
                link.symlink_to(f)
            except FileExistsError:  # another process linked it meanwhile
                pass
    return mirror
