"""The fused optimizer of the module configs, and gradient clipping with it under bf16-mixed
(:mod:`diffusionlab.lit.optim`)."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
import torch
from lightning import LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset

from diffusionlab.lit.optim import clip_gradients, make_optimizer
from tests.helpers import compose_cfg


class RecordingAdamW(torch.optim.AdamW):
    """AdamW that records the gradients it is about to apply (after Lightning's closure, i.e. after clipping)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.applied: list[list[torch.Tensor]] = []

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.applied.append([p.grad.detach().clone() for g in self.param_groups for p in g["params"]])
        super().step()
        return loss


class TinyModule(LightningModule):
    """A linear regression whose loss is scaled up so its gradients are far above the clipping threshold."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(8, 4)
        self.optimizer = None

    def training_step(self, batch, batch_idx):
        x, y = batch
        return 1e3 * torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        factory = functools.partial(RecordingAdamW, lr=1e-3, fused=True)
        self.optimizer = make_optimizer(factory, self.parameters(), self._trainer)
        return self.optimizer

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)


def _fit(precision: str, clip_val: float, algorithm: str) -> RecordingAdamW:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(32, 8), torch.randn(32, 4))
    module = TinyModule()
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,
        max_steps=3,
        gradient_clip_val=clip_val,
        gradient_clip_algorithm=algorithm,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(data, batch_size=8))
    return module.optimizer


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_fused_optimizer_gradients_are_clipped_by_norm(precision):
    opt = _fit(precision, clip_val=1e-2, algorithm="norm")
    assert opt.defaults["fused"] is True
    assert len(opt.applied) == 3
    for grads in opt.applied:
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        assert total <= 1e-2 * (1 + 1e-4), f"gradient norm {total} above the clipping value 1e-2"
        assert total > 0.5e-2  # clipped to the threshold, not zeroed


def test_fused_optimizer_gradients_are_clipped_by_value_under_bf16_mixed():
    opt = _fit("bf16-mixed", clip_val=1e-3, algorithm="value")
    for grads in opt.applied:
        largest = max(g.abs().max().item() for g in grads)
        assert largest == pytest.approx(1e-3, rel=1e-6), f"largest gradient {largest}, clipped at 1e-3"


def _trainer_stub(clip: float | None, scaler: bool) -> SimpleNamespace:
    plugin = SimpleNamespace(scaler=object() if scaler else None)
    return SimpleNamespace(gradient_clip_val=clip, precision_plugin=plugin)


@pytest.mark.parametrize(
    ("clip", "scaler", "fused"),
    [(1.0, False, True), (None, True, True), (1.0, True, False)],
    ids=["bf16-or-32", "16-mixed-no-clipping", "16-mixed-with-clipping"],
)
def test_make_optimizer_unfuses_only_for_a_grad_scaler_with_clipping(clip, scaler, fused):
    params = [torch.nn.Parameter(torch.zeros(3))]
    factory = functools.partial(torch.optim.AdamW, lr=1e-3, fused=True)
    assert make_optimizer(factory, params, _trainer_stub(clip, scaler)).defaults["fused"] is fused
    # a factory that does not ask for fusing is left alone (no fused keyword for optimizers without one)
    assert make_optimizer(functools.partial(torch.optim.SGD, lr=0.1), params, _trainer_stub(1.0, True))


@pytest.mark.parametrize(("overrides", "module"), [([], "diffusion"), (["experiment=mnist_autoencoder"], "ae")])
def test_module_configs_train_with_the_fused_optimizer(tmp_path, overrides, module):
    from hydra.utils import instantiate

    cfg = compose_cfg("train.yaml", overrides, tmp_path / "run")
    factory = instantiate(cfg.module.optimizer)
    assert factory.keywords.get("fused") is True, f"module={module}: the optimizer is not fused"
    opt = make_optimizer(factory, [torch.nn.Parameter(torch.zeros(3))], None)
    assert opt.defaults["fused"] is True
