"""Sampling in mixed precision and channels-last: the fast paths of ``generate`` change speed, not results."""

from __future__ import annotations

import pytest
import torch

from diffusionlab.diffusion.gaussian import GaussianDiffusion
from diffusionlab.nets.unet import UNet
from diffusionlab.pipelines import generate

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def net_and_diffusion():
    torch.manual_seed(0)
    net = UNet(in_channels=1, base_channels=16, channel_mult=(1, 2), attention_resolutions=(8,), num_classes=10,
               image_size=16, norm_groups=8, dropout=0.0)  # fmt: skip
    for p in net.parameters():  # random weights everywhere (the output convs start at zero)
        p.data.normal_(0, 0.05)
    return net, GaussianDiffusion("linear", 100)


def _draw(net_and_diffusion, **kw):
    net, diffusion = net_and_diffusion
    labels = torch.arange(8) % 10
    out, _ = generate(net, diffusion, (1, 16, 16), labels=labels, steps=5, guidance=2.0, seed=3, progress=False,
                      sampler_opts={"clip_x0": None}, **kw)  # fmt: skip
    return out


def test_channels_last_gives_the_float32_samples(net_and_diffusion):
    ref = _draw(net_and_diffusion)
    fast = _draw(net_and_diffusion, channels_last=True)
    net_and_diffusion[0].to(memory_format=torch.contiguous_format)
    assert fast.is_contiguous() or fast.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast.contiguous(), ref, atol=2e-5, rtol=1e-4)


def test_bf16_samples_track_float32_and_stay_float32(net_and_diffusion):
    ref = _draw(net_and_diffusion)
    low = _draw(net_and_diffusion, precision="bf16-mixed")
    assert low.dtype == torch.float32
    diff = (low - ref).abs()
    # autocast took effect (bf16 has 8 mantissa bits) but the trajectory stays close to the float32 one
    assert diff.max() > 1e-4, "bf16-mixed sampling returned the float32 result: autocast was not applied"
    rel = diff.norm() / ref.norm()
    assert rel < 5e-3, f"bf16 samples drift {rel:.3f} (relative L2) from float32"


def test_unknown_precision_names_the_choices(net_and_diffusion):
    with pytest.raises(ValueError, match=r"'bf16'.*valid choices: 32, bf16-mixed, 16-mixed, auto"):
        _draw(net_and_diffusion, precision="bf16")
    out = _draw(net_and_diffusion, precision=32)  # a config's 32 arrives as an int
    assert out.dtype == torch.float32


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_where_the_cpu_has_it(net_and_diffusion, monkeypatch, native):
    """``precision="auto"`` samples exactly as bf16-mixed on a CPU with native bf16 and as float32 on one
    without (where emulated bf16 would be slower than float32)."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    auto = _draw(net_and_diffusion, precision="auto")
    expected = _draw(net_and_diffusion, precision="bf16-mixed" if native else "32")
    torch.testing.assert_close(auto, expected, atol=0, rtol=0)


def test_trainer_precision_resolver_follows_the_hardware(monkeypatch):
    from diffusionlab.cli.resolvers import trainer_precision

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert trainer_precision("cpu") == "bf16-mixed"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert trainer_precision("cpu") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert trainer_precision("auto") == "32-true"


def test_benchmark_headers_name_the_cpu_kind(monkeypatch):
    """Benchmark tables are compared across machine kinds (Xeon with AMX, Zen 4, Zen 5): their header line
    names the CPU, its family and model, and the bf16 features that decide which kernels run."""
    from diffusionlab.utils.hardware import describe_cpu

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    cpuinfo = (
        "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n"
        "processor\t: 1\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n"
    )
    line = describe_cpu(cpuinfo)
    assert line.startswith("CPU: AMD EPYC (AuthenticAMD family 25 model 17), ")
    assert line.endswith("avx512_bf16 yes, AMX no")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert describe_cpu("").startswith("CPU: unknown CPU, ") and describe_cpu("").endswith("AMX yes")
