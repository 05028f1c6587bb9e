"""The seed paper's network: ``ContextUnet`` from DeepLearning.AI's "How Diffusion Models Work" course.

A two-level U-Net of conv3x3 + BatchNorm + GELU blocks. The bottleneck is pooled to a vector and expanded back
to ``image_size / 4``; on the way up each level's features are multiplied by a context (class) embedding and
shifted by a time embedding: ``up_{k+1} = UnetUp(cemb_k * up_k + temb_k, skip)``.

Differences from the course code, both deliberate:

* the 1x1 shortcut of a residual block whose channel count changes is a registered module (the course builds a
  new, randomly initialised, untrained conv on every forward pass);
* ``to_vec`` averages the whole ``image_size/4`` bottleneck map (the course's ``AvgPool2d(4)`` on a 7x7 map
  only sees its top-left 4x4 corner), so 28x28 and 32x32 both give a 1x1 vector.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusionlab.nets.blocks import GroupNorm
from diffusionlab.nets.conv_weight_grad import Conv2d
from diffusionlab.nets.embeddings import EmbedFC
from diffusionlab.nets.inputs import check_image, prepare_labels, prepare_timesteps


class ResidualConvBlock(nn.Module):
    """Two ``conv3x3 -> BatchNorm -> GELU`` layers, ``[B, in_ch, H, W] -> [B, out_ch, H, W]``.

    With ``is_res=True`` the input is added back (through a registered 1x1 conv when ``in_ch != out_ch``) and
    the sum divided by 1.414, as in the course.
    """

    def __init__(self, in_ch: int, out_ch: int, is_res: bool = False):
        super().__init__()
        self.is_res = is_res
        self.conv1 = nn.Sequential(Conv2d(in_ch, out_ch, 3, 1, 1), nn.BatchNorm2d(out_ch), nn.GELU())
        self.conv2 = nn.Sequential(Conv2d(out_ch, out_ch, 3, 1, 1), nn.BatchNorm2d(out_ch), nn.GELU())
        self.shortcut = Conv2d(in_ch, out_ch, 1) if is_res and in_ch != out_ch else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv2(self.conv1(x))
        if not self.is_res:
            return h
        return (h + (x if self.shortcut is None else self.shortcut(x))) / 1.414


class UnetDown(nn.Module):
    """Two :class:`ResidualConvBlock` then ``MaxPool2d(2)``: ``[B, in_ch, H, W] -> [B, out_ch, H/2, W/2]``."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.model = nn.Sequential(ResidualConvBlock(in_ch, out_ch), ResidualConvBlock(out_ch, out_ch), nn.MaxPool2d(2))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class UnetUp(nn.Module):
    """``cat(x, skip)`` then ``ConvTranspose2d(2, stride 2)`` and two blocks: ``-> [B, out_ch, 2H, 2W]``;
    ``in_ch`` counts the concatenated channels."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.model = nn.Sequential(
            nn.ConvTranspose2d(in_ch, out_ch, 2, 2),
            ResidualConvBlock(out_ch, out_ch),
            ResidualConvBlock(out_ch, out_ch),
        )

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.model(torch.cat((x, skip), dim=1))


class ContextUnet(nn.Module):
    """``net(x_t [B, C, S, S] float, t [B] in [0, num_timesteps), y [B] long or None) -> [B, C, S, S]``.

    Args:
        in_channels: image channels C.
        n_feat: channels of the first level (the second has ``2 * n_feat``).
        num_classes: classes for the context one-hot, or ``None`` for an unconditional net. Label
            ``num_classes`` (and ``y=None``) is the null class: its context vector is all zeros, the course's
            "context mask" used for classifier-free guidance.
        image_size: S, divisible by 4 (28 for MNIST, 32 for CIFAR-10); inputs must be S x S.
        num_timesteps: T; the time embedding sees ``t / T`` in [0, 1).
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_feat: int = 128,
        num_classes: int | None = 10,
        image_size: int = 28,
        num_timesteps: int = 400,
    ):
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("n_feat", n_feat),
            ("num_timesteps", num_timesteps),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"num_classes must be a positive integer or None, got {num_classes!r}")
        if not isinstance(image_size, int) or image_size < 4 or image_size % 4:
            raise ValueError(
                f"ContextUnet needs image_size divisible by 4 (two 2x poolings), got {image_size!r}; 28 and 32 work"
            )
        self.in_channels = in_channels
        self.n_feat = n_feat
        self.num_classes = num_classes
        self.image_size = image_size
        self.num_timesteps = num_timesteps
        bottleneck = image_size // 4

        self.init_conv = ResidualConvBlock(in_channels, n_feat, is_res=True)
        self.down1 = UnetDown(n_feat, n_feat)
        self.down2 = UnetDown(n_feat, 2 * n_feat)
        self.to_vec = nn.Sequential(nn.AvgPool2d(bottleneck), nn.GELU())
        self.timeembed1 = EmbedFC(1, 2 * n_feat)
        self.timeembed2 = EmbedFC(1, n_feat)
        if num_classes is not None:
            self.contextembed1 = EmbedFC(num_classes, 2 * n_feat)
            self.contextembed2 = EmbedFC(num_classes, n_feat)
        self.up0 = nn.Sequential(
            nn.ConvTranspose2d(2 * n_feat, 2 * n_feat, bottleneck, bottleneck),
            GroupNorm(8, 2 * n_feat),
            nn.ReLU(),
        )
        self.up1 = UnetUp(4 * n_feat, n_feat)
        self.up2 = UnetUp(2 * n_feat, n_feat)
        self.out = nn.Sequential(
            Conv2d(2 * n_feat, n_feat, 3, 1, 1),
            GroupNorm(8, n_feat),
            nn.ReLU(),
            Conv2d(n_feat, in_channels, 3, 1, 1),
        )

    def forward(self, x: Tensor, t: Tensor | int | float, y: Tensor | None = None) -> Tensor:
        check_image(x, self.in_channels)
        s = self.image_size
        if not torch.compiler.is_compiling() and tuple(x.shape[2:]) != (s, s):
            raise ValueError(
                f"ContextUnet built for image_size={s} got input {tuple(x.shape[2:])}; "
                f"build it with image_size={x.shape[2]} (must be divisible by 4) or resize the input"
            )
        b, n = x.shape[0], self.n_feat
        dtype = self.timeembed1.model[0].weight.dtype  # float32 unless the whole net was cast
        t = (prepare_timesteps(t, b, x.device).float() / self.num_timesteps).to(dtype)
        x0 = self.init_conv(x)
        down1 = self.down1(x0)
        down2 = self.down2(down1)
        up1 = self.up0(self.to_vec(down2))
        temb1 = self.timeembed1(t).view(b, 2 * n, 1, 1)
        temb2 = self.timeembed2(t).view(b, n, 1, 1)
        labels = prepare_labels(y, b, self.num_classes, x.device)
        if labels is None:
            up2 = self.up1(up1 + temb1, down2)
            up3 = self.up2(up2 + temb2, down1)
        else:
            # one-hot over num_classes + 1 columns, drop the last: the null class becomes the zero vector
            context = F.one_hot(labels, self.num_classes + 1)[:, : self.num_classes].to(dtype)
            cemb1 = self.contextembed1(context).view(b, 2 * n, 1, 1)
            cemb2 = self.contextembed2(context).view(b, n, 1, 1)
            up2 = self.up1(cemb1 * up1 + temb1, down2)
            up3 = self.up2(cemb2 * up2 + temb2, down1)
        return self.out(torch.cat((up3, x0), dim=1))
