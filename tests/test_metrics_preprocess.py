"""Preprocessing for the metrics: PNG-exact quantisation, grayscale to RGB, Inception input range and size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffusionlab.metrics.preprocess import inception_input, quantize, to_rgb
from diffusionlab.utils.images import make_grid, save_png


def test_quantize_equals_a_saved_and_reloaded_png(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 9, 7, generator=g) * 2.4 - 1.2  # also outside [-1, 1]: clamped
    x[0, 0, 0, :4] = torch.tensor([-1.0, 1.0, 0.0, 1 / 255])  # exact ends and a value near a rounding edge
    q = quantize(x)
    assert q.dtype == torch.uint8 and q.shape == x.shape
    for i in range(4):
        save_png(make_grid(q[i : i + 1], nrow=1, padding=0), tmp_path / f"{i}.png")
        png = np.asarray(Image.open(tmp_path / f"{i}.png"))
        assert np.array_equal(png, q[i].permute(1, 2, 0).numpy())
    # the independent formula: round((x + 1) * 127.5) after clamping
    ref = np.rint((np.clip(x.double().numpy(), -1, 1) + 1) * 127.5).astype(np.uint8)
    assert np.array_equal(q.numpy(), ref)


def test_real_uint8_images_survive_the_round_trip_through_minus_one_one():
    u = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    assert torch.equal(quantize(u.float() / 127.5 - 1), u)
    assert torch.equal(quantize(u), u)  # uint8 passes through


def test_grayscale_is_repeated_to_three_channels():
    x = torch.randint(0, 256, (2, 1, 5, 5), dtype=torch.uint8)
    rgb = to_rgb(x)
    assert rgb.shape == (2, 3, 5, 5)
    assert all(torch.equal(rgb[:, c], x[:, 0]) for c in range(3))
    y = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8)
    assert torch.equal(to_rgb(y), y)


def test_inception_input_size_range_and_scaling():
    x = torch.tensor([0, 128, 255], dtype=torch.uint8).repeat_interleave(100).reshape(1, 1, 1, 300)
    x = x.expand(1, 1, 28, 300)[..., :28].contiguous()
    out = inception_input(x)
    assert out.shape == (1, 3, 299, 299) and out.dtype == torch.float32
    const = inception_input(torch.full((2, 1, 28, 28), 255, dtype=torch.uint8))
    assert torch.allclose(const, torch.full_like(const, 255 / 128 - 1))  # bilinear keeps constants
    zero = inception_input(torch.zeros(1, 3, 299, 299, dtype=torch.uint8))
    assert torch.equal(zero, torch.full_like(zero, -1.0))  # already 299: no resize
    assert out.min() >= -1 and out.max() <= 255 / 128 - 1


@pytest.mark.parametrize(
    ("bad", "err"),
    [
        (torch.zeros(3, 28, 28), ValueError),  # no batch dimension
        (torch.zeros(1, 2, 28, 28), ValueError),  # two channels
        (torch.zeros(1, 1, 8, 8, dtype=torch.int32), TypeError),
        (np.zeros((1, 1, 8, 8)), TypeError),
    ],
)
def test_bad_images_are_rejected_with_a_clear_error(bad, err):
    with pytest.raises(err, match="images"):
        quantize(bad)


def test_inception_input_wants_uint8():
    with pytest.raises(TypeError, match="uint8"):
        inception_input(torch.zeros(1, 3, 8, 8))
