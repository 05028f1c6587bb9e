"""FID / KID / precision-recall / IS on feature vectors, checked against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from torch_fidelity.metric_kid import kid_features_to_metric

from diffusionlab.metrics import scores


def scipy_fid(a: torch.Tensor, b: torch.Tensor) -> float:
    """The textbook formula with scipy.linalg.sqrtm (independent of torchmetrics' eigvals)."""
    a, b = a.double().numpy(), b.double().numpy()
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def lowrank_fid(a: torch.Tensor, b: torch.Tensor) -> float:
    """Exact FID for n < D via scipy's SVD: with S_i = A_i^T A_i (A_i centred / sqrt(n_i - 1)), the non-zero
    eigenvalues of S_1 S_2 are the squared singular values of A_1 A_2^T, so tr sqrt(S_1 S_2) = ||A_1 A_2^T||_*.
    An n x n problem instead of a D x D one: the 2048-d Inception oracle at small n."""
    a, b = a.double().numpy(), b.double().numpy()
    ca, cb = (a - a.mean(0)) / np.sqrt(len(a) - 1), (b - b.mean(0)) / np.sqrt(len(b) - 1)
    nuclear = scipy.linalg.svdvals(ca @ cb.T).sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + (ca**2).sum() + (cb**2).sum() - 2 * nuclear)


def gaussian_features(n: int, d: int, shift: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=torch.Generator().manual_seed(123)) / d**0.5
    return (torch.randn(n, d, generator=g) @ mix + shift).relu()  # correlated, non-negative like pool3


def test_fid_equals_scipy_sqrtm_formula():
    real, fake = gaussian_features(600, 64, 0.0, 1), gaussian_features(500, 64, 0.3, 2)
    ours, ref = scores.fid(real, fake), scipy_fid(real, fake)
    assert ours > 0.1
    assert abs(ours - ref) / ref < 1e-3
    # more dimensions than samples (the usual small-n Inception case): still equal
    real, fake = gaussian_features(40, 256, 0.0, 3), gaussian_features(40, 256, 0.1, 4)
    ours, ref = scores.fid(real, fake), scipy_fid(real, fake)
    assert abs(ours - ref) / ref < 1e-3
    assert lowrank_fid(real, fake) == pytest.approx(ref, rel=1e-6)  # the oracle used for 2048-d Inception


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_a_shift():
    x = gaussian_features(300, 32, 0.0, 5)
    assert abs(scores.fid(x, x)) < 1e-6
    assert scores.fid(x, x + 0.1) < scores.fid(x, x + 0.5)
    torch.testing.assert_close(torch.tensor(scores.fid(x, x + 0.5)), torch.tensor(0.25 * 32), rtol=1e-6, atol=0)


def test_kid_matches_torch_fidelity_on_the_same_features():
    real, fake = gaussian_features(120, 2048, 0.0, 6), gaussian_features(120, 2048, 0.05, 7)
    # one subset holding every sample: both are the exact unbiased MMD^2 estimate
    mean, std, size = scores.kid(real, fake, subsets=1, subset_size=1000)
    ref = kid_features_to_metric(  # in float64 (in float32 the oracle itself is off by ~1.5e-4 relative)
        real.double(), fake.double(), kid_subsets=1, kid_subset_size=120, verbose=False, rng_seed=0, kid_kernel="poly",
        kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1,
    )  # fmt: skip
    assert size == 120 and std == 0.0
    assert mean > 1e-3
    assert mean == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-4)
    # random subsets: the two libraries draw different ones; their means agree within the spread
    m2, s2, _ = scores.kid(real, fake, subsets=50, subset_size=60)
    ref2 = kid_features_to_metric(
        real, fake, kid_subsets=50, kid_subset_size=60, verbose=False, rng_seed=0, kid_kernel="poly",
        kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1,
    )  # fmt: skip
    assert abs(m2 - ref2["kernel_inception_distance_mean"]) < 3 * (s2 + ref2["kernel_inception_distance_std"])


def test_kid_is_seeded_and_leaves_the_global_rng_alone():
    real, fake = gaussian_features(50, 16, 0.0, 8), gaussian_features(50, 16, 0.2, 9)
    torch.manual_seed(42)
    before = torch.rand(1)
    torch.manual_seed(42)
    a = scores.kid(real, fake, subsets=5, subset_size=20, seed=1)
    assert torch.equal(torch.rand(1), before)
    assert scores.kid(real, fake, subsets=5, subset_size=20, seed=1) == a
    assert scores.kid(real, fake, subsets=5, subset_size=20, seed=2) != a


def test_precision_recall_bounds_and_extremes():
    x = gaussian_features(200, 16, 0.0, 10)
    assert scores.precision_recall(x, x) == (1.0, 1.0)
    far = gaussian_features(200, 16, 50.0, 11)
    p, r = scores.precision_recall(x, far)
    assert (p, r) == (0.0, 0.0)
    p, r = scores.precision_recall(x, gaussian_features(200, 16, 0.2, 12))
    assert 0 <= p <= 1 and 0 <= r <= 1 and p > 0.3 and r > 0.3


def test_precision_counts_fakes_inside_the_real_manifold():
    real = gaussian_features(200, 8, 0.0, 13)
    collapsed = real[:20].repeat(10, 1)  # every fake is a real sample, but only 20 of them: high p, low r
    p, r = scores.precision_recall(real, collapsed)
    assert p == 1.0 and r < 0.5


def test_inception_score_equals_the_formula():
    logits = torch.randn(300, 20, generator=torch.Generator().manual_seed(14)) * 3
    p = logits.double().softmax(1)
    direct = torch.exp((p * (p.log() - p.mean(0, keepdim=True).log())).sum(1).mean()).item()
    mean, std = scores.inception_score(logits, splits=1)
    assert mean == pytest.approx(direct, rel=1e-9) and std == 0.0
    confident = torch.eye(10).repeat(10, 1) * 50  # 10 classes, each predicted with certainty: IS = 10
    assert scores.inception_score(confident, splits=1)[0] == pytest.approx(10.0, rel=1e-6)


def test_class_accuracy():
    logits = torch.eye(4)[[0, 1, 2, 3, 0]]
    assert scores.class_accuracy(logits, torch.tensor([0, 1, 2, 3, 1])) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="labels"):
        scores.class_accuracy(logits, torch.tensor([0, 1]))


def test_bad_feature_inputs_are_rejected():
    x = torch.zeros(10, 4)
    with pytest.raises(ValueError, match="feature sizes differ"):
        scores.fid(x, torch.zeros(10, 5))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        scores.kid(x, torch.zeros(10))
    with pytest.raises(ValueError, match="at least 2"):
        scores.fid(x, torch.zeros(1, 4))
    with pytest.raises(ValueError, match="splits=10"):
        scores.inception_score(torch.zeros(5, 3))
