"""The FID Inception in eager PyTorch with every batch norm folded into its convolution: the fast extractor.

The network and weights are those of :class:`~diffusionlab.metrics.features.TorchScriptInception` and
torch-fidelity's ``FeatureExtractorInceptionV3`` (TensorFlow Inception-v3 2015-12-05). Exact rewrites make
it faster in float32, with no change of precision (features equal the TorchScript graph to ~1e-6 relative,
measured on real MNIST; ``tests/test_metrics_features.py`` asserts 1e-4):

- ``conv -> batch norm (eval) -> ReLU`` becomes ``conv(weight * s, bias) -> ReLU`` with
  ``s = gamma / sqrt(var + eps)`` and ``bias = beta - mean * s``: one pass over each activation, not three;
- grayscale input: the first conv sees three equal channels, so it equals a 1-channel conv whose weight is
  the sum over the input channels, and the 28 -> 299 resize runs on one channel instead of three;
- channels-last activations end to end (oneDNN's fastest layout for these convolutions);
- in the mixed blocks with an average-pool branch, the pool runs after that branch's 1x1 conv instead of
  before it (:func:`run_mixed_block`): both are linear maps, one over channels and one over pixels with
  weights summing to 1, so they commute, bias included, and the pool then sees 32-192 channels, not 192-2048.

One change of arithmetic, within float32 rounding: the 48 stride-1 convolutions with a 3x3, 5x5, 1x7, 7x1, 1x3
or 3x1 kernel and at least 32 x 64 channels run by Winograd's algorithm (:func:`use_winograd`,
:mod:`diffusionlab.metrics.winograd`: 2-6x fewer products); the features then equal the TorchScript graph
to ~7e-6 relative instead of ~1e-6.

And one change of schedule: the layers run in three stages, each on a few images at a time
(:data:`CHUNKS`, on the CPU only), so that a stage's activations stay in the CPU's caches. The stem's
activations are up to 5.5 MB per image (``[64, 147, 147]`` floats), so a batch of 50 streams them through
memory; the 17x17 and 8x8 blocks have small activations and large weights, so they want the most images per
pass. Every image goes through the same operations either way: the features equal a one-pass batch's
(bitwise without Winograd; to float32 rounding with it, whose products run on blocks of tiles).

Measured on a 2-core Xeon with AMX (2026-12-06, 2 threads, batches of 50 28x28 images): the TorchScript graph
13.3 images/s, this network without Winograd 28.6, 68% of what its 11.4 GFLOP per image allow at the rate of
its own fastest convolution. On a 2-core AMD EPYC Zen 5 (2026-12-06): the graph 14.4, this network 47.6 with
Winograd and 40.3 without, with glibc's default allocator; with :mod:`diffusionlab.utils.allocator`'s settings
(which the benchmark now uses) the graph 23.1 and this network 50.5 (``benchmarks/bench_metrics.py`` prints
these figures).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusionlab.metrics.preprocess import INCEPTION_SIZE, check_images, resize_tf1_bilinear
from diffusionlab.metrics.winograd import WinogradConvReLU, eligible

# torch-fidelity's FeatureExtractorInceptionV3 attributes, in forward order, up to the 2048-d pool3 features
# (Conv2d_1a_3x3 is applied by FoldedInceptionNet itself: it needs the grayscale variant of its weight)
LAYERS = (
    "Conv2d_1a_3x3",
    "Conv2d_2a_3x3",
    "Conv2d_2b_3x3",
    "MaxPool_1",
    "Conv2d_3b_1x1",
    "Conv2d_4a_3x3",
    "MaxPool_2",
    "Mixed_5b",
    "Mixed_5c",
    "Mixed_5d",
    "Mixed_6a",
    "Mixed_6b",
    "Mixed_6c",
    "Mixed_6d",
    "Mixed_6e",
    "Mixed_7a",
    "Mixed_7b",
    "Mixed_7c",
)
# the three stages as ranges of LAYERS: resize + stem to [35, 35, 192], the 35x35 blocks, the 17x17 and 8x8 ones
STAGES = ((0, 7), (7, 10), (10, 18))
# images per pass in each stage: the fastest on a 2-core Xeon (AMX, 2 MB L2 per core) among 1-64 per stage,
# 28-29 img/s against 19-22 for one pass over 64 images (2026-12-06, 2 threads); ``chunks=`` overrides
CHUNKS = (4, 8, 32)


class FoldedConvReLU(nn.Module):
    """torch-fidelity's ``BasicConv2d`` (conv without bias, eval-mode batch norm, ReLU) as one biased conv
    and an in-place ReLU: ``[B, C_in, H, W] -> [B, C_out, H', W']``, same strides and padding."""

    def __init__(self, basic_conv: nn.Module):
        super().__init__()
        conv, bn = basic_conv.conv, basic_conv.bn
        with torch.no_grad():
            scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
            weight = (conv.weight.double() * scale[:, None, None, None]).float()
            bias = (bn.bias.double() - bn.running_mean.double() * scale).float()
        self.stride, self.padding = conv.stride, conv.padding
        self.weight = nn.Parameter(weight.contiguous(memory_format=torch.channels_last), requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu_(F.conv2d(x, self.weight, self.bias, self.stride, self.padding))


def _is_basic_conv(module: nn.Module) -> bool:
    conv, bn = getattr(module, "conv", None), getattr(module, "bn", None)
    return isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)


def _replace_modules(module: nn.Module, convert) -> nn.Module:
    """``convert(module)`` if that is not None, else ``module`` with each child replaced the same way (in
    place)."""
    new = convert(module)
    if new is not None:
        return new
    for name, child in module.named_children():
        setattr(module, name, _replace_modules(child, convert))
    return module


def fold_batch_norms(module: nn.Module) -> nn.Module:
    """``module`` with every ``BasicConv2d`` (a module with ``conv`` and ``bn``) in it, or itself, replaced by
    a :class:`FoldedConvReLU` (children are replaced in place)."""
    return _replace_modules(module, lambda m: FoldedConvReLU(m) if _is_basic_conv(m) else None)


def use_winograd(module: nn.Module) -> nn.Module:
    """``module`` with every :class:`FoldedConvReLU` that has a Winograd variant here
    (:func:`~diffusionlab.metrics.winograd.eligible`: the stride-1 3x3, 5x5, 1x7, 7x1, 1x3 and 3x1 ones with
    at least 32 x 64 channels) replaced by a :class:`~diffusionlab.metrics.winograd.WinogradConvReLU` holding the
    same parameters."""

    def convert(m: nn.Module) -> nn.Module | None:
        if isinstance(m, FoldedConvReLU) and eligible(m.weight, m.stride, m.padding):
            return WinogradConvReLU(m.weight, m.bias, m.padding)
        return None

    return _replace_modules(module, convert)


# the mixed blocks run by run_mixed_block: each branch but the pool one as a chain of torch-fidelity attribute
# names, a tuple ending a chain being parallel heads on the chain's output (concatenated in the block output)
BRANCHES = {
    "InceptionA": (
        ("branch1x1",),
        ("branch5x5_1", "branch5x5_2"),
        ("branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
    ),
    "InceptionC": (
        ("branch1x1",),
        ("branch7x7_1", "branch7x7_2", "branch7x7_3"),
        ("branch7x7dbl_1", "branch7x7dbl_2", "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5"),
    ),
    "InceptionE_1": (
        ("branch1x1",),
        ("branch3x3_1", ("branch3x3_2a", "branch3x3_2b")),
        ("branch3x3dbl_1", "branch3x3dbl_2", ("branch3x3dbl_3a", "branch3x3dbl_3b")),
    ),
}
BRANCHES["InceptionE_2"] = BRANCHES["InceptionE_1"]  # the FID Inception's last block: a max-pool branch


def run_mixed_block(block: nn.Module, x: Tensor) -> Tensor:
    """torch-fidelity's ``InceptionA`` / ``C`` / ``E_1`` / ``E_2`` forward (folded), ``[B, C_in, H, W] ->
    [B, C_out, H, W]``, with the average-pool branch reordered to ``relu(avg_pool(conv1x1(x)))`` (see the
    module docstring; ``count_include_pad=False`` keeps the pool's weights summing to 1 at the borders) and one
    concatenation of all the branch outputs in torch-fidelity's order instead of nested ones: the branches
    whose last layer runs by Winograd write straight into their channels of the output, the others are
    copied there."""
    kind = type(block).__name__
    finals = []  # (each branch's last layer, its input), in torch-fidelity's concatenation order
    for *body, last in BRANCHES[kind]:
        y = x
        for step in body:
            y = getattr(block, step)(y)
        finals += [(getattr(block, head), y) for head in (last if isinstance(last, tuple) else (last,))]
    pool = block.branch_pool
    if kind == "InceptionE_2":  # a max pool does not commute with the conv: pool first, as torch-fidelity
        pooled = pool(F.max_pool2d(x, kernel_size=3, stride=1, padding=1))
    else:
        y = F.conv2d(x, pool.weight, pool.bias)  # [B, C_pool, H, W]
        pooled = F.relu_(F.avg_pool2d(y, kernel_size=3, stride=1, padding=1, count_include_pad=False))
    if not any(isinstance(layer, WinogradConvReLU) for layer, _ in finals):
        return torch.cat([layer(y) for layer, y in finals] + [pooled], 1)
    widths = [layer.weight.shape[0] for layer, _ in finals]
    shape = (x.shape[0], sum(widths) + pooled.shape[1], *pooled.shape[2:])  # [B, C_out, H, W]
    out = torch.empty(shape, dtype=pooled.dtype, device=pooled.device, memory_format=torch.channels_last)
    offset = 0
    for (layer, y), width in zip(finals, widths, strict=True):
        if isinstance(layer, WinogradConvReLU):
            layer.write_into(y, out, offset)
        else:
            out[:, offset : offset + width] = layer(y)
        offset += width
    out[:, offset:] = pooled
    return out


class FoldedInceptionNet(nn.Module):
    """uint8 images ``[B, 1 | 3, H, W]`` -> (pool3 features ``[B, 2048]`` float32, unbiased logits
    ``[B, 1008]`` float32 or None).

    Built from a torch-fidelity ``FeatureExtractorInceptionV3`` holding the weights (its modules are taken
    over and folded; ``with_logits`` keeps its ``fc`` weight for Inception Score). Preprocessing is
    :func:`~diffusionlab.metrics.preprocess.inception_input`'s: TF-1.x bilinear resize to 299, ``x/128 - 1``.
    ``chunks``: images per pass in each of the :data:`STAGES` on the CPU (speed only; the features do not
    depend on it; other devices run each stage on the whole batch). ``winograd``: run the eligible
    convolutions by Winograd (:func:`use_winograd`; on the CPU when its kernel builds, direct otherwise).
    """

    def __init__(
        self,
        tf_inception: nn.Module,
        with_logits: bool,
        chunks: tuple[int, int, int] = CHUNKS,
        winograd: bool = True,
    ):
        super().__init__()
        if len(chunks) != len(STAGES) or any(not isinstance(c, int) or c < 1 for c in chunks):
            raise ValueError(f"chunks must be {len(STAGES)} positive image counts (one per stage), got {chunks!r}")
        self.chunks = tuple(chunks)
        self.layers = nn.ModuleList(fold_batch_norms(getattr(tf_inception, name)) for name in LAYERS)
        if winograd:
            use_winograd(self.layers)
        first = self.layers[0]
        # three equal input channels: the same conv as one channel with the weight summed over channels
        self.gray_weight = nn.Parameter(first.weight.sum(1, keepdim=True).contiguous(), requires_grad=False)
        self.fc_weight = (
            nn.Parameter(tf_inception.fc.weight.detach().clone(), requires_grad=False) if with_logits else None
        )

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        check_images(images)
        if images.dtype != torch.uint8:
            raise TypeError(f"expected uint8 images (use quantize first), got {images.dtype}")
        x = images.to(self.gray_weight.device)
        chunks = self.chunks if x.device.type == "cpu" else (len(x),) * len(STAGES)  # a GPU wants whole batches
        for (start, stop), chunk in zip(STAGES, chunks):
            parts = [self._run(part, start, stop) for part in x.split(chunk)]
            x = parts[0] if len(parts) == 1 else torch.cat(parts)  # ... -> [B, 2048, 8, 8]
        feats = x.mean((2, 3))  # [B, 2048]
        logits = feats @ self.fc_weight.T if self.fc_weight is not None else None  # [B, 1008]
        return feats, logits

    def _run(self, x: Tensor, start: int, stop: int) -> Tensor:
        """Layers ``LAYERS[start:stop]`` on ``x`` (uint8 images ``[b, 1|3, H, W]`` when ``start`` is 0)."""
        if start == 0:
            x = resize_tf1_bilinear(x.float(), INCEPTION_SIZE)
            x = ((x - 128) / 128).contiguous(memory_format=torch.channels_last)  # [b, 1|3, 299, 299]
            first = self.layers[0]
            weight = self.gray_weight if x.shape[1] == 1 else first.weight
            x = F.relu_(F.conv2d(x, weight, first.bias, first.stride, first.padding))  # [b, 32, 149, 149]
            start = 1
        for layer in self.layers[start:stop]:
            x = run_mixed_block(layer, x) if type(layer).__name__ in BRANCHES else layer(x)
        return x
