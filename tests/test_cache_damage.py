"""Damaged caches (truncated or one flipped byte) are found by their sha256, never used, rebuilt with a warning
that names the file and the reason: reference features, the domain classifier, the latent cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusionlab.metrics import classifier as clf
from diffusionlab.utils.checksums import checksum_path, checksum_problem, write_checksum
from tests.test_latent_cache import count_encodes, make_dm, tiny_ae
from tests.test_metrics_reference import CountingExtractor, _ref


def damage(path, how: str) -> None:
    if how == "truncated":  # a copy cut short, a crash of another tool
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)
    else:  # same size, one byte flipped: only a checksum sees it
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))


def test_checksum_sidecar_catches_truncation_bit_flips_and_a_missing_sidecar(tmp_path):
    path = tmp_path / "payload.bin"
    path.write_bytes(bytes(range(256)) * 64)
    write_checksum(path)
    assert checksum_problem(path) is None
    assert checksum_path(path).read_text().endswith("  payload.bin\n")  # sha256sum -c format
    damage(path, "flipped")
    assert "differs" in checksum_problem(path) and "corrupted" in checksum_problem(path)
    write_checksum(path)
    damage(path, "truncated")
    assert f"{256 * 32} bytes" in checksum_problem(path)
    checksum_path(path).unlink()
    assert "no checksum file payload.bin.sha256" in checksum_problem(path)


@pytest.mark.parametrize("how", ["truncated", "flipped"])
def test_damaged_reference_features_are_recomputed_with_a_warning(data_dir, tmp_path, how):
    ext = CountingExtractor()
    first = _ref("mnist:test", ext, 40, data_dir, tmp_path)
    damage(first.path, how)
    with pytest.warns(UserWarning, match=rf"reference features '.*{first.path.name}' is damaged \(its sha256"):
        again = _ref("mnist:test", ext, 40, data_dir, tmp_path)
    assert ext.images_seen == 80 and not again.from_cache, "the damaged file was used"
    torch.testing.assert_close(again.features.features, first.features.features, rtol=0, atol=0)
    assert checksum_problem(first.path) is None
    assert _ref("mnist:test", ext, 40, data_dir, tmp_path).from_cache and ext.images_seen == 80


def test_reference_file_without_its_checksum_is_not_trusted(data_dir, tmp_path):
    ext = CountingExtractor()
    first = _ref("mnist:test", ext, 20, data_dir, tmp_path)
    checksum_path(first.path).unlink()  # an older version's file, or a crash between payload and checksum
    with pytest.warns(UserWarning, match="no checksum file"):
        assert not _ref("mnist:test", ext, 20, data_dir, tmp_path).from_cache


TINY_TRAINING = dict(epochs=1, max_train=300, max_test=100, progress=False)
real_train = clf.train_classifier


def test_damaged_classifier_is_never_loaded_and_is_retrained(data_dir, tmp_path, monkeypatch):
    """Truncated here (bit flips: the sidecar test above and the reference / latent tests)."""
    assert clf.ensure_classifier("mnist", data_dir, tmp_path, **TINY_TRAINING) is True
    path = clf.classifier_path("mnist", tmp_path)
    damage(path, "truncated")
    with pytest.raises(ValueError, match=r"mnist.safetensors' is damaged \(its sha256.*--force"):
        clf.load_classifier("mnist", tmp_path)  # no data to retrain with: refused, not used
    # evaluation knows the data folder: it retrains (here with the tiny budget) and says so
    calls = []

    def tiny_train(*args, **kwargs):
        calls.append(1)
        return real_train(*args, **{**kwargs, **TINY_TRAINING})

    monkeypatch.setattr(clf, "train_classifier", tiny_train)
    with pytest.warns(UserWarning, match=r"domain classifier '.*mnist.safetensors' is damaged"):
        model, info = clf.load_classifier("mnist", tmp_path, data_dir=data_dir)
    assert calls == [1] and checksum_problem(path) is None
    assert info["test_size"] == 100 and 0 <= info["test_accuracy"] <= 1


def test_latent_cache_checks_sha256_by_default(data_dir, tmp_path, monkeypatch):
    dm = make_dm(data_dir, tmp_path, tiny_ae(), sample=False)
    assert dm.verify == "hash"
    dm.setup("fit")
    path = dm.cache_folder("val") / "mean.npy"
    good = np.load(path).copy()
    damage(path, "flipped")
    ae = tiny_ae()
    count = count_encodes(monkeypatch, ae)
    with pytest.warns(UserWarning, match=r"latent cache '.*-val-.*' is damaged \(mean.npy does not match its sha256"):
        make_dm(data_dir, tmp_path, ae, sample=False).setup("fit")
    assert count[0] == 32  # the val split only, re-encoded
    np.testing.assert_array_equal(np.load(path), good)
