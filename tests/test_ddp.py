"""Multi-process training on the CPU (DDP, gloo) against one process with the same global batch and seed,
and the per-rank training noise that makes them agree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffusionlab.diffusion import GaussianDiffusion
from tests.helpers import ROOT, run_script, train_overrides


def _recording_net():
    """A deterministic 'network' that returns its input, so the loss is a function of the draws alone."""
    return lambda x_t, t, y: x_t + t.view(-1, 1, 1, 1).float() * 1e-3 + (0 if y is None else y.view(-1, 1, 1, 1))


def test_sharded_draws_equal_the_global_batch():
    diffusion = GaussianDiffusion("linear", 1000, cond_drop_prob=0.5)
    x = torch.randn(8, 1, 4, 4)
    y = torch.arange(8)
    net = _recording_net()
    per_sample = []

    def capture(x_t, t, yy):
        per_sample.append((x_t.clone(), t.clone(), yy.clone()))
        return net(x_t, t, yy)

    whole = diffusion.training_loss(capture, x, y, 10, torch.Generator().manual_seed(3))
    shards = [
        diffusion.training_loss(capture, x[r::2], y[r::2], 10, torch.Generator().manual_seed(3), shard=(r, 2))
        for r in (0, 1)
    ]
    (xt, t, yy), (xt0, t0, y0), (xt1, t1, y1) = per_sample
    assert torch.equal(xt[0::2], xt0) and torch.equal(xt[1::2], xt1)  # same noise per global sample
    assert torch.equal(t[0::2], t0) and torch.equal(t[1::2], t1)
    assert torch.equal(yy[0::2], y0) and torch.equal(yy[1::2], y1)  # same label dropout
    assert not torch.equal(t0, t1)  # the two ranks draw different timesteps
    assert torch.isclose(whole, torch.stack(shards).mean(), rtol=1e-6)
    with pytest.raises(ValueError, match="0 <= rank < world"):
        diffusion.training_loss(net, x, y, 10, shard=(2, 2))


def _train(tmp_path: Path, name: str, data_dir: Path, *extra: str) -> tuple[list[float], dict, Path]:
    root = tmp_path / name
    losses = root / "losses.json"
    proc = run_script(
        "train.py",
        *train_overrides(data_dir),
        "trainer.max_steps=4",
        "trainer.val_check_interval=4",  # validate after the last step (2 batches of 64)
        "module.scheduler.warmup_steps=0",
        "+callbacks.loss_log._target_=tests.loss_recorder.GlobalLossRecorder",
        f"+callbacks.loss_log.path={losses}",
        "+callbacks@callbacks.throughput=throughput",
        *extra,
        env={"DIFFUSIONLAB_ROOT": str(root), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((root / "logs" / "debug" / "runs").iterdir())
    assert len(runs) == 1, f"expected one run folder, got {runs}"  # no duplicated Hydra output folder per rank
    state = torch.load(runs[0] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return json.loads(losses.read_text()), state, runs[0]


def _val_scores(state: dict) -> dict[str, float]:
    """The monitored validation values the checkpoint callbacks recorded (``val/loss_ema``)."""
    return {
        k: float(v["current_score"])
        for k, v in state["callbacks"].items()
        if "val/loss_ema" in k and v.get("current_score") is not None
    }


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(data_dir, tmp_path):
    one, one_state, one_run = _train(tmp_path, "one", data_dir, "data.batch_size=16")
    two, two_state, run = _train(tmp_path, "two", data_dir, "data.batch_size=8", "trainer=ddp_cpu")
    print("losses 1 process:", one, "\nlosses 2 processes:", two)
    assert len(one) == len(two) == 4
    assert two_state["global_step"] == one_state["global_step"] == 4
    # same global batch, same noise per sample: the losses agree up to float reduction order
    for a, b in zip(one, two):
        assert abs(a - b) <= 1e-4 * abs(a), (one, two)
    # and so do the weights (Adam's first steps are ~lr * sign(grad): allow a few float-order flips)
    diffs = [
        (one_state["state_dict"][k] - v).abs().max().item()
        for k, v in two_state["state_dict"].items()
        if v.is_floating_point()
    ]
    print(f"max weight difference after 4 steps: {max(diffs):.2e}")
    assert max(diffs) < 1e-4
    assert (run / "checkpoints" / "ema.safetensors").is_file()
    # validation is dealt out by whole batches with the single-process noise seeds: the same val losses
    # (from best.ckpt, written at validation end: last.ckpt is written after the final batch, before it)
    one_best, two_best = (
        torch.load(p, map_location="cpu", weights_only=True)
        for p in (one_run / "checkpoints" / "best.ckpt", run / "checkpoints" / "best.ckpt")
    )
    val_one, val_two = _val_scores(one_best), _val_scores(two_best)
    print("val/loss_ema 1 process:", val_one, "2 processes:", val_two)
    assert val_one and val_one.keys() == val_two.keys()
    for k in val_one:
        assert abs(val_one[k] - val_two[k]) <= 1e-5 * abs(val_one[k]), (val_one, val_two)
    throughput = json.loads((run / "throughput.json").read_text())  # written once, by rank 0
    assert throughput["world_size"] == 2 and throughput["global_batch"] == 16 and throughput["images_per_s"] > 0


@pytest.mark.slow
def test_bf16_mixed_tracks_float32(data_dir, tmp_path):
    """Same seed, same draws: a bf16-mixed run's loss curve follows the float32 one (AMX on this CPU)."""
    from diffusionlab.cli.train import train
    from tests.helpers import compose_cfg

    curves = {}
    for precision in ("32-true", "bf16-mixed"):
        out = tmp_path / precision
        path = out / "losses.json"
        overrides = train_overrides(
            data_dir,
            "trainer.max_steps=40",
            "trainer.max_epochs=10",
            f"trainer.precision={precision}",
            "module.channels_last=true",
            "module.optimizer.lr=2e-3",
            "module.scheduler.warmup_steps=0",
            "trainer.limit_val_batches=0",  # the training-loss curves are the test: no validation, no grids
            "callbacks.sample_grid.every_n_epochs=0",
            "+callbacks.loss_log._target_=tests.loss_recorder.GlobalLossRecorder",
            f"+callbacks.loss_log.path={path}",
        )
        train(compose_cfg("train.yaml", overrides, out))
        curves[precision] = torch.tensor(json.loads(path.read_text()))
    fp32, bf16 = curves["32-true"], curves["bf16-mixed"]
    print("fp32", fp32.tolist(), "\nbf16", bf16.tolist())
    assert len(fp32) == len(bf16) == 40
    assert abs(bf16[0] - fp32[0]) < 0.02 * fp32[0]  # same weights and draws: only the arithmetic differs
    assert ((bf16 - fp32).abs() / fp32).max() < 0.15  # step by step
    late_fp32, late_bf16 = fp32[-10:].mean(), bf16[-10:].mean()
    assert late_fp32 < 0.6 * fp32[0] and late_bf16 < 0.6 * bf16[0]  # both learn
    assert abs(late_bf16 - late_fp32) < 0.1 * late_fp32
