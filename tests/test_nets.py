"""Tests of the denoising networks (diffusionlab.nets) and their Hydra configs.

The oracle is diffusers' ``UNet2DModel``: same architecture -> same parameter count, and its weights ported
into our UNet give the same outputs.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from diffusionlab.cli.resolvers import register_resolvers
from diffusionlab.nets import (
    ContextUnet,
    UNet,
    convert_unet2d_state_dict,
    count_parameters,
    fused_group_norm,
    unet_from_diffusers,
    unet_kwargs_from_diffusers,
)
from diffusionlab.nets.attention import attention
from diffusionlab.nets.blocks import GroupNorm
from tests.helpers import require_fused_group_norm

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "model"


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread (tests/conftest.py)


def tiny_unet(**kw) -> UNet:
    args = dict(
        in_channels=1,
        base_channels=16,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(16,),
        norm_groups=8,
        dropout=0.0,
        image_size=32,
    )
    return UNet(**{**args, **kw})


def perturb(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Add noise to every parameter so zero-initialised layers (DDPM init) do not hide anything."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net


def build_from_yaml(name: str, channels=1, num_classes=10, image_size=32, num_timesteps=1000, meta=False):
    """The network of ``configs/model/<name>.yaml``; ``num_classes=None`` as ``data.conditional=false`` gives it."""
    register_resolvers()
    data = {"channels": channels, "num_classes": num_classes or 10, "conditional": num_classes is not None}
    root = OmegaConf.create(
        {
            "data": {**data, "image_size": image_size},
            "diffusion": {"num_timesteps": num_timesteps},
            "model": OmegaConf.load(CONFIGS / f"{name}.yaml"),
        }
    )
    if meta:
        with torch.device("meta"):
            return instantiate(root.model)
    return instantiate(root.model)


# ----------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("size", [28, 32])
@pytest.mark.parametrize("num_classes", [None, 10])
@pytest.mark.parametrize("t_dtype", [torch.long, torch.float32])
@pytest.mark.parametrize("kind", ["unet", "context"])
def test_output_shape(kind, size, num_classes, t_dtype):
    if kind == "unet":
        net = tiny_unet(in_channels=3, num_classes=num_classes, image_size=size, attention_resolutions=(size // 2,))
    else:
        net = ContextUnet(in_channels=3, n_feat=16, num_classes=num_classes, image_size=size, num_timesteps=400)
    assert net.in_channels == 3 and net.num_classes == num_classes
    x = torch.randn(3, 3, size, size)
    t = torch.tensor([0, 7, 399]).to(t_dtype)
    y = torch.tensor([0, 9, 10]) if num_classes else None
    out = net(x, t, y)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_scalar_timestep_broadcasts_and_float_equals_long():
    net = perturb(tiny_unet(num_classes=10)).eval()
    x, y = torch.randn(2, 1, 32, 32), torch.tensor([1, 2])
    ref = net(x, torch.tensor([5, 5]), y)
    torch.testing.assert_close(net(x, 5, y), ref)
    torch.testing.assert_close(net(x, torch.tensor(5.0), y), ref)
    assert not torch.allclose(net(x, torch.tensor([6, 6]), y), ref)


# ----------------------------------------------------------------------------------------- configs


def test_cifar10_ddpm_preset_has_35_7m_parameters():
    net = build_from_yaml("cifar10_ddpm", channels=3, num_classes=None, meta=True)
    n = count_parameters(net)
    print(f"cifar10_ddpm parameters: {n:,}")
    assert abs(n - 35.7e6) < 0.1e6
    assert n == 35_746_307  # google/ddpm-cifar10-32, the DDPM paper's network ported to diffusers
    conditional = build_from_yaml("cifar10_ddpm", channels=3, num_classes=10, meta=True)
    assert count_parameters(conditional) - n == 11 * 512  # num_classes + 1 rows of 4 * 128


@pytest.mark.parametrize(
    "name, size, low, high",
    [
        ("unet_small", 32, 3e5, 2e6),
        ("unet_mnist", 32, 2e6, 1e7),
        ("context_unet", 28, 1e6, 1e7),
    ],
)
def test_small_presets_build_and_run(name, size, low, high):
    net = build_from_yaml(name, image_size=size, num_timesteps=400)
    n = count_parameters(net)
    print(f"{name} parameters: {n:,}")
    assert low < n < high
    x = torch.randn(2, 1, size, size)
    assert net(x, torch.tensor([1, 300]), torch.tensor([3, 10])).shape == x.shape
    if name == "context_unet":
        assert net.num_timesteps == 400


def test_unet_small_at_28_names_the_fix():
    with pytest.raises((ValueError, InstantiationException), match=r"attention_resolutions \[8\].*\[28, 14, 7\]"):
        build_from_yaml("unet_small", image_size=28)


# ----------------------------------------------------------------------------------------- ContextUnet


def test_context_unet_shortcut_is_registered_and_forward_creates_nothing():
    net = ContextUnet(in_channels=1, n_feat=16, num_classes=10, image_size=28)
    assert "init_conv.shortcut.weight" in net.state_dict()
    assert isinstance(net.init_conv.shortcut, torch.nn.Conv2d)
    n_params, n_modules = count_parameters(net), len(list(net.modules()))
    x, t, y = torch.randn(4, 1, 28, 28), torch.tensor([1, 2, 3, 4]), torch.tensor([0, 1, 2, 10])
    net.train()
    net(x, t, y).square().mean().backward()
    assert count_parameters(net) == n_params and len(list(net.modules())) == n_modules
    # every parameter is used (the shortcut included) and gets a gradient
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    # the course's flaw (a fresh random shortcut on each call) would make two eval passes differ
    net.eval()
    torch.testing.assert_close(net(x, t, y), net(x, t, y), rtol=0, atol=0)


def test_context_unet_time_is_normalised_by_num_timesteps():
    a = ContextUnet(n_feat=16, image_size=28, num_timesteps=400).eval()
    b = ContextUnet(n_feat=16, image_size=28, num_timesteps=1000).eval()
    b.load_state_dict(a.state_dict())
    x, y = torch.randn(2, 1, 28, 28), torch.tensor([1, 2])
    torch.testing.assert_close(a(x, torch.tensor([100, 200]), y), b(x, torch.tensor([250, 500]), y))


def test_context_unet_rejects_wrong_size():
    with pytest.raises(ValueError, match="divisible by 4"):
        ContextUnet(image_size=30)
    with pytest.raises(ValueError, match="image_size=28"):
        ContextUnet(n_feat=16, image_size=28)(torch.randn(1, 1, 32, 32), torch.tensor([1]))


# ----------------------------------------------------------------------------------------- null class


@pytest.mark.parametrize("kind", ["unet", "context"])
def test_null_class(kind):
    if kind == "unet":
        net = perturb(tiny_unet(num_classes=10))
    else:
        net = ContextUnet(n_feat=16, num_classes=10, image_size=32)
    # ContextUnet in train mode: with untrained BatchNorm running stats the up path is scaled down to ~1e-6
    net.train(kind == "context")
    x, t = torch.randn(3, 1, 32, 32), torch.tensor([3, 30, 300])
    null = net(x, t, torch.full((3,), 10))
    torch.testing.assert_close(net(x, t, None), null)
    assert not torch.allclose(net(x, t, torch.zeros(3, dtype=torch.long)), null, atol=1e-4)
    if kind == "unet":
        assert net.class_embed.num_embeddings == 11
    else:
        # the null class is the course's context mask: a zero context vector
        zero = net.contextembed1(torch.zeros(1, 10))
        torch.testing.assert_close(net.contextembed1(torch.eye(11)[10:, :10]), zero)


@pytest.mark.parametrize("kind", ["unet", "context"])
def test_bad_labels(kind):
    cond = tiny_unet(num_classes=10) if kind == "unet" else ContextUnet(n_feat=16, image_size=32)
    uncond = tiny_unet() if kind == "unet" else ContextUnet(n_feat=16, num_classes=None, image_size=32)
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"\[0, 10\].*11"):
        cond(x, t, torch.tensor([0, 11]))
    with pytest.raises(TypeError, match="integer"):
        cond(x, t, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"shape \[2\]"):
        cond(x, t, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="unconditional"):
        uncond(x, t, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="timesteps"):
        cond(x, torch.tensor([1, 2, 3]), None)


# ----------------------------------------------------------------------------------------- image sizes


def test_unet_bad_image_size_at_construction_and_call():
    with pytest.raises(ValueError, match=r"image_size=28 is not divisible by 8.*pad the images to 32"):
        UNet(in_channels=1, image_size=28)
    net = tiny_unet()
    with pytest.raises(ValueError, match=r"input height=31 .*pad the images to 32"):
        net(torch.randn(1, 1, 31, 31), torch.tensor([1]))
    with pytest.raises(ValueError, match="x_t must have shape"):
        net(torch.randn(1, 3, 32, 32), torch.tensor([1]))
    with pytest.raises(ValueError, match="norm_groups"):
        tiny_unet(base_channels=12)


# ----------------------------------------------------------------------------------------- fast paths


def test_channels_last_and_bf16_autocast():
    net = perturb(tiny_unet(num_classes=10)).eval()
    x, t, y = torch.randn(2, 1, 32, 32), torch.tensor([1, 500]), torch.tensor([1, 10])
    ref = net(x, t, y)
    net_cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
    out_cl = net_cl(x.to(memory_format=torch.channels_last), t, y)
    torch.testing.assert_close(out_cl, ref, atol=1e-5, rtol=1e-4)
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_bf16 = net_cl(x.to(memory_format=torch.channels_last), t, y)
    assert out_bf16.dtype == torch.bfloat16
    assert (out_bf16.float() - ref).abs().max() < 0.05 * ref.abs().max()


# ----------------------------------------------------------------------------------------- diffusers oracle


def diffusers_config(**kw) -> dict:
    cfg = dict(
        sample_size=32,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        attention_head_dim=None,
        norm_num_groups=8,
        norm_eps=1e-6,
        freq_shift=1,
        flip_sin_to_cos=False,
        dropout=0.1,
    )
    return {**cfg, **kw}


def test_cifar10_ddpm_parameter_count_equals_diffusers():
    diffusers = pytest.importorskip("diffusers")
    cfg = diffusers_config(
        in_channels=3,
        out_channels=3,
        block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=32,
    )
    with torch.device("meta"):
        theirs = diffusers.UNet2DModel(**cfg)
    ours = build_from_yaml("cifar10_ddpm", channels=3, num_classes=None, meta=True)
    assert count_parameters(ours) == count_parameters(theirs) == 35_746_307
    assert unet_kwargs_from_diffusers(cfg) == {
        k: (tuple(v) if isinstance(v, list) else v)
        for k, v in dict(
            in_channels=3,
            out_channels=3,
            base_channels=128,
            channel_mult=(1, 2, 2, 2),
            num_res_blocks=2,
            attention_resolutions=(16,),
            dropout=0.1,
            num_classes=None,
            image_size=32,
            num_heads=1,
            head_dim=None,
            norm_groups=32,
            norm_eps=1e-6,
            mid_attention=True,
        ).items()
    }


@pytest.mark.parametrize(
    "variant",
    [
        dict(),
        dict(num_class_embeds=11, flip_sin_to_cos=True),
        dict(
            attention_head_dim=16,
            num_class_embeds=11,
            down_block_types=("AttnDownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D", "AttnUpBlock2D"),
        ),
    ],
)
def test_ported_diffusers_weights_give_equal_outputs(variant):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    cfg = diffusers_config(**variant)
    theirs = perturb(diffusers.UNet2DModel(**cfg)).eval()
    ours = unet_from_diffusers(dict(theirs.config), theirs.state_dict()).eval()
    assert count_parameters(ours) == count_parameters(theirs)
    x = torch.randn(3, 1, 32, 32)
    t = torch.tensor([0, 37, 999])
    y = torch.tensor([0, 5, 10]) if cfg.get("num_class_embeds") else None
    with torch.no_grad():
        expected = theirs(x, t, class_labels=y).sample
        got = ours(x, t, y)
    assert expected.abs().max() > 0.1  # a real signal, not zeros
    assert (got - expected).abs().max() < 1e-4


def test_diffusers_config_we_cannot_reproduce_is_refused():
    with pytest.raises(ValueError, match="freq_shift=0"):
        unet_kwargs_from_diffusers(diffusers_config(freq_shift=0))
    with pytest.raises(ValueError, match="CrossAttnDownBlock2D"):
        unet_kwargs_from_diffusers(
            diffusers_config(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"))
        )


@pytest.mark.parametrize("path", ["fused", "nchw_detour"])
@pytest.mark.parametrize("silu", [False, True])
def test_groupnorm_bf16_channels_last_fast_path_matches_float32(silu, path, monkeypatch):
    if path == "fused":
        require_fused_group_norm()
    else:
        monkeypatch.setattr(fused_group_norm, "available", lambda: False)
    ref = perturb(torch.nn.GroupNorm(8, 32, eps=1e-6))
    ours = GroupNorm(8, 32, eps=1e-6, silu=silu)
    ours.load_state_dict(ref.state_dict())
    x = (3 + 2 * torch.randn(4, 32, 8, 8)).to(torch.bfloat16)  # mean far from 0: stats must be accurate
    grad = torch.randn(4, 32, 8, 8).to(torch.bfloat16)
    x_cl = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    out = ours(x_cl)
    out.backward(grad.contiguous(memory_format=torch.channels_last))
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    assert x_cl.grad.is_contiguous(memory_format=torch.channels_last)
    x32 = x.float().requires_grad_()
    expected = ref(x32)
    expected = F.silu(expected) if silu else expected
    expected.backward(grad.float())
    torch.testing.assert_close(out.float(), expected, atol=3e-2, rtol=2e-2)
    torch.testing.assert_close(x_cl.grad.float(), x32.grad, atol=3e-2, rtol=3e-2)
    w_grad, b_grad = ours.weight.grad, ours.bias.grad
    ref_w, ref_b = ref.weight.grad, ref.bias.grad
    torch.testing.assert_close(w_grad, ref_w, atol=0.1, rtol=2e-2)
    torch.testing.assert_close(b_grad, ref_b, atol=0.1, rtol=2e-2)
    with torch.no_grad():  # sampling: the forward without autograd
        fast = ours(x.contiguous(memory_format=torch.channels_last))
    assert fast.dtype == torch.bfloat16 and fast.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast.float(), expected.detach(), atol=3e-2, rtol=2e-2)


def test_attention_bf16_training_path_matches_sdpa():
    q, k, v = (torch.randn(2, 2, 64, 16, requires_grad=True) for _ in range(3))
    expected = F.scaled_dot_product_attention(q, k, v)
    grads = torch.autograd.grad(expected.square().sum(), (q, k, v))
    qb, kb, vb = (a.detach().to(torch.bfloat16).requires_grad_() for a in (q, k, v))
    got = attention(qb, kb, vb)  # bf16 + grad enabled on CPU: the matmul + softmax path
    got_grads = torch.autograd.grad(got.float().square().sum(), (qb, kb, vb))
    torch.testing.assert_close(got.float(), expected, atol=3e-2, rtol=3e-2)
    for g, e in zip(got_grads, grads):
        torch.testing.assert_close(g.float(), e, atol=6e-2, rtol=5e-2)


@pytest.mark.parametrize(
    "shape,matmul",
    [((2, 1, 64, 64), True), ((2, 2, 49, 128), True), ((2, 4, 64, 32), False), ((1, 1, 300, 64), False)],
)
def test_attention_bf16_sampling_route_by_head_width_and_positions(monkeypatch, shape, matmul):
    """Without gradients, bf16 on CPU: two matmuls + softmax for heads >= 64 wide over <= 256 positions, PyTorch's
    fused kernel otherwise; both match float32's SDPA."""
    import diffusionlab.nets.attention as attention_module

    q, k, v = (torch.randn(*shape) for _ in range(3))
    expected = F.scaled_dot_product_attention(q, k, v)
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(attention_module.F, "scaled_dot_product_attention", lambda *a: calls.append(1) or real(*a))
    with torch.inference_mode():
        got = attention(*(a.to(torch.bfloat16) for a in (q, k, v)))
    assert (calls == []) == matmul
    torch.testing.assert_close(got.float(), expected, atol=3e-2, rtol=3e-2)


