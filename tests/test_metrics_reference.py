"""Reference features: computed once, cached on disk, keyed by data, preprocessing, extractor, n, subset."""

from __future__ import annotations

import pytest
import torch

from diffusionlab.metrics.classifier import ClassifierFeatures, DomainClassifier
from diffusionlab.metrics.reference import reference_features, select_subset


class CountingExtractor(ClassifierFeatures):
    """A real (random-weight) classifier extractor that counts the images it sees."""

    def __init__(self, seed: int = 0):
        torch.manual_seed(seed)
        super().__init__(DomainClassifier(), "mnist", sha256=f"random-weights-seed-{seed}")
        self.images_seen = 0

    def forward(self, images):
        self.images_seen += images.shape[0]
        return super().forward(images)


def _ref(split, ext, n, data_dir, cache, **kw):
    return reference_features(split, ext, n, data_dir=data_dir, cache_dir=cache, batch_size=16, progress=False, **kw)


def test_second_call_hits_the_cache_without_running_the_extractor(data_dir, tmp_path):
    ext = CountingExtractor()
    first = _ref("mnist:test", ext, 40, data_dir, tmp_path)
    assert ext.images_seen == 40 and not first.from_cache and first.path.is_file()
    second = _ref("mnist:test", ext, 40, data_dir, tmp_path)
    assert ext.images_seen == 40, "the extractor ran although the features were cached"
    assert second.from_cache and second.path == first.path
    torch.testing.assert_close(second.features.features, first.features.features, rtol=0, atol=0)
    torch.testing.assert_close(second.features.logits, first.features.logits, rtol=0, atol=0)
    assert torch.equal(second.labels, first.labels) and second.meta == first.meta
    # the cached features are those of the selected images
    from diffusionlab.metrics.datasets import load_split

    images, labels = load_split("mnist", "test", data_dir)
    idx = select_subset(len(images), 40, seed=0)
    assert torch.equal(first.labels, labels[idx])
    torch.testing.assert_close(first.features.features, ext(images[idx])[0])
    # atomic writes leave no temporary (or lock) files behind: the features and their checksum
    assert sorted(p.name for p in (tmp_path / "reference").iterdir()) == [first.path.name, first.path.name + ".sha256"]


def test_key_changes_with_n_split_extractor_and_subset(data_dir, tmp_path):
    ext, other = CountingExtractor(0), CountingExtractor(1)
    base = _ref("mnist:test", ext, 20, data_dir, tmp_path)
    variants = {
        "n": _ref("mnist:test", ext, 21, data_dir, tmp_path),
        "split": _ref("mnist:train", ext, 20, data_dir, tmp_path),
        "dataset": _ref("fashion_mnist:test", ext, 20, data_dir, tmp_path),
        "extractor weights": _ref("mnist:test", other, 20, data_dir, tmp_path),
        "seed": _ref("mnist:test", ext, 20, data_dir, tmp_path, seed=1),
        "offset": _ref("mnist:test", ext, 20, data_dir, tmp_path, offset=20),
    }
    keys = {name: r.meta["key"] for name, r in variants.items()}
    assert base.meta["key"] not in keys.values() and len(set(keys.values())) == len(keys), keys
    assert not any(r.from_cache for r in variants.values())
    assert _ref("mnist:test", ext, 20, data_dir, tmp_path).meta["key"] == base.meta["key"]  # stable


def test_key_changes_when_the_preprocessing_changes(data_dir, tmp_path):
    ext = CountingExtractor()
    base = _ref("mnist:test", ext, 10, data_dir, tmp_path)

    class OtherPreprocessing(CountingExtractor):
        def preprocessing(self):
            return {**super().preprocessing(), "input": "something else"}

    changed = _ref("mnist:test", OtherPreprocessing(), 10, data_dir, tmp_path)
    assert changed.meta["key"] != base.meta["key"] and not changed.from_cache


def test_subsets_are_seeded_and_disjoint_by_offset():
    a, b = select_subset(100, 30, seed=0), select_subset(100, 30, seed=0, offset=30)
    assert torch.equal(a, select_subset(100, 30, seed=0))
    assert not set(a.tolist()) & set(b.tolist())
    with pytest.raises(ValueError, match="n=80 images at offset 30"):
        select_subset(100, 80, offset=30)
    with pytest.raises(ValueError, match="n must be"):
        select_subset(100, 1)


def test_bad_split_names_are_rejected(data_dir, tmp_path):
    ext = CountingExtractor()
    with pytest.raises(ValueError, match="dataset:split"):
        _ref("mnist", ext, 10, data_dir, tmp_path)
    with pytest.raises(ValueError, match="'train', 'test'"):
        _ref("mnist:val", ext, 10, data_dir, tmp_path)
    with pytest.raises(ValueError, match="cifar10"):
        _ref("imagenet:test", ext, 10, data_dir, tmp_path)


def test_read_only_data_folder_is_mirrored_into_the_cache_not_written(data_dir, tmp_path):
    from diffusionlab.metrics.datasets import load_split

    raw = tmp_path / "ro" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (data_dir / "MNIST" / "raw").glob("*.gz"):
        (raw / f.name).symlink_to(f.resolve())
    raw.chmod(0o555)
    try:
        images, labels = load_split("mnist", "test", tmp_path / "ro", tmp_path / "cache")
    finally:
        raw.chmod(0o755)
    assert images.shape == (10000, 1, 28, 28) and images.dtype == torch.uint8 and labels.shape == (10000,)
    assert all(p.name.endswith(".gz") for p in raw.iterdir()), "the read-only folder was written to"
    assert (tmp_path / "cache" / "datasets" / "MNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()
    ref_images, ref_labels = load_split("mnist", "test", data_dir)
    assert torch.equal(images, ref_images) and torch.equal(labels, ref_labels)
