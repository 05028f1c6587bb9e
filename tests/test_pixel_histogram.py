"""Intensity histograms (metrics/pixel_histogram.py) against numpy, on real MNIST images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusionlab.metrics.datasets import load_split
from diffusionlab.metrics.pixel_histogram import PixelHistogram, dark_fraction, histogram_tv


def test_histograms_equal_numpy_per_image_and_rows_sum_to_one(data_dir):
    images, _ = load_split("mnist", "test", data_dir)
    x = images[:16]
    rgb = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    for batch in (x, rgb):
        hist, logits = PixelHistogram()(batch)
        assert logits is None and hist.shape == (len(batch), 256) and hist.dtype == torch.float32
        for row, image in zip(hist, batch):
            oracle = np.histogram(image.numpy().ravel(), bins=256, range=(0, 256))[0] / image.numel()
            np.testing.assert_allclose(row.numpy(), oracle, rtol=0, atol=1e-7)
        np.testing.assert_allclose(hist.sum(1).numpy(), 1.0, atol=1e-6)


def test_tv_and_faint_fraction_on_known_sets():
    black = PixelHistogram()(torch.zeros(3, 1, 4, 4, dtype=torch.uint8))[0]
    white = PixelHistogram()(torch.full((2, 1, 4, 4), 255, dtype=torch.uint8))[0]
    faint = PixelHistogram()(torch.full((2, 1, 4, 4), 20, dtype=torch.uint8))[0]
    assert histogram_tv(black, black) == 0.0 and histogram_tv(black, white) == pytest.approx(1.0)
    half = torch.cat([black[:2], white])  # half black, half white
    assert histogram_tv(black, half) == pytest.approx(0.5)
    assert dark_fraction(black) == 0.0 and dark_fraction(faint) == 1.0 and dark_fraction(white) == 0.0
    with pytest.raises(ValueError, match=r"expected \[N, 256\] histograms"):
        histogram_tv(black, black[:, :10])
    with pytest.raises(ValueError, match="C in"):
        PixelHistogram()(torch.zeros(2, 2, 4, 4, dtype=torch.uint8))
