"""Feature extractors: the TorchScript Inception against torch-fidelity's own network, checksums, errors."""

from __future__ import annotations

import hashlib
import urllib.error

import pytest
import torch

from diffusionlab.metrics.classifier import ClassifierFeatures, DomainClassifier
from diffusionlab.metrics.datasets import load_split
from diffusionlab.metrics.features import (
    FoldedInception,
    TorchFidelityInception,
    TorchScriptInception,
    extract_features,
    load_inception,
    torch_fidelity_skeleton,
    torch_fidelity_weights_from_torchscript,
)
from diffusionlab.metrics.inception_folded import FoldedInceptionNet
from diffusionlab.metrics.winograd import WinogradConvReLU

TS_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"  # ../shared/README.md


@pytest.fixture(scope="module")
def ts_path(shared_dir):
    path = shared_dir / "weights" / "inception-2015-12-05-pool3.torchscript.pt"
    if not path.is_file():
        pytest.fail(f"Inception TorchScript not found at {path}")
    return path


@pytest.fixture(scope="module")
def torchscript(ts_path):
    return load_inception(ts_path, folded=False)


def test_torchscript_features_equal_torch_fidelity_network_on_the_same_weights(
    ts_path, torchscript, data_dir, tmp_path
):
    """The TorchScript graph fed by our resize/scaling == torch-fidelity's FeatureExtractorInceptionV3 (which
    resizes and scales inside) holding the same weights: grayscale 28x28 MNIST and RGB 32x32 noise."""
    weights = tmp_path / "tf.pth"
    torch.save(torch_fidelity_weights_from_torchscript(ts_path), weights)
    oracle = load_inception(weights, folded=False)
    assert isinstance(oracle, TorchFidelityInception) and isinstance(torchscript, TorchScriptInception)

    mnist = load_split("mnist", "test", data_dir)[0][:4]
    rgb = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for images in (mnist, rgb):
        ours, logits = torchscript(images)
        ref, ref_logits = oracle(images)
        assert ours.shape == (len(images), 2048) and logits is None and ref_logits is None
        assert ours.abs().mean() > 0.05  # real, non-trivial activations
        torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_folded_inception_features_equal_the_torchscript_graph_on_64_real_mnist_images(ts_path, torchscript, data_dir):
    """The fast default extractor (batch norms folded, grayscale first conv, channels-last) against the
    TorchScript graph on 64 real MNIST test images and on RGB noise: features equal to 1e-4 relative per
    image (measured ~7e-6 with the Winograd convolutions, ~1e-6 without), so FIDs do not move; same name and
    sha256, so caches are shared."""
    folded = load_inception(ts_path)
    assert isinstance(folded, FoldedInception) and not folded.has_logits
    assert (folded.name, folded.sha256) == (torchscript.name, torchscript.sha256)
    # the stride-1 3x3, 5x5, 1x7, 7x1, 1x3, 3x1 convolutions with >= 32 x 64 channels run by Winograd
    assert sum(isinstance(m, WinogradConvReLU) for m in folded.net.modules()) == 48
    mnist = load_split("mnist", "test", data_dir)[0][:64]
    rgb = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    for images in (mnist, rgb):
        ours, logits = folded(images)
        ref, _ = torchscript(images)
        assert logits is None and ours.shape == ref.shape == (len(images), 2048)
        rel = (ours - ref).norm(dim=1) / ref.norm(dim=1)
        assert rel.max() < 1e-4, f"max relative feature error {rel.max():.2e}"


