"""Inception Score from a TorchScript feature network that also returns logits (the signature documented in
``metrics.features.TorchScriptInception``), against torchmetrics' ``InceptionScore`` on the same network, and
clear errors for TorchScript files of another shape. (``tests/test_unconditional.py`` checks it end to end
through ``evaluate.py`` against a numpy computation.)"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
from torchmetrics.image.inception import InceptionScore

from diffusionlab.metrics import Evaluator, load_inception
from diffusionlab.metrics.datasets import load_split

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread (tests/conftest.py)


class TinyInception(nn.Module):
    """Stands in for the FID Inception with a classifier: ``[B, 3, 299, 299] -> (features [B, 16], logits [B, 10])``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 7, stride=4), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=4), nn.ReLU())
        self.head = nn.Linear(16, 10)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.body(x).mean(dim=(2, 3))
        return features, 3.0 * self.head(features)


def inception_input_reference(u8: Tensor) -> Tensor:
    """uint8 ``[B, 1|3, H, W]`` -> the Inception's input, written out here: grey to RGB, torch-fidelity's TF1
    bilinear resize to 299, ``x / 128 - 1``."""
    x = u8.float().expand(-1, 3, -1, -1)
    return (interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False) - 128) / 128


def save_tiny_inception(path, seed: int = 0) -> TinyInception:
    torch.manual_seed(seed)
    net = TinyInception().eval()
    torch.jit.script(net).save(str(path))
    return net


def test_inception_score_equals_torchmetrics_on_the_same_logits(data_dir, tmp_path):
    net = save_tiny_inception(tmp_path / "tiny.pt")
    extractor = load_inception(tmp_path / "tiny.pt")
    assert extractor.has_logits and extractor.num_features == 16 and extractor.name.endswith("+logits10")
    images = load_split("fashion_mnist", "test", data_dir)[0][:40]  # "samples" unlike the MNIST reference
    ev = Evaluator("mnist:test", data_dir=data_dir, cache_dir=tmp_path, extractor=extractor, classifier=False,
                   is_splits=1, kid_subsets=2, progress=False)  # fmt: skip
    m = ev.evaluate([images[:25], images[25:]], protocol={"sampler": "none"})

    class Logits(nn.Module):  # torchmetrics' custom feature extractor: uint8 images -> logits
        def forward(self, u8: Tensor) -> Tensor:
            return net(inception_input_reference(u8))[1]

    with warnings.catch_warnings():  # "will save all extracted features": 40 of them
        warnings.simplefilter("ignore", UserWarning)
        oracle = InceptionScore(feature=Logits(), splits=1)
    oracle.update(images)
    mean, _ = oracle.compute()  # one split: no shuffling, so the order of the samples does not matter
    assert m["inception_score"] == pytest.approx(float(mean), rel=1e-5)
    assert m["inception_score"] > 1.0 and m["inception_score_std"] == 0.0
    assert m["protocol"]["inception_score"] == {"splits": 1}
    assert not any(n.startswith("inception_score") for n in m["protocol"]["notes"])


class ThreeOutputs(nn.Module):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        f = x.mean(dim=(2, 3))
        return f, f, f


class NoBatch(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.sum()


@pytest.mark.parametrize("net, match", [(ThreeOutputs(), r"returned \[\(1, 3\), \(1, 3\), \(1, 3\)\]"),
                                        (NoBatch(), r"returned \[\(\)\]")])  # fmt: skip
def test_torchscript_of_another_signature_is_refused_clearly(net, match, tmp_path):
    torch.jit.script(net).save(str(tmp_path / "bad.pt"))
    with pytest.raises(ValueError, match=match + r"; expected features \[1, D\] or a pair"):
        load_inception(tmp_path / "bad.pt")
