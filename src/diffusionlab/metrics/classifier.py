"""Domain classifier for MNIST / Fashion-MNIST: class accuracy of conditional samples and a domain FID.

Inception is trained on photographs, not digits; a small CNN trained on the dataset's own train split gives
(a) the class accuracy of class-conditional samples and (b) a FID in its 128-d penultimate feature space.
The checkpoint is cached as ``cache_dir/classifiers/<dataset>.safetensors`` (config and test accuracy in its
metadata) with a ``.sha256`` sidecar checked on every load: a damaged file is never used (evaluation retrains
it with a warning). Concurrent processes train it once (:func:`ensure_classifier`). Train it with
``make classifier`` or::

    python -m diffusionlab.cli.classifier --dataset mnist --data-dir ../shared/datasets
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from diffusionlab.metrics.cache import resolve_cache_dir, sha256_file, sha256_tensors
from diffusionlab.metrics.datasets import canonical_dataset, load_split
from diffusionlab.metrics.features import FeatureExtractor
from diffusionlab.metrics.preprocess import check_images
from diffusionlab.utils.cache_files import atomic_write_checked, ensure_cached_file
from diffusionlab.utils.checksums import checksum_problem
from diffusionlab.utils.locks import file_lock

TARGET_ACCURACY = {"mnist": 0.99, "fashion_mnist": 0.90}
DEFAULT_EPOCHS = {"mnist": 4, "fashion_mnist": 8}
CLASSIFIER_DATASETS = tuple(TARGET_ACCURACY)


def classifier_dataset(name: str) -> str:
    """Canonical name of a dataset that has a domain classifier; ValueError otherwise."""
    key = canonical_dataset(name)
    if key not in CLASSIFIER_DATASETS:
        raise ValueError(f"no domain classifier for dataset {name!r}; choose one of {list(CLASSIFIER_DATASETS)}")
    return key


class DomainClassifier(nn.Module):
    """CNN for ``[B, 1, 28, 28]`` float in [-1, 1]: ``forward -> logits [B, num_classes]``,
    ``features -> [B, feature_dim]`` (penultimate layer, after ReLU)."""

    def __init__(self, num_classes: int = 10, width: int = 32, feature_dim: int = 128, dropout: float = 0.3):
        super().__init__()
        self.config = {
            "num_classes": num_classes,
            "width": width,
            "feature_dim": feature_dim,
            "dropout": dropout,
        }
        w = width

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.body = nn.Sequential(
            *block(1, w), nn.MaxPool2d(2),  # 14 x 14
            *block(w, 2 * w), nn.MaxPool2d(2),  # 7 x 7
            *block(2 * w, 2 * w),
            nn.Flatten(),
            nn.Linear(2 * w * 49, feature_dim),
            nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def to_input(images: Tensor) -> Tensor:
    """uint8 ``[B, 1, 28, 28]`` -> float ``[B, 1, 28, 28]`` in [-1, 1]."""
    check_images(images)
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    if images.shape[1:] != (1, 28, 28):
        raise ValueError(f"the domain classifier takes [B, 1, 28, 28] images, got {tuple(images.shape)}")
    return images.float() / 127.5 - 1


def classifier_path(dataset: str, cache_dir: str | os.PathLike | None = None) -> Path:
    return resolve_cache_dir(cache_dir) / "classifiers" / f"{classifier_dataset(dataset)}.safetensors"


@torch.inference_mode()
def accuracy(model: DomainClassifier, images: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy on uint8 images ``[N, 1, 28, 28]`` with labels ``[N]``."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(images), batch_size):
        logits = model(to_input(images[i : i + batch_size]).to(device))
        correct += int((logits.argmax(1).cpu() == labels[i : i + batch_size]).sum())
    return correct / len(images)


def train_classifier(
    dataset: str,
    data_dir: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    epochs: int | None = None,
    max_train: int | None = None,
    max_test: int | None = None,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    save: bool = True,
) -> tuple[DomainClassifier, dict]:
    """Train on the train split (optionally a seeded subset of ``max_train`` images), measure test accuracy.

    AdamW with a one-cycle learning rate. Returns ``(model in eval mode, info)``; ``info`` has
    ``test_accuracy``, ``train_size``, ``test_size``, ``epochs``, ``seconds``. With ``save`` the checkpoint
    goes to :func:`classifier_path` (atomically).
    """
    dataset = classifier_dataset(dataset)
    epochs = DEFAULT_EPOCHS[dataset] if epochs is None else epochs
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    gen = torch.Generator().manual_seed(seed)
    x_train, y_train = load_split(dataset, "train", data_dir, cache_dir)
    x_test, y_test = load_split(dataset, "test", data_dir, cache_dir)
    if max_train is not None:
        idx = torch.randperm(len(x_train), generator=gen)[:max_train]
        x_train, y_train = x_train[idx], y_train[idx]
    if max_test is not None:
        x_test, y_test = x_test[:max_test], y_test[:max_test]

    torch.manual_seed(seed)
    model = DomainClassifier().to(device)
    steps_per_epoch = (len(x_train) + batch_size - 1) // batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    start = time.time()
    bar = tqdm(total=epochs * steps_per_epoch, desc=f"classifier {dataset}", disable=not progress)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        for i in range(0, len(x_train), batch_size):
            j = perm[i : i + batch_size]
            x, y = to_input(x_train[j]).to(device), y_train[j].to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    info = {
        "dataset": dataset,
        "test_accuracy": accuracy(model, x_test, y_test),
        "train_size": len(x_train),
        "test_size": len(x_test),
        "epochs": epochs,
        "seed": seed,
        "seconds": round(time.time() - start, 1),
    }
    if save:
        atomic_write_checked(classifier_path(dataset, cache_dir), lambda tmp: write_classifier(model, info, tmp))
    return model, info


def write_classifier(model: DomainClassifier, info: dict, path: str | os.PathLike) -> None:
    """The weights as safetensors, with the config and ``info`` in the metadata."""
    meta = {"config": json.dumps(model.config), "info": json.dumps(info)}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=meta)


def ensure_classifier(
    dataset: str, data_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None, force: bool = False,
    **train_kw,
) -> bool:  # fmt: skip
    """Train and cache the classifier of ``dataset`` unless a verified one is there (``force``: always).

    A damaged file is retrained with a warning; concurrent processes train once, the others wait and reuse
    it. ``train_kw`` go to :func:`train_classifier`. Returns True if this call trained it."""
    path = classifier_path(dataset, cache_dir)
    if force:
        with file_lock(path):
            train_classifier(dataset, data_dir, cache_dir=cache_dir, save=True, **train_kw)
        return True

    def write(tmp: Path) -> None:
        model, info = train_classifier(dataset, data_dir, cache_dir=cache_dir, save=False, **train_kw)
        write_classifier(model, info, tmp)

    return ensure_cached_file(path, write, "domain classifier")


def load_classifier(
    dataset: str,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    data_dir: str | os.PathLike | None = None,
) -> tuple[DomainClassifier, dict]:
    """The cached classifier of ``dataset`` (eval mode) and its info (``test_accuracy``, ..., ``sha256``).

    A file whose sha256 differs from its sidecar is never loaded: with ``data_dir`` it is retrained first
    (default settings, as ``make classifier``; a warning says so), without it a ValueError says how."""
    path = classifier_path(dataset, cache_dir)
    name = canonical_dataset(dataset)
    if not path.is_file():
        raise FileNotFoundError(
            f"no domain classifier for {name!r} at {str(path)!r}; train it with `python -m "
            f"diffusionlab.cli.classifier --dataset {name} --data-dir <datasets folder>` (make classifier)"
        )
    problem = checksum_problem(path)
    if problem is not None:
        if data_dir is None:
            raise ValueError(
                f"domain classifier {str(path)!r} is damaged ({problem}); retrain it with `python -m "
                f"diffusionlab.cli.classifier --dataset {name} --data-dir <datasets folder> --force`"
            )
        ensure_classifier(dataset, data_dir, cache_dir)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    model = DomainClassifier(**json.loads(meta["config"]))
    model.load_state_dict(load_file(str(path)))
    info = {**json.loads(meta["info"]), "path": str(path), "sha256": sha256_file(path)}
    return model.to(device).eval(), info


class ClassifierFeatures(FeatureExtractor):
    """The domain classifier as a feature extractor: uint8 ``[B, 1, 28, 28]`` ->
    (penultimate features ``[B, 128]``, logits ``[B, 10]``)."""

    has_logits = True

    def __init__(self, model: DomainClassifier, dataset: str, sha256: str | None = None) -> None:
        super().__init__()
        self.model = model.eval()
        self.name = f"classifier-{classifier_dataset(dataset)}"
        self.source = "diffusionlab DomainClassifier"
        # without a file checksum, key caches by the weights themselves (two unsaved classifiers never share)
        self.sha256 = sha256 or sha256_tensors(*model.state_dict().values())
        self.num_features = model.config["feature_dim"]

    def preprocessing(self) -> dict:
        return {
            "quantize": "uint8 = round((clamp(x, -1, 1) + 1) * 127.5)",
            "input": "uint8 / 127.5 - 1, 28x28",
        }

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.model.features(to_input(images).to(self.device))
        return feats.float(), self.model.head(feats).float()


def load_classifier_extractor(
    dataset: str,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    data_dir: str | os.PathLike | None = None,
) -> tuple[ClassifierFeatures, dict]:
    """:func:`load_classifier` wrapped as a :class:`ClassifierFeatures` extractor."""
    model, info = load_classifier(dataset, cache_dir, device, data_dir)
    return ClassifierFeatures(model, dataset, info["sha256"]).to(device), info