def test_folded_inception_features_do_not_depend_on_its_chunk_sizes(ts_path, data_dir):
    """The stages' images per pass are a speed setting: one pass over 12 real MNIST images and passes of
    (5, 3, 7) images (uneven last chunks) give the same features; a bad setting is refused by name."""
    folded = load_inception(ts_path)
    images = load_split("mnist", "test", data_dir)[0][:12]
    one_pass = FoldedInceptionNet(torch_fidelity_skeleton(), with_logits=False, chunks=(12, 12, 12))
    one_pass.load_state_dict(folded.net.state_dict())
    chunked = FoldedInceptionNet(torch_fidelity_skeleton(), with_logits=False, chunks=(5, 3, 7))
    chunked.load_state_dict(folded.net.state_dict())
    with torch.inference_mode():
        reference, ours, default = one_pass(images)[0], chunked(images)[0], folded(images)[0]
    assert reference.abs().mean() > 0.05
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(default, reference, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="chunks must be 3 positive image counts"):
        FoldedInceptionNet(torch_fidelity_skeleton(), with_logits=False, chunks=(4, 0, 8))


def test_folded_inception_keeps_torch_fidelity_logits(ts_path, tmp_path):
    """With a classifier in the weights (here: the converted weights with a random fc), the folded net gives
    torch-fidelity's unbiased logits (``features @ fc.weight.T``) for Inception Score."""
    state = torch_fidelity_weights_from_torchscript(ts_path)
    state["fc.weight"] = torch.randn(state["fc.weight"].shape, generator=torch.Generator().manual_seed(0))
    weights = tmp_path / "with_fc.pth"
    torch.save(state, weights)
    oracle = load_inception(weights, folded=False)
    folded = load_inception(weights)
    assert oracle.has_logits and folded.has_logits
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    feats, logits = folded(images)
    ref_feats, ref_logits = oracle(images)
    torch.testing.assert_close(feats, ref_feats, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits, ref_logits, atol=1e-3, rtol=1e-4)


def test_info_records_source_and_sha256(ts_path, torchscript):
    info = torchscript.info()
    assert info["sha256"] == TS_SHA256 == hashlib.sha256(ts_path.read_bytes()).hexdigest()
    assert info["num_features"] == 2048 and info["has_logits"] is False
    assert "TorchScript" in info["source"]
    assert "tensorflow1x" in info["preprocessing"]["resize"]


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_inception(tmp_path / "nope.pt")


def test_offline_download_failure_says_what_to_do(monkeypatch):
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tfi, "load_state_dict_from_url", no_network)
    with pytest.raises(RuntimeError, match="inception_weights="):
        load_inception(None)


def _tiny_extractor():
    torch.manual_seed(0)
    return ClassifierFeatures(DomainClassifier(), "mnist")


def test_extract_features_quantises_floats_and_keeps_labels_in_order():
    ext = _tiny_extractor()
    g = torch.Generator().manual_seed(1)
    u = torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8, generator=g)
    y = torch.arange(10)
    floats = [(u[i : i + 4].float() / 127.5 - 1, y[i : i + 4]) for i in range(0, 10, 4)]
    sets, labels = extract_features(floats, {"a": ext}, progress=False)
    direct, direct_logits = ext(u)
    torch.testing.assert_close(sets["a"].features, direct)
    torch.testing.assert_close(sets["a"].logits, direct_logits)
    assert torch.equal(labels, y)
    sets2, labels2 = extract_features([u[:5], u[5:]], {"a": ext}, progress=False)
    torch.testing.assert_close(sets2["a"].features, direct)
    assert labels2 is None


def test_extract_features_rejects_empty_and_inconsistent_input():
    ext = _tiny_extractor()
    u = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)
    with pytest.raises(ValueError, match="empty"):
        extract_features([], {"a": ext}, progress=False)
    with pytest.raises(ValueError, match="labels"):
        extract_features([(u, torch.arange(3))], {"a": ext}, progress=False)
    with pytest.raises(ValueError, match="every batch or no batch"):
        extract_features([(u, torch.arange(2)), u], {"a": ext}, progress=False)
    with pytest.raises(ValueError, match=r"\[B, 1, 28, 28\]"):
        extract_features([torch.zeros(2, 3, 32, 32, dtype=torch.uint8)], {"a": ext}, progress=False)
