"""Reading the small image datasets into memory as uint8 tensors, offline-first.

Every loader returns ``(images uint8 [N, C, H, W], labels long [N])`` and either finds the files under
``data_dir`` (torchvision's layout), downloads them when allowed and online, or raises
:class:`DatasetNotFoundError` naming the missing files and the folder to put them in.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

DATASET_NAMES = ("mnist", "fashion_mnist", "cifar10")

_TORCHVISION_MNIST = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
_MNIST_FILES = {
    True: ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    False: ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_FILES = {True: [f"data_batch_{i}" for i in range(1, 6)], False: ["test_batch"]}

CLASS_NAMES = {
    "mnist": [str(i) for i in range(10)],
    "fashion_mnist": ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"],
    "cifar10": ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing and could not be downloaded."""


def check_dataset_name(name: str) -> str:
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; valid choices: {', '.join(DATASET_NAMES)}")
    return name


def _missing_message(name: str, folder: Path, files: list[str], err: Exception | None) -> str:
    why = f" (download failed: {type(err).__name__}: {err})" if err else " (download=false)"
    return (
        f"dataset {name!r} not found{why}. Put these files in {folder}: {', '.join(files)} "
        f"-- or set paths.data_dir to a folder that has them."
    )


def load_mnist_like(name: str, data_dir: str | Path, train: bool, download: bool = True) -> tuple[Tensor, Tensor]:
    """MNIST / Fashion-MNIST through torchvision (which extracts the ``.gz`` files in place, offline)."""
    from torchvision import datasets

    cls_name = _TORCHVISION_MNIST[name]
    raw = Path(data_dir) / cls_name / "raw"
    try:
        ds = getattr(datasets, cls_name)(str(data_dir), train=train, download=download)
    except Exception as err:  # torchvision raises RuntimeError / URLError when offline or files missing
        raise DatasetNotFoundError(_missing_message(name, raw, list(_MNIST_FILES[train]), err)) from None
    return ds.data.unsqueeze(1).contiguous(), ds.targets.long()


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles CIFAR-10's batch files (dicts of numpy arrays and lists) and refuses anything else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: CIFAR-10 files hold only arrays")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    with open(path, "rb") as f:
        d = _ArraysOnlyUnpickler(f, encoding="latin1").load()
    data = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return data, list(d["labels"])


def load_cifar10(data_dir: str | Path, train: bool, download: bool = True) -> tuple[Tensor, Tensor]:
    """CIFAR-10 from torchvision's ``cifar-10-batches-py`` pickles (downloaded and extracted if missing)."""
    folder = Path(data_dir) / _CIFAR_FOLDER
    files = _CIFAR_FILES[train]
    missing = [f for f in files if not (folder / f).exists()]
    if missing:
        err = None
        if download:
            try:
                from torchvision.datasets import CIFAR10

                CIFAR10(str(data_dir), train=train, download=True)
            except Exception as e:  # offline: URLError / RuntimeError
                err = e
        missing = [f for f in files if not (folder / f).exists()]
        if missing:
            raise DatasetNotFoundError(
                _missing_message("cifar10", folder, missing, err)
                + " (or cifar-10-python.tar.gz in the data folder, which is then extracted)"
            )
    parts = [_read_cifar_batch(folder / f) for f in files]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.tensor([y for p in parts for y in p[1]], dtype=torch.long)
    return images, labels


def load_dataset(name: str, data_dir: str | Path, train: bool, download: bool = True) -> tuple[Tensor, Tensor]:
    """``(images uint8 [N, C, H, W], labels long [N])`` of the train or the official test split."""
    check_dataset_name(name)
    if name == "cifar10":
        return load_cifar10(data_dir, train, download)
    return load_mnist_like(name, data_dir, train, download)
