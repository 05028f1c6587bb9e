"""Latents of an image dataset through a frozen autoencoder, encoded once and cached on disk.

:class:`LatentCacheDataModule` wraps any image DataModule (batches ``(x [B, C, H, W] in [-1, 1], y)``, with
``train_set`` / ``val_set`` / ``test_set`` after ``setup``). Per split it stores the posterior mean and std
(``[V, N, z, h, w]``, V = 2 when the images are randomly flipped: both orientations) and the labels ``[N]``
as ``.npy`` files read memory-mapped, plus ``manifest.json`` with the cache key: a hash of the autoencoder
weights, the dataset's settings (name, split, subset, size, channels, seeds, flips) and the dtype. The
folder is written under a temporary name and renamed, so a crash never leaves a cache that loads; a
damaged one (a size or sha256 differs from the manifest) is rebuilt with a warning. The sha256 of every file
is checked on each load by default (``verify="hash"``: ~0.1 s for the 123 MB of full-MNIST latents here;
``verify="size"`` skips it for huge caches). Two processes that need the same cache (a sweep's jobs) build it
once: the builder holds ``<folder>.lock``, the other waits and then reuses it. Under DDP the local rank 0
builds, every rank waits at a barrier, then all read.

Items are ``(z [z, h, w] float32, label)``: unscaled latents, a fresh draw ``mean + std * eps`` each time
(``sample=True``; validation and test items keep one fixed draw each) or the mean. The latent diffusion
module multiplies them by the autoencoder's scale factor.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from lightning import LightningDataModule
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from diffusionlab.data.samplers import EpochTaggedSampler, eval_batch_sampler, training_sampler
from diffusionlab.metrics.cache import sha256_file, sha256_json, sha256_tensors
from diffusionlab.nets.autoencoder import latent_shape
from diffusionlab.utils.io import DiskFullError, atomic_write_json, is_disk_full
from diffusionlab.utils.locks import file_lock

log = logging.getLogger("diffusionlab.latent_cache")

CACHE_FORMAT = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
DTYPES = {"float32": np.float32, "float16": np.float16}
VERIFY = ("size", "hash")
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",), None: SPLITS}
# Settings of the image DataModule that do not change its images (left out of the cache key).
NOT_IN_KEY = {
    "batch_size",
    "eval_batch_size",
    "num_workers",
    "pin_memory",
    "download",
    "data_dir",
    "prepare_data_per_node",
    "allow_zero_length_dataloader_with_multiple_devices",
    "trainer",
    "shuffle_seed",
}


def autoencoder_hash(ae: nn.Module) -> str:
    """sha256 of the autoencoder's class, parameter names, dtypes, shapes and values."""
    state = ae.state_dict()
    names = sorted(state)
    return sha256_json([type(ae).__qualname__, names, sha256_tensors(*(state[k] for k in names))])


def dataset_identity(images) -> dict:
    """The settings of an image DataModule that determine its images: public attributes of plain types
    (name, image_size, channels, val_size, split_seed, subsets, hflip, ...) minus :data:`NOT_IN_KEY` and
    unset (None) ones."""
    plain = (str, int, float, bool, type(None))
    out = {"class": type(images).__qualname__}
    for k, v in sorted(vars(images).items()):
        if k.startswith("_") or k in NOT_IN_KEY or v is None:  # None: unset (datasets before setup, ...)
            continue
        if isinstance(v, plain) or (isinstance(v, (list, tuple)) and all(isinstance(e, plain) for e in v)):
            out[k] = list(v) if isinstance(v, tuple) else v
    return out


