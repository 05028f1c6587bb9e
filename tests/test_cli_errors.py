"""Bad input gets one clear message naming the bad value (and the valid choices), a non-zero exit,
and no traceback; nothing half-written is loaded."""

from __future__ import annotations

import os
import pickle
import shutil

import pytest
import torch

from diffusionlab.cli.errors import exit_on_user_error
from diffusionlab.cli.sample import sample
from diffusionlab.cli.train import train
from tests.helpers import compose_cfg, run_script, train_overrides


def _fails_with(capsys, fn, cfg, *fragments):
    with pytest.raises(SystemExit) as e:
        exit_on_user_error(fn)(cfg)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    for frag in fragments:
        assert frag in err, err
    return err


def test_train_script_unknown_schedule_exits_cleanly(data_dir, tmp_path):
    r = run_script("train.py", *train_overrides(data_dir, "diffusion.schedule=cosin", f"paths.log_dir={tmp_path}"))
    assert r.returncode == 2, r.stderr[-2000:]
    assert "unknown noise schedule 'cosin'; valid choices: linear, scaled_linear, cosine, sigmoid" in r.stderr
    assert "Traceback" not in r.stderr


def test_sample_script_unknown_sampler_lists_choices(trained_run, tmp_path):
    r = run_script("sample.py", f"ckpt={trained_run}", "sampler=dpm", f"paths.log_dir={tmp_path}")
    assert r.returncode != 0
    assert "sampler/dpm" in r.stderr and "ddim" in r.stderr and "dpmpp_2m" in r.stderr  # Hydra lists the options


def test_sample_script_missing_checkpoint(tmp_path):
    r = run_script("sample.py", f"ckpt={tmp_path}/nope", f"paths.log_dir={tmp_path}")
    assert r.returncode == 2 and f"{tmp_path}/nope" in r.stderr and "does not exist" in r.stderr


@pytest.mark.parametrize(
    "override, fragments",
    [
        ("steps=0", ["steps", "0"]),
        ("steps=5000", ["5000", "1000"]),
        ("guidance=-1", ["guidance", "-1"]),
        ("class=12", ["class [12] out of range", "0..9"]),
        ("n=0", ["n must be >= 1"]),
        ("device=tpu", ["unknown device 'tpu'", "cpu"]),
    ],
)
def test_sample_bad_values(trained_run, tmp_path, capsys, override, fragments):
    cfg = compose_cfg("sample.yaml", [f"ckpt={trained_run}", "n=2", "steps=2", override], tmp_path)
    _fails_with(capsys, sample, cfg, *fragments)


def test_checkpoint_of_another_architecture_lists_keys(trained_run, tmp_path, capsys):
    run = tmp_path / "other"
    shutil.copytree(trained_run, run)
    cfg_file = run / "checkpoints" / "config.yaml"
    cfg_file.write_text(
        cfg_file.read_text().replace("channel_mult:\n  - 1\n  - 2\n", "channel_mult:\n  - 1\n  - 2\n  - 2\n")
    )
    cfg = compose_cfg("sample.yaml", [f"ckpt={run}", "n=2", "steps=2"], tmp_path / "out")
    _fails_with(capsys, sample, cfg, "does not match the network's architecture", "missing keys", "unexpected keys")


def test_truncated_checkpoints_are_refused(trained_run, tmp_path, capsys, data_dir):
    run = tmp_path / "trunc"
    shutil.copytree(trained_run, run)
    for name in ("ema.safetensors", "last.ckpt"):
        f = run / "checkpoints" / name
        f.write_bytes(f.read_bytes()[: os.path.getsize(f) // 2])
    cfg = compose_cfg("sample.yaml", [f"ckpt={run}", "n=2", "steps=2"], tmp_path / "out")
    _fails_with(capsys, sample, cfg, "ema.safetensors", "not a readable safetensors file")
    cfg = compose_cfg("train.yaml", train_overrides(data_dir, f"ckpt_path={run}/checkpoints/last.ckpt"), tmp_path / "t")
    _fails_with(capsys, train, cfg, "last.ckpt", "not a readable checkpoint")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/diffusionlab_pwned",))


def test_pickle_with_code_is_refused(tmp_path, capsys, data_dir):
    evil = tmp_path / "evil" / "checkpoints" / "last.ckpt"
    evil.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "payload": _Evil()}, evil, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    cfg = compose_cfg("train.yaml", train_overrides(data_dir, f"ckpt_path={evil}"), tmp_path / "t")
    _fails_with(capsys, train, cfg, "refusing to load", "arbitrary code")
    assert not os.path.exists("/tmp/diffusionlab_pwned")


def test_dataset_missing_offline(tmp_path, capsys):
    cfg = compose_cfg("train.yaml", train_overrides(tmp_path / "empty", "data.download=false"), tmp_path / "t")
    _fails_with(capsys, train, cfg, "dataset 'mnist' not found", "train-images-idx3-ubyte.gz", "MNIST/raw")


def test_image_size_the_network_cannot_take(data_dir, tmp_path, capsys):
    cfg = compose_cfg("train.yaml", train_overrides(data_dir, "model.channel_mult=[1,2,2,2]"), tmp_path / "t")
    _fails_with(capsys, train, cfg, "28")


def test_output_folder_not_writable(trained_run, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cfg = compose_cfg("sample.yaml", [f"ckpt={trained_run}", "n=2", "steps=2", f"out_dir={blocker}/sub"], tmp_path)
    _fails_with(capsys, sample, cfg, "is not writable", str(blocker))


def test_unknown_prediction_and_bad_timesteps(data_dir, tmp_path, capsys):
    cfg = compose_cfg("train.yaml", train_overrides(data_dir, "diffusion.prediction=noise"), tmp_path / "a")
    _fails_with(capsys, train, cfg, "unknown prediction type 'noise'", "eps, x0, v")
    cfg = compose_cfg("train.yaml", train_overrides(data_dir, "diffusion.num_timesteps=0"), tmp_path / "b")
    _fails_with(capsys, train, cfg, "num_timesteps must be a positive integer")
