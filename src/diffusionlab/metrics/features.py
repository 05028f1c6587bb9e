"""Feature extractors: images -> feature vectors (and class logits when the network has them).

Every extractor takes uint8 images ``[B, C, H, W]`` in [0, 255] (see :mod:`.preprocess`) and returns
``(features [B, D] float32, logits [B, K] float32 or None)``. Two sources of the standard FID Inception
(TensorFlow Inception-v3 2015-12-05) share this interface, chosen by :func:`load_inception`:

- ``weights=None`` (online): torch-fidelity's ``FeatureExtractorInceptionV3``, which downloads the standard
  weights as torch-fidelity and torchmetrics do; it has the logits, so Inception Score is available.
- ``weights=<path>`` (offline): a TorchScript port of the same network, e.g.
  ``../shared/weights/inception-2015-12-05-pool3.torchscript.pt`` (pool3 features only: no Inception Score);
  a TorchScript whose ``forward`` also returns the classifier's logits gives the Inception Score too (see
  :class:`TorchScriptInception` for the signature); a torch-fidelity ``.pth`` state dict also works. The images
  go through the same resize and scaling as in torch-fidelity.

``info()`` says which one was used and the sha256 of its weights file; it goes into ``metrics.json``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from diffusionlab.metrics.cache import sha256_file
from diffusionlab.metrics.inception_folded import FoldedInceptionNet
from diffusionlab.metrics.preprocess import (
    INCEPTION_SIZE,
    check_images,
    describe_inception_preprocessing,
    inception_input,
    quantize,
    to_rgb,
)
from diffusionlab.metrics.winograd import available as winograd_available

TORCH_FIDELITY_URL_NAME = "weights-inception-2015-12-05-6726825d.pth"


class FeatureExtractor(nn.Module):
    """Base class. Subclasses set ``name``, ``source``, ``sha256``, ``num_features``, ``has_logits``."""

    name: str = "?"
    source: str = "?"
    sha256: str | None = None
    num_features: int = 0
    has_logits: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("_device_probe", torch.zeros(()), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._device_probe.device

    def train(self, mode: bool = True) -> FeatureExtractor:  # feature networks never leave eval mode
        return super().train(False)

    def preprocessing(self) -> dict:
        return describe_inception_preprocessing()

    def info(self) -> dict:
        """JSON-able description for ``metrics.json`` and the reference-statistics cache key."""
        return {
            "name": self.name,
            "source": self.source,
            "sha256": self.sha256,
            "num_features": self.num_features,
            "has_logits": self.has_logits,
            "preprocessing": self.preprocessing(),
        }

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError


class TorchScriptInception(FeatureExtractor):
    """The FID Inception as a TorchScript file. Expected signature::

        forward(x: Tensor[B, 3, 299, 299] float32 in [-1, 1)) -> Tensor[B, D]                  # features only
        forward(x: Tensor[B, 3, 299, 299] float32 in [-1, 1)) -> Tuple[Tensor[B, D], Tensor[B, K]]
                                                                   # (features, classifier logits before softmax)

    The FID port (``inception-2015-12-05-pool3.torchscript.pt``) is the first kind, D = 2048 (pool3). A file of
    the second kind also gives the Inception Score, computed from its logits as from torch-fidelity's
    ``logits_unbiased`` (K = 1008 for the 2015-12-05 Inception). Which kind, D and K are read from one
    forward pass of a blank image when the file is loaded.
    """

    name = "inception-v3-2015-12-05-pool3"
    num_features = 2048
    has_logits = False

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self.path = Path(path)
        with warnings.catch_warnings():  # "torch.jit.load is deprecated": still the way to read TorchScript
            warnings.simplefilter("ignore", FutureWarning)
            self.net = torch.jit.load(str(self.path), map_location="cpu").eval()
        self.sha256 = sha256_file(self.path)
        self.source = f"TorchScript file {self.path.name}"
        self.num_features, num_logits = self._probe()
        self.has_logits = num_logits is not None
        if self.has_logits:
            self.name = f"{type(self).name}+logits{num_logits}"

    def _probe(self) -> tuple[int, int | None]:
        """``(D, K or None)`` from the outputs for one blank image; ValueError if they break the signature."""
        try:
            with torch.inference_mode():
                out = self.net(torch.zeros(1, 3, INCEPTION_SIZE, INCEPTION_SIZE))
        except RuntimeError as err:  # not load_inception's "not TorchScript" case: say what failed
            raise ValueError(f"{self.path}: forward(x [1, 3, 299, 299]) failed: {err}") from None
        outputs = list(out) if isinstance(out, (tuple, list)) else [out]
        if len(outputs) not in (1, 2) or not all(isinstance(o, Tensor) and o.shape[:1] == (1,) for o in outputs):
            shapes = [tuple(o.shape) if isinstance(o, Tensor) else type(o).__name__ for o in outputs]
            raise ValueError(
                f"{self.path}: forward(x [1, 3, 299, 299]) returned {shapes}; expected features [1, D] or a "
                "pair (features [1, D], logits [1, K])"
            )
        dims = [o[0].numel() for o in outputs]
        return dims[0], (dims[1] if len(dims) == 2 else None)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        # channels-last input: 1.23x the images/s on this CPU, features equal to 1e-6 relative
        x = inception_input(images).to(self.device).contiguous(memory_format=torch.channels_last)
        b = x.shape[0]
        if self.has_logits:
            feats, logits = self.net(x)
            return feats.reshape(b, -1).float(), logits.reshape(b, -1).float()
        return self.net(x).reshape(b, -1).float(), None


class TorchFidelityInception(FeatureExtractor):
    """torch-fidelity's ``FeatureExtractorInceptionV3``: pool3 ``[B, 2048]`` and unbiased logits ``[B, 1008]``
    (None when the weights have no classifier)."""

    name = "inception-v3-compat"
    num_features = 2048
    has_logits = True

    def __init__(self, weights_path: str | os.PathLike | None = None) -> None:
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        try:
            self.net = FeatureExtractorInceptionV3(
                "inception-v3-compat",
                ["2048", "logits_unbiased"],
                feature_extractor_weights_path=None if weights_path is None else str(weights_path),
            )
        except OSError as err:  # URLError is an OSError: no network
            raise RuntimeError(
                f"could not download the FID Inception weights ({err}); offline, give a local copy "
                "instead, e.g. inception_weights=../shared/weights/inception-2015-12-05-pool3.torchscript.pt"
            ) from err
        if weights_path is None:
            path = Path(torch.hub.get_dir()) / "checkpoints" / TORCH_FIDELITY_URL_NAME
            self.source = "torch-fidelity download (standard weights)"
        else:
            path = Path(weights_path)
            self.source = f"torch-fidelity FeatureExtractorInceptionV3, weights file {path.name}"
        self.sha256 = sha256_file(path) if path.is_file() else None
        # weights converted from the pool3-only TorchScript have a zero classifier: no logits
        self.has_logits = bool(self.net.fc.weight.abs().sum() > 0)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        check_images(images)
        if images.dtype != torch.uint8:
            raise TypeError(f"expected uint8 images (use quantize first), got {images.dtype}")
        feats, logits = self.net(to_rgb(images).to(self.device))
        return feats.float(), logits.float() if self.has_logits else None


def torch_fidelity_skeleton() -> nn.Module:
    """torch-fidelity's ``FeatureExtractorInceptionV3`` with random weights, built without any download
    (load a state dict into it with ``nn.Module.load_state_dict``)."""
    import tempfile

    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Skeleton(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # keep the random init
            return None

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)
        net = _Skeleton("skeleton", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(empty))
    return net.eval()


class FoldedInception(FeatureExtractor):
    """The same network as ``reference`` (a :class:`TorchScriptInception` or :class:`TorchFidelityInception`)
    with its batch norms folded into the convolutions and most of them run by Winograd
    (:mod:`.inception_folded`): faster in float32, features equal to the reference's to ~1e-5 relative. Keeps
    the reference's ``name``, ``sha256`` and logits, so reference-statistics caches are shared with it;
    ``source`` says it is folded (and whether the Winograd kernel runs)."""

    num_features = 2048

    def __init__(self, reference: TorchScriptInception | TorchFidelityInception) -> None:
        super().__init__()
        if isinstance(reference, TorchScriptInception):
            tf_net = torch_fidelity_skeleton()
            nn.Module.load_state_dict(tf_net, torch_fidelity_weights_from_torchscript(reference.path))
        elif isinstance(reference, TorchFidelityInception):
            tf_net = reference.net
        else:
            raise TypeError(f"FoldedInception folds a TorchScript or torch-fidelity Inception, got {reference!r}")
        self.name, self.sha256, self.has_logits = reference.name, reference.sha256, reference.has_logits
        self.net = FoldedInceptionNet(tf_net.cpu(), with_logits=reference.has_logits)
        winograd = ", Winograd convolutions" if winograd_available() else ""
        self.source = f"{reference.source}, batch norms folded{winograd} (eager, channels-last)"

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.net(images)


def torch_fidelity_weights_from_torchscript(path: str | os.PathLike) -> dict[str, Tensor]:
    """The TorchScript FID Inception's weights in torch-fidelity's ``FeatureExtractorInceptionV3`` layout.

    Both hold the same 94 conv + batch-norm layers in the same order (TensorFlow's batch norm has no scale:
    gamma = 1). The TorchScript has no classifier, so ``fc`` is zero and the result gives no logits.
    Save it with ``torch.save`` and pass the file to :func:`load_inception` or to torchmetrics'
    ``feature_extractor_weights_path``.
    """
    target = torch_fidelity_skeleton().state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        source = torch.jit.load(str(path), map_location="cpu").state_dict()
    src_convs = [k[: -len(".weight")] for k in source if k.endswith(".weight")]
    dst_convs = [k[: -len(".conv.weight")] for k in target if k.endswith(".conv.weight")]
    if len(src_convs) != len(dst_convs):
        raise ValueError(f"{path}: {len(src_convs)} conv layers, torch-fidelity's Inception has {len(dst_convs)}")
    out: dict[str, Tensor] = {}
    for s, d in zip(src_convs, dst_convs):
        w = source[f"{s}.weight"]
        if w.shape != target[f"{d}.conv.weight"].shape:
            raise ValueError(f"{path}: layer {s} has shape {tuple(w.shape)}, expected that of {d}")
        out[f"{d}.conv.weight"] = w
        out[f"{d}.bn.weight"] = torch.ones_like(source[f"{s}.beta"])
        out[f"{d}.bn.bias"] = source[f"{s}.beta"]
        out[f"{d}.bn.running_mean"] = source[f"{s}.mean"]
        out[f"{d}.bn.running_var"] = source[f"{s}.var"]
        out[f"{d}.bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    out["fc.weight"] = torch.zeros_like(target["fc.weight"])
    out["fc.bias"] = torch.zeros_like(target["fc.bias"])
    return out


def load_inception(
    weights: str | os.PathLike | None = None, device: str | torch.device = "cpu", folded: bool = True
) -> FeatureExtractor:
    """The FID Inception: downloaded through torch-fidelity if ``weights`` is None, else loaded from a file.

    A TorchScript file gives :class:`TorchScriptInception` (with logits if its ``forward`` returns them); a
    torch-fidelity state dict (``.pth``) gives :class:`TorchFidelityInception`. ``folded`` (the default)
    returns that network as a :class:`FoldedInception`: same features, faster; a TorchScript file of another
    layout than the FID Inception's (e.g. one that returns logits) is returned as it is.
    """
    extractor = _load_reference_inception(weights)
    if folded and not (isinstance(extractor, TorchScriptInception) and extractor.has_logits):
        try:
            extractor = FoldedInception(extractor)
        except ValueError:  # not the FID Inception's layers: use the file's own graph
            pass
    return extractor.to(device)


def _load_reference_inception(weights: str | os.PathLike | None) -> FeatureExtractor:
    if weights is None:
        return TorchFidelityInception(None)
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"Inception weights not found at {str(path)!r}; give the TorchScript file "
            "(e.g. ../shared/weights/inception-2015-12-05-pool3.torchscript.pt) or null to download them"
        )
    try:
        extractor: FeatureExtractor = TorchScriptInception(path)
    except RuntimeError:  # not TorchScript: a torch-fidelity state dict
        extractor = TorchFidelityInception(path)
    return extractor


@dataclass
class FeatureSet:
    """Features ``[N, D]`` float32 and logits ``[N, K]`` float32 (or None), on the CPU."""

    features: Tensor
    logits: Tensor | None = None

    def __len__(self) -> int:
        return self.features.shape[0]


def split_batch(batch) -> tuple[Tensor, Tensor | None]:
    """A batch is images ``[B, C, H, W]`` or a pair ``(images, labels [B])``."""
    if isinstance(batch, (tuple, list)):
        if len(batch) != 2:
            raise ValueError(f"a batch must be images or (images, labels), got a sequence of {len(batch)}")
        images, labels = batch
        return images, None if labels is None else torch.as_tensor(labels).reshape(-1).long().cpu()
    return batch, None


class RowBuffer:
    """Rows ``[n, ...]`` appended batch by batch into one preallocated tensor (``capacity`` rows; doubled when
    exceeded), so collecting N features costs N rows of memory, not the 2N of a list and ``torch.cat``."""

    def __init__(self, capacity: int | None = None) -> None:
        self.capacity, self.n, self.buf = capacity or 0, 0, None

    def add(self, rows: Tensor) -> None:
        if self.buf is None:
            self.buf = rows.new_empty((max(self.capacity, len(rows)), *rows.shape[1:]))
        elif self.n + len(rows) > len(self.buf):
            grown = rows.new_empty((max(2 * len(self.buf), self.n + len(rows)), *rows.shape[1:]))
            grown[: self.n] = self.buf[: self.n]
            self.buf = grown
        self.buf[self.n : self.n + len(rows)] = rows
        self.n += len(rows)

    def tensor(self) -> Tensor | None:
        """The rows so far (the buffer itself when full; a compact copy otherwise, so that saving it does not
        write the unused rows), None if nothing was added."""
        if self.buf is None:
            return None
        return self.buf if self.n == len(self.buf) else self.buf[: self.n].clone()


@torch.inference_mode()
def extract_features(
    batches: Iterable,
    extractors: Mapping[str, FeatureExtractor],
    *,
    total: int | None = None,
    progress: bool = True,
    desc: str = "features",
) -> tuple[dict[str, FeatureSet], Tensor | None]:
    """Run every extractor over every batch once, keeping only the features (images are dropped batch by
    batch, so memory is flat in the number of images apart from the ``[N, D]`` features themselves).

    ``batches`` yields float images in [-1, 1] (quantised to uint8 first) or uint8 images, optionally paired
    with labels. Returns ``({name: FeatureSet}, labels [N] or None)``; ``total`` (images) sizes the
    progress bar and the preallocated feature arrays.
    """
    if not extractors:
        raise ValueError("extract_features needs at least one extractor")
    feats = {k: RowBuffer(total) for k in extractors}
    logits = {k: RowBuffer(total) for k in extractors}
    labels = RowBuffer(total)
    n_batches = n_labelled = 0
    with tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for batch in batches:
            images, y = split_batch(batch)
            images = quantize(images)
            for name, ext in extractors.items():
                f, lg = ext(images)
                feats[name].add(f.cpu())
                if lg is not None:
                    logits[name].add(lg.cpu())
            if y is not None:
                if y.shape[0] != images.shape[0]:
                    raise ValueError(f"got {y.shape[0]} labels for {images.shape[0]} images")
                labels.add(y)
                n_labelled += 1
            n_batches += 1
            bar.update(images.shape[0])
    if not n_batches:
        raise ValueError("no images: the batch iterator was empty")
    if n_labelled and n_labelled != n_batches:
        raise ValueError("either every batch or no batch must carry labels")
    out = {name: FeatureSet(feats[name].tensor(), logits[name].tensor()) for name in extractors}
    return out, labels.tensor()
