"""Data modules on the real MNIST / Fashion-MNIST files, CIFAR-10 on a small archive in its own format."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from diffusionlab.data import DatasetNotFoundError, load_dataset
from diffusionlab.data.datamodule import ImageDataModule


def test_mnist_real_files_shapes_and_range(data_dir):
    dm = ImageDataModule("mnist", str(data_dir), image_size=32, val_size=1000, batch_size=16, test_subset=100)
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.train_set) == 59000 and len(dm.val_set) == 1000 and len(dm.test_set) == 100
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
    assert x.min() >= -1 and x.max() <= 1 and x.min() == -1  # black background
    # padding 28 -> 32 adds a 2-pixel black border
    assert (x[:, :, :2] == -1).all() and (x[:, :, -2:] == -1).all()


def test_split_is_seeded_and_disjoint(data_dir):
    a = ImageDataModule("mnist", str(data_dir), val_size=500, image_size=28)
    b = ImageDataModule("mnist", str(data_dir), val_size=500, image_size=28)
    a.setup("fit")
    b.setup("fit")
    assert torch.equal(a.val_set.images, b.val_set.images)
    c = ImageDataModule("mnist", str(data_dir), val_size=500, image_size=28, split_seed=1)
    c.setup("fit")
    assert not torch.equal(a.val_set.images, c.val_set.images)


def test_fashion_mnist_and_rgb_conversion(data_dir):
    dm = ImageDataModule("fashion_mnist", str(data_dir), image_size=28, channels=3, train_subset=64, val_size=64)
    dm.setup("fit")
    x, _ = dm.train_set[0]
    assert x.shape == (3, 28, 28) and torch.equal(x[0], x[1])


def test_offline_missing_dataset_names_files_and_folder(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        load_dataset("mnist", tmp_path, train=True, download=False)
    msg = str(e.value)
    assert "train-images-idx3-ubyte.gz" in msg and str(tmp_path / "MNIST" / "raw") in msg


def test_unknown_dataset_lists_choices(tmp_path):
    with pytest.raises(ValueError, match="valid choices: mnist, fashion_mnist, cifar10"):
        ImageDataModule("svhn", str(tmp_path))


def _write_cifar(root, n_per_batch=6, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n_per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": data, "labels": labels}, f)
        batches[name] = (data, labels)
    return batches


def test_cifar10_reads_the_pickle_format(tmp_path):
    batches = _write_cifar(tmp_path)
    images, labels = load_dataset("cifar10", tmp_path, train=True, download=False)
    assert images.shape == (30, 3, 32, 32) and images.dtype == torch.uint8
    # CIFAR rows are 1024 red, 1024 green, 1024 blue values, row-major
    first = batches["data_batch_1"][0][0]
    assert images[0, 1, 0, 5] == first[1024 + 5] and images[0, 2, 3, 0] == first[2048 + 3 * 32]
    assert labels[:6].tolist() == batches["data_batch_1"][1]
    dm = ImageDataModule("cifar10", str(tmp_path), image_size=32, val_size=6, hflip=True, download=False, batch_size=8)
    dm.setup("fit")
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == (3, 32, 32)


def test_cifar10_refuses_pickles_with_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": Evil(), "labels": []}, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_dataset("cifar10", tmp_path, train=True, download=False)


def test_to_native_size_inverts_padding():
    from diffusionlab.data.transforms import fit_images, to_native_size

    x = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    padded = fit_images(x, 32, 1)
    assert padded.shape[-1] == 32 and torch.equal(to_native_size(padded, "mnist"), x)
    assert to_native_size(padded, "cifar10") is padded