class LatentDataset(Dataset):
    """One cached split: items ``(z [z, h, w] float32, label long)``; arrays opened lazily (memory-mapped,
    so worker processes share the page cache instead of copies).

    ``sample``: ``z = mean + std * eps`` (else the mean). The view (of several cached augmentations) and ``eps``
    of an item asked for as ``(epoch, i)`` (the training loader, :class:`EpochTaggedSampler`) come from a
    generator seeded by ``(seed, epoch, i)``: fresh every epoch, and what an uninterrupted single process draws
    after a resume or on any rank. A plain index ``i`` draws from the global RNG, or with ``fixed_noise`` the
    same as epoch 0 every time (validation losses stay comparable)."""

    def __init__(self, folder: str | Path, sample: bool = True, fixed_noise: bool = False, seed: int = 0):
        self.folder, self.sample, self.fixed_noise, self.seed = Path(folder), sample, fixed_noise, seed
        manifest = json.loads((self.folder / MANIFEST).read_text())
        self.count, self.views = manifest["count"], manifest["views"]
        self._arrays = None

    def _open(self):
        if self._arrays is None:
            mean = np.load(self.folder / "mean.npy", mmap_mode="r")
            std = np.load(self.folder / "std.npy", mmap_mode="r") if self.sample else None
            labels = torch.from_numpy(np.load(self.folder / "labels.npy"))
            self._arrays = (mean, std, labels)
        return self._arrays

    def __getstate__(self):
        return {**self.__dict__, "_arrays": None}

    def __len__(self) -> int:
        return self.count

    def _generator(self, key) -> tuple[int, torch.Generator | None]:
        """``(i, generator)`` for an index or an ``(epoch, i)`` key (None: the global RNG)."""
        if isinstance(key, (tuple, list)):
            epoch, i = (int(k) for k in key)
        else:
            epoch, i = 0, int(key)
            if not self.fixed_noise:
                return i, None
        # hash() of a tuple of ints is the same in every process (no hash randomisation for ints)
        return i, torch.Generator().manual_seed(hash((self.seed, epoch, i)) & (2**63 - 1))

    def __getitem__(self, key):
        i, gen = self._generator(key)
        mean, std, labels = self._open()
        v = int(torch.randint(self.views, (), generator=gen)) if self.views > 1 else 0
        z = torch.from_numpy(np.array(mean[v, i], dtype=np.float32))  # a copy: the mmap is read-only
        if self.sample:
            eps = torch.randn(z.shape, generator=gen)
            z = z + torch.from_numpy(np.array(std[v, i], dtype=np.float32)) * eps
        return z, labels[i]


