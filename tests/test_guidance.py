"""Classifier-free guidance: the arithmetic of both conventions, one batched net call, the shortcuts."""

from __future__ import annotations

import pytest
import torch

from diffusionlab.diffusion import NoiseSchedule
from diffusionlab.sampling import classifier_free_guidance, get_sampler, seed_guidance

NULL = 10  # the "no class" label


class ToyNet:
    """``net(x, t, c)``: a label- or embedding-dependent nonlinear function; records the batches it sees."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.table = torch.randn(NULL + 1, 3, generator=g)
        self.proj = torch.randn(8, 3, generator=g)
        self.calls = []

    def __call__(self, x, t, c):
        self.calls.append((x.shape[0], c.clone()))
        emb = self.table[c] if c.dtype == torch.long else c.mean(1) @ self.proj  # [B, 3]
        emb = emb.reshape(x.shape[0], 3, *[1] * (x.ndim - 2))
        return torch.tanh(x * (1 + emb)) + t.reshape(-1, *[1] * (x.ndim - 1)) / 1000


def _inputs(b=4):
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, 3, 5, 5, generator=g), torch.randint(0, 1000, (b,), generator=g)


@pytest.mark.parametrize("scale", [0.5, 2.0, 7.5, -1.0])
def test_guidance_arithmetic_in_one_batched_call(scale):
    net = ToyNet()
    x, t = _inputs()
    y = torch.tensor([1, 7, 3, 3])
    out = classifier_free_guidance(net, y, torch.full_like(y, NULL), scale)(x, t)
    assert len(net.calls) == 1 and net.calls[0][0] == 2 * len(x)
    assert sorted(net.calls[0][1].tolist()) == sorted(y.tolist() + [NULL] * 4)
    out_c, out_u = net(x, t, y), net(x, t, torch.full_like(y, NULL))
    assert torch.allclose(out, out_u + scale * (out_c - out_u), atol=1e-6)


def test_scale_one_and_zero_skip_a_pass():
    net = ToyNet()
    x, t = _inputs()
    y = torch.tensor([0, 1, 2, 3])
    out1 = classifier_free_guidance(net, y, torch.full_like(y, NULL), 1)(x, t)
    out0 = classifier_free_guidance(net, y, torch.full_like(y, NULL), 0.0)(x, t)
    assert [n for n, _ in net.calls] == [4, 4]
    assert net.calls[0][1].tolist() == y.tolist() and net.calls[1][1].tolist() == [NULL] * 4
    assert torch.equal(out1, net(x, t, y))
    assert torch.equal(out0, net(x, t, torch.full_like(y, NULL)))


def test_seed_paper_convention_is_scale_one_plus_w():
    net = ToyNet()
    x, t = _inputs()
    y, null = torch.tensor([5, 6, 7, 8]), torch.full((4,), NULL)
    w = 2.0
    out = seed_guidance(net, y, null, w)(x, t)
    assert torch.allclose(out, (1 + w) * net(x, t, y) - w * net(x, t, null), atol=1e-6)
    assert torch.equal(seed_guidance(net, y, null, 0)(x, t), net(x, t, y))


def test_text_embeddings_with_a_shared_negative_prompt():
    net = ToyNet()
    x, t = _inputs(2)
    g = torch.Generator().manual_seed(2)
    cond, uncond = torch.randn(2, 77, 8, generator=g), torch.randn(1, 77, 8, generator=g)
    out = classifier_free_guidance(net, cond, uncond, 7.5)(x, t)
    assert len(net.calls) == 1 and net.calls[0][0] == 4
    out_u = net(x, t, uncond.expand(2, 77, 8))
    assert torch.allclose(out, out_u + 7.5 * (net(x, t, cond) - out_u), atol=1e-5)


def test_guided_model_drives_a_sampler():
    net = ToyNet()
    schedule = NoiseSchedule.from_name("linear", 1000)
    x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([1, 2, 3, 4])
    sampler = get_sampler("ddim", schedule, 5)
    guided = sampler.sample(classifier_free_guidance(net, y, torch.full_like(y, NULL), 3.0), x, progress=False)
    net.calls.clear()
    plain = sampler.sample(classifier_free_guidance(net, y, torch.full_like(y, NULL), 1.0), x, progress=False)
    assert len(net.calls) == 5 and all(n == 4 for n, _ in net.calls)
    assert torch.equal(plain, sampler.sample(lambda x_, t_: net(x_, t_, y), x, progress=False))
    assert guided.shape == x.shape and not torch.allclose(guided, plain)


def test_bad_guidance_arguments():
    net = ToyNet()
    y = torch.tensor([1, 2])
    with pytest.raises(TypeError, match="guidance scale must be a number"):
        classifier_free_guidance(net, y, y, "7.5")
    with pytest.raises(ValueError, match="differ beyond the batch dim"):
        classifier_free_guidance(net, torch.zeros(2, 77, 8), torch.zeros(2, 77, 4), 2.0)
    fn = classifier_free_guidance(net, torch.tensor([1, 2, 3]), torch.full((3,), NULL), 2.0)
    with pytest.raises(ValueError, match="cond has batch size 3, expected 1 or 2"):
        fn(*_inputs(2))
