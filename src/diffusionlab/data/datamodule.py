"""LightningDataModules for MNIST, Fashion-MNIST and CIFAR-10.

Batches are ``(images float32 [B, C, H, W] in [-1, 1], labels long [B])``. The training set is split into
train / val with a seeded generator; the official test set is the held-out split (FID references).
Whole datasets live in memory as uint8 (CIFAR-10: 180 MB), which is much faster than PIL transforms.
"""

from __future__ import annotations

import torch
from lightning import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from diffusionlab.data.samplers import ResumableSampler, eval_batch_sampler, training_sampler
from diffusionlab.data.transforms import fit_images
from diffusionlab.utils.datasets import CLASS_NAMES, check_dataset_name, load_dataset
from diffusionlab.utils.images import uint8_to_signed


class InMemoryImages(Dataset):
    """uint8 images ``[N, C, H, W]`` and labels ``[N]``; items are ``([C, H, W] in [-1, 1], label)``."""

    def __init__(self, images: Tensor, labels: Tensor, hflip: bool = False):
        self.images, self.labels, self.hflip = images, labels, hflip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        x = uint8_to_signed(self.images[i])
        if self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, self.labels[i]


class ImageDataModule(LightningDataModule):
    """A dataset from :data:`DATASET_NAMES` as train / val / test loaders.

    Args:
        name: ``mnist``, ``fashion_mnist`` or ``cifar10``.
        data_dir: root in torchvision's layout (``MNIST/raw/*.gz``, ``cifar-10-batches-py/``).
        image_size: output side; MNIST's 28 is padded to 32 when asked (UNets with 4 levels need it).
        channels: output channels (grayscale is repeated to 3 if asked, RGB averaged to 1).
        num_classes: checked against the dataset (so configs can interpolate it into the network).
        conditional: whether models of this data are class-conditional; the network configs read it
            (``num_classes`` null when false). Batches carry their labels either way.
        val_size: number of training images held out for validation (seeded split).
        shuffle_seed: seeds the training order (per epoch), independent of the global RNG, so a resumed run
            continues with exactly the batches an uninterrupted run would have drawn.
        train_subset / test_subset: use only the first N images (tests, quick runs); None for all.
        hflip: random horizontal flips for training (CIFAR-10).
        download: try to download missing files (offline it fails with a message naming them).
    """

    def __init__(
        self,
        name: str = "mnist",
        data_dir: str = "data/",
        image_size: int = 28,
        channels: int | None = None,
        num_classes: int = 10,
        conditional: bool = True,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        val_size: int = 5000,
        split_seed: int = 0,
        shuffle_seed: int = 0,
        train_subset: int | None = None,
        test_subset: int | None = None,
        hflip: bool = False,
        num_workers: int = 0,
        pin_memory: bool = False,
        download: bool = True,
    ):
        super().__init__()
        self.name = check_dataset_name(name)
        if num_classes != len(CLASS_NAMES[name]):
            raise ValueError(f"dataset {name!r} has {len(CLASS_NAMES[name])} classes, config says {num_classes}")
        if not isinstance(conditional, bool):
            raise ValueError(f"conditional must be true or false, got {conditional!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.data_dir = data_dir
        self.image_size = image_size
        self.channels = channels or (3 if name == "cifar10" else 1)
        self.num_classes, self.conditional = num_classes, conditional
        self.class_names = CLASS_NAMES[name]
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_size = val_size
        self.split_seed = split_seed
        self.shuffle_seed = shuffle_seed
        self.train_subset, self.test_subset = train_subset, test_subset
        self.hflip = hflip
        self.num_workers, self.pin_memory, self.download = num_workers, pin_memory, download
        self.train_set = self.val_set = self.test_set = None

    def _load(self, train: bool) -> tuple[Tensor, Tensor]:
        images, labels = load_dataset(self.name, self.data_dir, train=train, download=self.download)
        return fit_images(images, self.image_size, self.channels), labels

    def prepare_data(self) -> None:
        """Download on one process per node (Lightning calls this before ``setup`` on every rank)."""
        load_dataset(self.name, self.data_dir, train=True, download=self.download)
        load_dataset(self.name, self.data_dir, train=False, download=self.download)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None and stage in (None, "fit", "validate"):
            images, labels = self._load(train=True)
            perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.split_seed))
            val_size = min(self.val_size, len(images) // 10) if self.train_subset else self.val_size
            val_idx, train_idx = perm[:val_size], perm[val_size:]
            if self.train_subset:
                train_idx = train_idx[: self.train_subset]
            self.train_set = InMemoryImages(images[train_idx], labels[train_idx], hflip=self.hflip)
            self.val_set = InMemoryImages(images[val_idx], labels[val_idx])
        if self.test_set is None and stage in (None, "test", "predict"):
            images, labels = self._load(train=False)
            if self.test_subset:
                images, labels = images[: self.test_subset], labels[: self.test_subset]
            self.test_set = InMemoryImages(images, labels)

    def _loader(self, ds: Dataset, batch_size: int, train: bool = False) -> DataLoader:
        """Training: seeded, rank-sharded, resumable order (:meth:`train_sampler`), full batches only;
        validation / test: the fixed order, whole batches dealt to ranks (:func:`eval_batch_sampler`)."""
        trainer = getattr(self, "trainer", None)
        if train:
            batching = {"batch_size": batch_size, "sampler": self.train_sampler(), "drop_last": True}
        else:
            batching = {"batch_sampler": eval_batch_sampler(len(ds), batch_size, trainer)}
        return DataLoader(
            ds,
            **batching,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.shuffle_seed),  # keeps the global RNG untouched
        )

    def train_sampler(self) -> ResumableSampler:
        """Seeded, rank-sharded, resumable order (:func:`training_sampler`)."""
        trainer = getattr(self, "trainer", None)
        return training_sampler(len(self.train_set), self.shuffle_seed, self.batch_size, trainer)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size)
