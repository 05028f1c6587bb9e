"""Constant memory at large n: sample.py draws and writes batch by batch (the grid keeps the first grid_max),
and feature extraction keeps only the features, in one preallocated array."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffusionlab.cli.runs import load_run
from diffusionlab.cli.sample import sample
from diffusionlab.metrics.classifier import ClassifierFeatures, DomainClassifier
from diffusionlab.metrics.features import RowBuffer, extract_features
from diffusionlab.pipelines import default_sampler_opts, generate
from diffusionlab.utils.images import to_uint8
from tests.helpers import compose_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


def test_sample_streams_batches_to_disk_and_grids_the_first_grid_max(trained_run, tmp_path):
    cfg = compose_cfg(
        "sample.yaml",
        [f"ckpt={trained_run}", "n=10", "batch_size=4", "grid_max=6", "nrow=3", "steps=4", "seed=3",
         "save_individual=true", "gif=true", "gif_frames=4"],
        tmp_path,
    )  # fmt: skip
    grid = np.asarray(Image.open(sample(cfg)))
    singles = sorted((tmp_path / "images").glob("*.png"))
    assert [p.name for p in singles] == [f"{i:05d}.png" for i in range(10)]
    # batch i is drawn from seed + i: the singles are exactly generate() per batch
    run = load_run(trained_run)
    labels = torch.arange(10) % 10
    for i, start in enumerate(range(0, 10, 4)):
        images, _ = generate(run.net, run.diffusion, run.sample_shape, labels=labels[start : start + 4], steps=4,
                             seed=3 + i, sampler_opts=default_sampler_opts(latent=False), progress=False)  # fmt: skip
        for j, img in enumerate(to_uint8(images)):
            assert np.array_equal(np.asarray(Image.open(singles[start + j])), img[0].numpy())
    # the grid holds 6 images, 3 per row (2 rows), upscaled 2x: (2 + 2 * 30) x (2 + 3 * 30) pixels
    assert grid.shape == (2 * (2 + 2 * 30), 2 * (2 + 3 * 30))
    gif = Image.open(next(tmp_path.glob("trajectory_*.gif")))
    assert gif.size == (grid.shape[1], grid.shape[0]) and gif.n_frames >= 2


def test_one_batch_sampling_is_unchanged(trained_run, tmp_path):
    """n <= batch_size: one generate() call from ``seed``, as before streaming."""
    overrides = [f"ckpt={trained_run}", "n=4", "steps=2", "seed=5", "save_individual=true"]
    cfg = compose_cfg("sample.yaml", overrides, tmp_path)
    sample(cfg)
    run = load_run(trained_run)
    images, _ = generate(run.net, run.diffusion, run.sample_shape, labels=torch.arange(4), steps=2, seed=5,
                         progress=False)  # fmt: skip
    for i, img in enumerate(to_uint8(images)):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "images" / f"{i:05d}.png")), img[0].numpy())


@pytest.mark.parametrize("total", [None, 7, 30, 100])
def test_features_fill_one_preallocated_array_whatever_the_announced_total(total):
    torch.manual_seed(0)
    ext = ClassifierFeatures(DomainClassifier(), "mnist", sha256="random")
    g = torch.Generator().manual_seed(1)
    batches = [
        (torch.randint(0, 256, (b, 1, 28, 28), dtype=torch.uint8, generator=g), torch.arange(b)) for b in (8, 8, 14)
    ]
    sets, labels = extract_features(iter(batches), {"d": ext}, total=total, progress=False)
    want_f, want_l = zip(*(ext(x) for x, _ in batches))
    assert torch.equal(sets["d"].features, torch.cat(want_f)) and torch.equal(sets["d"].logits, torch.cat(want_l))
    assert torch.equal(labels, torch.cat([y for _, y in batches]))
    buf = RowBuffer(30)
    for x in want_f:
        buf.add(x)
    assert buf.tensor().data_ptr() == buf.buf.data_ptr()  # exact total: the buffer itself, no final copy