def test_ported_diffusers_weights_give_equal_gradients():
    """Backward oracle: the same loss gives the same gradients (diffusers' mapped to our keys)."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    cfg = diffusers_config(num_class_embeds=11, dropout=0.0)
    theirs = perturb(diffusers.UNet2DModel(**cfg)).train()
    ours = unet_from_diffusers(dict(theirs.config), theirs.state_dict()).train()
    x, t, y = torch.randn(2, 1, 32, 32), torch.tensor([3, 700]), torch.tensor([4, 10])
    target = torch.randn_like(x)
    F.mse_loss(theirs(x, t, class_labels=y).sample, target).backward()
    F.mse_loss(ours(x, t, y), target).backward()
    expected = convert_unet2d_state_dict({k: p.grad for k, p in theirs.named_parameters()}, flip_sin_to_cos=False)
    got = {k: p.grad for k, p in ours.named_parameters()}
    assert expected.keys() == got.keys()
    for key, grad in got.items():
        torch.testing.assert_close(grad, expected[key], atol=1e-5, rtol=1e-3, msg=key)


def test_bf16_channels_last_training_gradients_track_float32():
    """The bf16 + channels_last fast paths (GroupNorm backward, matmul attention) give float32's gradients."""
    torch.manual_seed(0)
    net = perturb(tiny_unet(num_classes=10)).train()
    x, t, y = torch.randn(4, 1, 32, 32), torch.tensor([3, 70, 400, 999]), torch.tensor([4, 10, 0, 9])
    target = torch.randn_like(x)
    F.mse_loss(net(x, t, y), target).backward()
    ref = torch.cat([p.grad.flatten() for p in net.parameters()])
    net.zero_grad()
    net = net.to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x.contiguous(memory_format=torch.channels_last), t, y)
    F.mse_loss(out.float(), target).backward()
    got = torch.cat([p.grad.flatten() for p in net.parameters()])
    assert (got - ref).norm() < 0.05 * ref.norm()
