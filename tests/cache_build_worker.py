"""One job of a sweep, for tests/test_cache_concurrency.py: build (or reuse) the three caches, report what it did.

    python -m tests.cache_build_worker <data_dir> <cache_dir> <barrier_dir> <rank> <out.json>

Before each cache the two workers meet at a file barrier, so they ask for it at the same moment; the first
build step sleeps, so the other one certainly arrives while it is being built. The report counts the images
each worker encoded / extracted and whether it trained the classifier, plus the cache log lines.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import torch


def barrier(folder: Path, name: str, rank: int, world: int = 2, timeout: float = 600) -> None:
    (folder / f"{name}.{rank}").touch()
    deadline = time.time() + timeout
    while not all((folder / f"{name}.{r}").exists() for r in range(world)):
        if time.time() > deadline:
            raise TimeoutError(f"barrier {name}: the other worker never arrived")
        time.sleep(0.02)


class Recorder(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def slow_first_call(fn, counter: list[int], size=len):
    """``fn`` counting the items it is given; its first call sleeps 1.5 s (holding the build lock)."""

    def wrapped(x, *args, **kwargs):
        if counter[0] == 0:
            time.sleep(1.5)
        counter[0] += size(x)
        return fn(x, *args, **kwargs)

    return wrapped


def main(data_dir: str, cache_dir: str, barrier_dir: str, rank: int, out: str) -> None:
    torch.set_num_threads(1)
    rec = Recorder()
    for name in ("diffusionlab.locks", "diffusionlab.cache", "diffusionlab.latent_cache"):
        logging.getLogger(name).addHandler(rec)
        logging.getLogger(name).setLevel(logging.INFO)
    from diffusionlab.data.datamodule import ImageDataModule
    from diffusionlab.data.latent_cache import LatentCacheDataModule, LatentDataset
    from diffusionlab.metrics import classifier as clf
    from diffusionlab.metrics.reference import reference_features
    from diffusionlab.nets.autoencoder import kl_autoencoder

    cache, sync = Path(cache_dir), Path(barrier_dir)
    report: dict = {}

    # latent cache: the same random autoencoder in both processes (same seed)
    torch.manual_seed(0)
    ae = kl_autoencoder(in_channels=1, ch=8, norm_groups=4, mid_attention=False).eval()
    encoded = [0]
    ae.encode = slow_first_call(ae.encode, encoded)
    images = ImageDataModule(name="mnist", data_dir=data_dir, image_size=32, batch_size=16, val_size=32,
                             train_subset=200)  # fmt: skip
    dm = LatentCacheDataModule(images, ae, cache_dir=cache / "latents", progress=False, sample=False)
    barrier(sync, "latent", rank)
    folder = dm.ensure_cache("train")
    z = LatentDataset(folder, sample=False)[7][0]
    report["latent"] = {"encoded": encoded[0], "folder": str(folder), "z": z.flatten()[:4].tolist()}

    # reference features with a random-weight classifier as the extractor
    torch.manual_seed(0)
    ext = clf.ClassifierFeatures(clf.DomainClassifier(), "mnist", sha256="random-weights-seed-0")
    seen = [0]
    ext.forward = slow_first_call(ext.forward, seen)
    barrier(sync, "reference", rank)
    ref = reference_features("mnist:test", ext, 300, data_dir=data_dir, cache_dir=cache, batch_size=100,
                             progress=False)  # fmt: skip
    total = float(ref.features.features.sum())
    report["reference"] = {"extracted": seen[0], "from_cache": ref.from_cache, "sum": total}

    # the domain classifier, tiny training budget
    trained = [0]
    clf.train_classifier = slow_first_call(clf.train_classifier, trained, size=lambda _: 1)
    barrier(sync, "classifier", rank)
    built = clf.ensure_classifier("mnist", data_dir, cache, epochs=1, max_train=300, max_test=100, progress=False)
    _, info = clf.load_classifier("mnist", cache)
    report["classifier"] = {"trained": trained[0], "built": built, "sha256": info["sha256"]}
    report["log"] = rec.lines
    Path(out).write_text(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:4], int(sys.argv[4]), sys.argv[5])
