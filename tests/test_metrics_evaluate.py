"""Evaluation end to end on real MNIST / Fashion-MNIST with the offline Inception (n = 32: Inception runs at a
few images per second on a CPU, and every 2048-d FID solves a 2048 x 2048 eigenproblem), the data-vs-data
floor, and the DDP split-and-gather path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch_fidelity.metric_kid import kid_features_to_metric

from diffusionlab.metrics import scores
from diffusionlab.metrics.classifier import ClassifierFeatures, DomainClassifier, accuracy, load_classifier
from diffusionlab.metrics.datasets import load_split
from diffusionlab.metrics.evaluate import Evaluator, compare_datasets
from diffusionlab.metrics.reference import reference_features, select_subset
from tests.test_metrics_classifier import ensure_mnist_classifier
from tests.test_metrics_features import TS_SHA256
from tests.test_metrics_scores import lowrank_fid

N = 32


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, data_dir):
    path = tmp_path_factory.getbasetemp() / "metrics-cache"  # shared by the metrics test modules
    ensure_mnist_classifier(data_dir, path)
    return path


@pytest.fixture(scope="module")
def evaluator(data_dir, cache_dir, shared_dir):
    return Evaluator(
        "mnist:test",
        data_dir=data_dir,
        cache_dir=cache_dir,
        inception_weights=shared_dir / "weights" / "inception-2015-12-05-pool3.torchscript.pt",
        classifier=True,
        kid_subsets=10,
        batch_size=N,
        progress=False,
    )


@pytest.fixture(scope="module")
def floor(evaluator):
    """Real vs real through compare_datasets: MNIST train against MNIST test."""
    return compare_datasets("mnist:train", "mnist:test", N, evaluator=evaluator)


@pytest.fixture(scope="module")
def cross(evaluator, data_dir):
    """Fashion-MNIST test images as float [-1, 1] "samples" through Evaluator.evaluate, against MNIST test."""
    images = load_split("fashion_mnist", "test", data_dir)[0]
    images = images[select_subset(len(images), N, seed=0)]
    batches = (images[i : i + 10].float() / 127.5 - 1 for i in range(0, N, 10))
    return evaluator.evaluate(batches, num_samples=N, protocol={"sampler": "ddim", "steps": 50, "seed": 3})


def test_floor_train_vs_test_is_far_below_mnist_vs_fashion(floor, cross):
    assert 0 < floor["fid"] < 0.5 * cross["fid"], (floor["fid"], cross["fid"])
    assert floor["kid_mean"] < cross["kid_mean"]
    assert floor["precision"] > cross["precision"]
    assert floor["domain_fid"] < cross["domain_fid"]
    for m in (floor, cross):
        assert 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1
        assert m["num_samples"] == N and m["protocol"]["reference"]["n"] == N
    assert floor["class_accuracy"] >= 0.9  # the classifier on real, labelled MNIST train images
    assert cross["class_accuracy"] is None  # these samples carry no labels
    assert floor["protocol"]["mode"] == "data" and floor["protocol"]["a"] == "mnist:train"


def test_inception_protocol_is_recorded(cross):
    assert cross["inception_score"] is None  # the TorchScript port has no logits
    p = cross["protocol"]
    assert p["num_samples"] == N
    assert (p["reference"]["split"], p["reference"]["n"], p["reference"]["offset"]) == ("mnist:test", N, 0)
    assert p["feature_extractor"]["sha256"] == TS_SHA256 and "TorchScript" in p["feature_extractor"]["source"]
    assert "tensorflow1x" in p["feature_extractor"]["preprocessing"]["resize"]
    assert (p["sampler"], p["steps"], p["seed"]) == ("ddim", 50, 3)
    assert p["classifier"]["name"] == "classifier-mnist" and len(p["classifier"]["sha256"]) == 64
    assert any("inception_score" in note for note in p["notes"])
    assert any("no labels" in note for note in p["notes"])
    json.dumps(cross)  # metrics.json material


def test_inception_fid_equals_scipy_and_kid_equals_torch_fidelity(evaluator, floor):
    kw = {"data_dir": evaluator.data_dir, "cache_dir": evaluator.cache_dir, "progress": False}
    train, test = (reference_features(s, evaluator.extractor, N, **kw) for s in ("mnist:train", "mnist:test"))
    assert train.from_cache and test.from_cache
    a, b = test.features.features, train.features.features
    assert floor["fid"] == pytest.approx(lowrank_fid(a, b), rel=1e-3)
    mean, std, size = scores.kid(a, b, subsets=1, subset_size=N)
    ref = kid_features_to_metric(
        a, b, kid_subsets=1, kid_subset_size=N, verbose=False, rng_seed=0, kid_kernel="poly",
        kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1,
    )  # fmt: skip
    assert mean == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-3, abs=1e-6)


def _random_extractor():
    torch.manual_seed(0)
    return ClassifierFeatures(DomainClassifier(), "mnist", sha256="random-weights-seed-0")


def _cheap_evaluator(data_dir, cache_dir, **kw):
    """A random-weight CNN stands in for Inception: the same code path, fast."""
    kw = {"classifier": True, "kid_subsets": 5, "progress": False, **kw}
    return Evaluator("mnist:test", data_dir=data_dir, cache_dir=cache_dir, extractor=_random_extractor(), **kw)


def test_samples_equal_to_the_reference_score_perfectly(data_dir, cache_dir):
    """The reference images themselves, passed as float [-1, 1] sample batches with labels."""
    ev = _cheap_evaluator(data_dir, cache_dir)
    images, labels = load_split("mnist", "test", data_dir)
    idx = select_subset(len(images), 100, seed=0)
    images, labels = images[idx], labels[idx]
    batches = ((images[i : i + 30].float() / 127.5 - 1, labels[i : i + 30]) for i in range(0, 100, 30))
    m = ev.evaluate(batches, num_samples=100, protocol={"sampler": "ddpm", "steps": 1000})
    other = compare_datasets("mnist:train", "mnist:test", 100, evaluator=ev)
    assert abs(m["fid"]) < 1e-4 * other["fid"] and abs(m["domain_fid"]) < 1e-4 * other["domain_fid"]
    assert m["precision"] == 1.0 and m["recall"] == 1.0
    assert m["pixel_histogram_tv"] < 1e-12 < other["pixel_histogram_tv"]
    assert m["faint_pixel_fraction"] == pytest.approx(m["reference_faint_pixel_fraction"], abs=1e-12)
    model, _ = load_classifier("mnist", cache_dir)
    assert m["class_accuracy"] == pytest.approx(accuracy(model, images, labels))
    assert m["inception_score"] >= 1.0  # this extractor has logits
    p = m["protocol"]
    assert p["feature_extractor"]["sha256"] == "random-weights-seed-0"
    assert p["num_samples"] == 100 and p["reference"]["n"] == 100 and p["sampler"] == "ddpm"


def test_same_split_floor_uses_disjoint_subsets(data_dir, cache_dir):
    ev = _cheap_evaluator(data_dir, cache_dir, classifier=False)
    m = compare_datasets("mnist:test", "mnist:test", 200, evaluator=ev)
    assert m["protocol"]["reference"]["offset"] == 200 and m["fid"] > 0 and m["class_accuracy"] is None


def test_bad_evaluator_arguments(data_dir, cache_dir):
    with pytest.raises(ValueError, match="classifier must be one of"):
        Evaluator("mnist:test", data_dir=data_dir, extractor=_random_extractor(), classifier="yes")
    with pytest.raises(ValueError, match="no domain classifier for 'cifar10'"):
        Evaluator("cifar10:test", data_dir=data_dir, extractor=_random_extractor(), classifier=True)
    with pytest.raises(ValueError, match="dataset:split"):
        Evaluator("mnist-test", data_dir=data_dir, extractor=_random_extractor())


def _ddp_worker(rank: int, world: int, store: str, data_dir: str, cache_dir: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        images, labels = load_split("mnist", "train", data_dir)
        mine = range(0, 24) if rank == 0 else range(24, 40)  # unequal shares
        batches = [(images[i : i + 8].float() / 127.5 - 1, labels[i : i + 8]) for i in mine[::8]]
        m = _cheap_evaluator(data_dir, cache_dir).evaluate(batches)
        if rank == 0:
            with open(out, "w") as f:
                json.dump(m, f)
    finally:
        dist.destroy_process_group()


def test_ddp_split_and_gather_equals_one_process(data_dir, cache_dir, tmp_path):
    out = tmp_path / "ddp.json"
    args = (2, str(tmp_path / "store"), str(data_dir), str(cache_dir), str(out))
    mp.spawn(_ddp_worker, args=args, nprocs=2, join=True)
    ddp = json.loads(out.read_text())

    images, labels = load_split("mnist", "train", data_dir)
    single = _cheap_evaluator(data_dir, cache_dir).evaluate([(images[:40].float() / 127.5 - 1, labels[:40])])
    assert ddp["num_samples"] == single["num_samples"] == 40 and ddp["protocol"]["world_size"] == 2
    keys = ("fid", "kid_mean", "kid_std", "precision", "recall", "class_accuracy", "domain_fid", "pixel_histogram_tv")
    for key in keys:
        assert np.isclose(ddp[key], single[key], rtol=1e-4, atol=1e-6), (key, ddp[key], single[key])


def test_noise_std_selects_the_same_images_and_raises_fid(data_dir, cache_dir):
    """compare_datasets(noise_std=s): a's reference subset plus seeded noise; s -> 0 gives the noiseless floor."""
    ev = _cheap_evaluator(data_dir, cache_dir, classifier=False)
    clean = compare_datasets("mnist:test", "mnist:train", 200, evaluator=ev)
    tiny = compare_datasets("mnist:test", "mnist:train", 200, noise_std=1e-6, evaluator=ev)
    assert tiny["fid"] == pytest.approx(clean["fid"], rel=1e-9)  # quantised to the same uint8 images
    fids = [compare_datasets("mnist:test", "mnist:train", 200, noise_std=s, evaluator=ev)["fid"] for s in (0.1, 0.3)]
    assert clean["fid"] < fids[0] < fids[1]  # visible noise for a random-weight CNN (Inception: see README)
    # noise lifts MNIST's black background into faint grey: the intensity histogram says so directly
    grain = compare_datasets("mnist:test", "mnist:train", 200, noise_std=0.1, evaluator=ev)
    assert clean["pixel_histogram_tv"] < 0.02 < 0.3 < grain["pixel_histogram_tv"]
    assert clean["faint_pixel_fraction"] < 0.05 < 0.3 < grain["faint_pixel_fraction"]
    assert grain["reference_faint_pixel_fraction"] == clean["reference_faint_pixel_fraction"]
    again = compare_datasets("mnist:test", "mnist:train", 200, noise_std=0.1, evaluator=ev)
    assert again["fid"] == fids[0] and again["protocol"]["noise"] == {"std": 0.1, "seed": 0}
    assert "noise" not in clean["protocol"]
    with pytest.raises(ValueError, match="noise_std must be >= 0"):
        compare_datasets("mnist:test", "mnist:train", 200, noise_std=-0.1, evaluator=ev)
