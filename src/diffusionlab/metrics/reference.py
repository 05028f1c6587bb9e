"""Reference features of a real dataset split, computed once per (data, preprocessing, extractor, n), cached.

The cache file is ``cache_dir/reference/<dataset>-<split>-<extractor>-n<n>-<key>.pt`` holding the features
(not only mean and covariance: KID and precision/recall need them), the logits if any, the labels and the
metadata the key was made from. The key is a sha256 over: the sha256 of the selected images and labels (data
identity: dataset, split, subset), the preprocessing description, the extractor's name and weights checksum,
n, and the subset seed / offset. Files are written atomically with a ``.sha256`` sidecar and checked before
use: a damaged entry is recomputed with a warning, and concurrent processes compute an entry once
(:func:`~diffusionlab.utils.cache_files.ensure_cached_file`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from diffusionlab.metrics.cache import resolve_cache_dir, sha256_json, sha256_tensors
from diffusionlab.metrics.datasets import load_split, parse_split
from diffusionlab.metrics.features import FeatureExtractor, FeatureSet, extract_features
from diffusionlab.utils.cache_files import ensure_cached_file

CACHE_FORMAT = 1


@dataclass
class Reference:
    """Features of ``n`` real images: ``features [n, D]``, ``logits [n, K]`` or None, ``labels [n]``."""

    features: FeatureSet
    labels: Tensor
    meta: dict = field(default_factory=dict)
    path: Path | None = None
    from_cache: bool = False

    def __len__(self) -> int:
        return len(self.features)


def select_subset(num_items: int, n: int, seed: int = 0, offset: int = 0) -> Tensor:
    """Indices ``perm[offset : offset + n]`` of a seeded random permutation of ``range(num_items)``."""
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    if offset < 0 or offset + n > num_items:
        raise ValueError(f"cannot take n={n} images at offset {offset} from a split of {num_items} images")
    perm = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed))
    return perm[offset : offset + n]


def reference_key(data_sha256: str, extractor_info: dict, n: int, seed: int, offset: int) -> str:
    """Cache key: changes with the data, preprocessing, extractor (and its weights), n, seed and offset."""
    return sha256_json(
        {
            "format": CACHE_FORMAT,
            "data": data_sha256,
            "extractor": {k: extractor_info.get(k) for k in ("name", "sha256", "num_features")},
            "preprocessing": extractor_info.get("preprocessing"),
            "n": n,
            "seed": seed,
            "offset": offset,
        }
    )[:20]


def reference_images(
    split: str,
    n: int | None = None,
    *,
    data_dir: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    offset: int = 0,
) -> tuple[Tensor, Tensor]:
    """The images (uint8 ``[n, C, H, W]``) and labels (``[n]``) of ``split`` that :func:`reference_features`
    takes: ``select_subset(len(split), n, seed, offset)``, all of the split for ``n=None``."""
    dataset, part = parse_split(split)
    images, labels = load_split(dataset, part, data_dir, cache_dir)
    idx = select_subset(len(images), len(images) if n is None else n, seed, offset)
    return images[idx], labels[idx]


def reference_features(
    split: str,
    extractor: FeatureExtractor,
    n: int | None = None,
    *,
    data_dir: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    offset: int = 0,
    batch_size: int = 50,
    progress: bool = True,
    use_cache: bool = True,
) -> Reference:
    """Features of ``n`` images of ``split`` (``'mnist:test'``; ``n=None``: the whole split), cached on disk.

    The subset is ``select_subset(len(split), n, seed, offset)``; ``offset`` lets two disjoint subsets of one
    split be compared (the FID floor of a split against itself).
    """
    dataset, part = parse_split(split)
    images, labels = reference_images(split, n, data_dir=data_dir, cache_dir=cache_dir, seed=seed, offset=offset)
    n = len(images)
    info = extractor.info()
    data_sha = sha256_tensors(images, labels)
    key = reference_key(data_sha, info, n, seed, offset)
    path = resolve_cache_dir(cache_dir) / "reference" / f"{dataset}-{part}-{extractor.name}-n{n}-{key}.pt"
    meta = {
        "dataset": dataset,
        "split": part,
        "n": n,
        "seed": seed,
        "offset": offset,
        "data_sha256": data_sha,
        "extractor": info,
        "key": key,
    }
    batches = ((images[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, n, batch_size))

    def compute() -> FeatureSet:
        sets, _ = extract_features(
            batches, {"ref": extractor}, total=n, progress=progress, desc=f"reference {split} ({extractor.name})"
        )
        return sets["ref"]

    if not use_cache:
        return Reference(compute(), labels, meta, None, False)
    built: list[FeatureSet] = []

    def write(tmp: Path) -> None:
        built.append(compute())
        blob = {"features": built[0].features, "logits": built[0].logits, "labels": labels, "meta": meta}
        torch.save(blob, tmp)

    if ensure_cached_file(path, write, "reference features"):
        return Reference(built[0], labels, meta, path, False)
    blob = torch.load(path, map_location="cpu", weights_only=True)
    return Reference(FeatureSet(blob["features"], blob["logits"]), blob["labels"], blob["meta"], path, True)