class LatentCacheDataModule(LightningDataModule):
    """Cached autoencoder latents of ``images`` (train / val / test loaders of ``(z, y)``).

    Args:
        images: the image DataModule to encode (e.g. :class:`~diffusionlab.data.datamodule.ImageDataModule`).
        autoencoder: frozen ``AutoencoderKL`` (``encode(x) -> DiagonalGaussian``).
        cache_dir: root of the caches; one folder ``<name>-<split>-<key>`` per split.
        sample: items are fresh posterior samples (True) or the posterior mean (False).
        dtype: storage dtype, ``float32`` or ``float16`` (items are always float32).
        verify: ``hash`` (sizes and sha256 of every file against the manifest; ~1.3 GB/s) or ``size`` (sizes only:
            instant, misses same-size corruption).
        batch_size / eval_batch_size: latent loaders (None: those of ``images``).
        encode_batch_size: images per encoder call while building a cache.
        channels / image_size: expected latent channels and side (checked against the autoencoder; the
            network configs interpolate them).
        num_classes / conditional / name / train_subset / val_size / test_subset: if given, must equal those of
            ``images`` (they let ``data.train_subset=N`` and friends work on pixel and latent configs alike).
        device: where to encode (``auto``: the trainer's device, else CUDA if available, else CPU).
    """

    def __init__(
        self,
        images: LightningDataModule,
        autoencoder: nn.Module,
        cache_dir: str | os.PathLike = "cache/latents",
        sample: bool = True,
        dtype: str = "float32",
        verify: str = "hash",
        batch_size: int | None = None,
        eval_batch_size: int | None = None,
        encode_batch_size: int = 256,
        num_workers: int = 0,
        pin_memory: bool = False,
        channels: int | None = None,
        image_size: int | None = None,
        num_classes: int | None = None,
        conditional: bool | None = None,
        name: str | None = None,
        train_subset: int | None = None,
        val_size: int | None = None,
        test_subset: int | None = None,
        device: str = "auto",
        progress: bool = True,
    ):
        super().__init__()
        if dtype not in DTYPES:
            raise ValueError(f"unknown latent cache dtype {dtype!r}; valid choices: {', '.join(DTYPES)}")
        if verify not in VERIFY:
            raise ValueError(f"unknown verify mode {verify!r}; valid choices: {', '.join(VERIFY)}")
        forwarded = dict(num_classes=num_classes, conditional=conditional, name=name, train_subset=train_subset,
                         val_size=val_size, test_subset=test_subset)  # fmt: skip
        for key, value in forwarded.items():
            if value is not None and getattr(images, key, value) != value:
                raise ValueError(
                    f"latent cache {key}={value!r} differs from the image DataModule's "
                    f"{key}={getattr(images, key)!r}; set it on the images (data.images.{key})"
                )
        self.images, self.autoencoder = images, autoencoder.eval().requires_grad_(False)
        self.name = getattr(images, "name", type(images).__name__)
        self.num_classes = getattr(images, "num_classes", None)
        self.conditional = getattr(images, "conditional", True)
        self.latent_shape = latent_shape(autoencoder, images.image_size)
        for key, value, actual in (("channels", channels, self.latent_shape[0]),
                                   ("image_size", image_size, self.latent_shape[1])):  # fmt: skip
            if value is not None and value != actual:
                raise ValueError(
                    f"latent {key}={value} but the autoencoder gives {actual} ({self.latent_shape} latents of "
                    f"{images.image_size}px images): set data.{key}={actual}"
                )
        self.channels, self.image_size = self.latent_shape[0], self.latent_shape[1]
        self.cache_dir, self.sample, self.dtype, self.verify = Path(cache_dir), sample, dtype, verify
        self.batch_size = batch_size or images.batch_size
        self.eval_batch_size = eval_batch_size or getattr(images, "eval_batch_size", None) or self.batch_size
        self.encode_batch_size, self.num_workers, self.pin_memory = encode_batch_size, num_workers, pin_memory
        self.device, self.progress = device, progress
        self.datasets: dict[str, LatentDataset] = {}
        self._ae_hash: str | None = None

    # ------------------------------------------------------------------ keys and folders
    def _views(self, split: str) -> int:
        return 2 if split == "train" and getattr(self.images, "hflip", False) else 1

    def cache_key(self, split: str) -> dict:
        """Everything that determines the cached latents of ``split``."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid choices: {', '.join(SPLITS)}")
        if self._ae_hash is None:
            self._ae_hash = autoencoder_hash(self.autoencoder)
        return {
            "format": CACHE_FORMAT,
            "autoencoder_sha256": self._ae_hash,
            "data": dataset_identity(self.images),
            "split": split,
            "dtype": self.dtype,
            "views": self._views(split),
        }

    def cache_folder(self, split: str) -> Path:
        return self.cache_dir / f"{self.name}-{split}-{sha256_json(self.cache_key(split))[:16]}"

    # ------------------------------------------------------------------ checking
    def _problem(self, folder: Path, key: dict) -> str | None:
        """Why ``folder`` is not a complete cache for ``key`` (None when it is)."""
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError) as err:
            return f"unreadable manifest ({err})"
        if manifest.get("key") != key:
            return "its manifest holds another key"
        for name, info in manifest["files"].items():
            path = folder / name
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != info["bytes"]:
                return f"{name} has {path.stat().st_size} bytes, the manifest says {info['bytes']} (truncated?)"
            if self.verify == "hash" and sha256_file(path, memo=False) != info["sha256"]:
                return f"{name} does not match its sha256 in the manifest"
        return None

    # ------------------------------------------------------------------ building
    def _encode_device(self) -> torch.device:
        if self.device != "auto":
            return torch.device(self.device)
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.strategy.root_device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def _image_split(self, split: str) -> Dataset:
        stage = "test" if split == "test" else "fit"
        self.images.prepare_data()
        self.images.setup(stage)
        return getattr(self.images, f"{split}_set")

    @torch.no_grad()
    def _build(self, split: str, folder: Path, key: dict) -> None:
        dataset = self._image_split(split)
        views, n = key["views"], len(dataset)
        flip = getattr(dataset, "hflip", False)
        if flip:  # the cache holds both orientations; items pick one at random
            dataset.hflip = False
        tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        device, ae = self._encode_device(), self.autoencoder
        ae.to(device)
        try:
            shape = (views, n, *self.latent_shape)
            dt = DTYPES[self.dtype]
            mean = np.lib.format.open_memmap(tmp / "mean.npy", mode="w+", dtype=dt, shape=shape)
            std = np.lib.format.open_memmap(tmp / "std.npy", mode="w+", dtype=dt, shape=shape)
            labels = np.zeros(n, dtype=np.int64)
            loader = DataLoader(dataset, batch_size=self.encode_batch_size, shuffle=False)
            i = 0
            bar = tqdm(loader, desc=f"encoding {self.name} {split} -> {folder.name}", disable=not self.progress)
            for x, y in bar:
                b = len(x)
                for v in range(views):
                    post = ae.encode((x.flip(-1) if v else x).to(device))
                    mean[v, i : i + b] = post.mean.float().cpu().numpy()
                    std[v, i : i + b] = post.std.float().cpu().numpy()
                labels[i : i + b] = y.numpy()
                i += b
            mean.flush(), std.flush()
            del mean, std
            np.save(tmp / "labels.npy", labels)
            files = {}
            for name in ("mean.npy", "std.npy", "labels.npy"):
                with open(tmp / name, "rb") as f:
                    os.fsync(f.fileno())
                files[name] = {"bytes": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)}
            manifest = {"key": key, "count": n, "views": views, "latent_shape": list(self.latent_shape),
                        "files": files}  # fmt: skip
            atomic_write_json(tmp / MANIFEST, manifest)
            if folder.exists():  # damaged: move it aside first (a directory rename cannot replace a full one)
                trash = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
                os.replace(folder, trash)
                shutil.rmtree(trash, ignore_errors=True)
            os.replace(tmp, folder)
        finally:
            ae.cpu()
            if flip:
                dataset.hflip = True
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("cached %d latents of %s %s in %s", n, self.name, split, folder)

    def ensure_cache(self, split: str, build: bool = True) -> Path:
        """The folder of a complete cache of ``split``, built (or rebuilt, with a warning) if needed."""
        key = self.cache_key(split)
        folder = self.cache_folder(split)
        problem = self._problem(folder, key) if folder.exists() else "it does not exist"
        if problem is None:
            return folder
        if not build:
            raise FileNotFoundError(
                f"latent cache {str(folder)!r} is not usable ({problem}) after the builder rank made it: is "
                "cache_dir on a filesystem every rank of this node can see?"
            )
        with file_lock(folder):  # one builder across processes; the others wait here, then reuse its cache
            problem = self._problem(folder, key) if folder.exists() else "it does not exist"
            if problem is None:
                log.info("latent cache %s was built by another process meanwhile: reusing it", folder)
                return folder
            if folder.exists():
                warnings.warn(f"latent cache {str(folder)!r} is damaged ({problem}); rebuilding it", stacklevel=2)
            try:
                self._build(split, folder, key)
            except Exception as err:  # the temporary folder is gone; an older cache (if any) is untouched
                if is_disk_full(err, self.cache_dir):
                    raise DiskFullError(folder) from err
                raise
        return folder

    def _is_builder(self) -> bool:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.local_rank == 0
        if dist.is_available() and dist.is_initialized():
            return int(os.environ.get("LOCAL_RANK", dist.get_rank())) == 0
        return True

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Build the missing caches (Lightning calls this on local rank 0 only, before ``setup``)."""
        for split in STAGE_SPLITS["fit"]:
            self.ensure_cache(split)

    def setup(self, stage: str | None = None) -> None:
        if stage not in STAGE_SPLITS:
            raise ValueError(f"unknown stage {stage!r}; valid choices: {', '.join(map(str, STAGE_SPLITS))}")
        splits = [s for s in STAGE_SPLITS[stage] if s not in self.datasets]
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        builder = self._is_builder()
        folders = {s: self.ensure_cache(s) for s in splits} if builder else {}
        if distributed:
            dist.barrier()
        if not builder:
            folders = {s: self.ensure_cache(s, build=False) for s in splits}
        for split, folder in folders.items():
            seed = int(getattr(self.images, "shuffle_seed", 0))
            self.datasets[split] = LatentDataset(folder, sample=self.sample, fixed_noise=split != "train", seed=seed)

    def cache_bytes_per_image(self, split: str = "train") -> float:
        """Bytes on disk per image of a built cache (mean + std + label, all views)."""
        folder = self.cache_folder(split)
        manifest = json.loads((folder / MANIFEST).read_text())
        return sum(f["bytes"] for f in manifest["files"].values()) / manifest["count"]

    def _loader(self, split: str, shuffle: bool, batch_size: int) -> DataLoader:
        """Training: the image DataModule's seeded, rank-sharded, resumable order (``shuffle_seed``), full
        batches only; validation / test: the fixed order, whole batches dealt to ranks."""
        if split not in self.datasets:
            raise RuntimeError(f"the {split} latents are not set up: call setup() with the matching stage first")
        dataset = self.datasets[split]
        trainer = getattr(self, "trainer", None)
        if shuffle:
            seed = int(getattr(self.images, "shuffle_seed", 0))
            sampler = EpochTaggedSampler(training_sampler(len(dataset), seed, batch_size, trainer))
            batching = {"batch_size": batch_size, "sampler": sampler, "drop_last": True}
        else:
            batching = {"batch_sampler": eval_batch_sampler(len(dataset), batch_size, trainer)}
        return DataLoader(
            dataset,
            **batching,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.eval_batch_size)
