"""A full disk (ENOSPC) while writing a checkpoint, the EMA weights, a cache or metrics.json: the previous file
stays byte-identical, no temporary file is left, and the run stops with one line saying what to do."""

from __future__ import annotations

import errno
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from diffusionlab.utils.checksums import checksum_path
from diffusionlab.utils.io import DiskFullError, atomic_write, atomic_write_json
from tests.helpers import compose_cfg, train_overrides, user_error_output
from tests.test_metrics_reference import CountingExtractor, _ref


def enospc() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


def leftovers(folder: Path) -> list[str]:
    """Temporary or lock files of the atomic writers under ``folder``."""
    return [p.name for p in folder.rglob("*") if p.name.startswith(".") or p.name.endswith((".tmp", ".lock"))]


def test_atomic_writer_keeps_the_old_file_and_removes_its_temporary_one(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"fid": 12.5})
    before = path.read_bytes()

    def half_then_full(tmp):
        tmp.write_bytes(b'{"fid": 9')
        raise enospc()

    with pytest.raises(DiskFullError) as e:
        atomic_write(path, half_then_full)
    assert str(e.value) == f"disk full while writing {path}: free space in {tmp_path} and run again"
    assert e.value.errno == errno.ENOSPC and isinstance(e.value.__cause__, OSError)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_writers_that_do_not_say_enospc_are_recognised_by_the_free_space_left(tmp_path, monkeypatch):
    """torch.save on a full disk raises ``RuntimeError: ... unexpected pos 576 vs 534`` (seen on a full tmpfs)."""
    path = tmp_path / "last.ckpt"

    def torch_style(tmp):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    with pytest.raises(RuntimeError, match="unexpected pos"):  # plenty of space: a bug, not a full disk
        atomic_write(path, torch_style)
    full = shutil.disk_usage(tmp_path)._replace(free=4096)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: full)
    with pytest.raises(DiskFullError, match="disk full while writing .*last.ckpt"):
        atomic_write(path, torch_style)
    assert list(tmp_path.iterdir()) == []


def test_real_full_filesystem_torch_save_and_safetensors(tmp_path):
    """On a real 256 KiB tmpfs (needs root and mount rights; skipped otherwise)."""
    from safetensors.torch import save_file

    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        small = {"w": torch.zeros(1000)}
        for name, save in (("a.pt", torch.save), ("b.safetensors", lambda s, p: save_file(s, str(p)))):
            atomic_write(mnt / name, lambda tmp, save=save: save(small, tmp))
            before = (mnt / name).read_bytes()
            with pytest.raises(DiskFullError, match=f"disk full while writing {mnt / name}"):
                atomic_write(mnt / name, lambda tmp, save=save: save({"w": torch.zeros(200_000)}, tmp))
            assert (mnt / name).read_bytes() == before
        assert sorted(p.name for p in mnt.iterdir()) == ["a.pt", "b.safetensors"]
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_cache_write_on_a_full_disk_keeps_the_other_caches_and_exits_cleanly(data_dir, tmp_path, monkeypatch, capsys):
    ext = CountingExtractor()
    kept = _ref("mnist:test", ext, 20, data_dir, tmp_path)
    kept_bytes, kept_sum = kept.path.read_bytes(), checksum_path(kept.path).read_bytes()
    real_save = torch.save

    def full_disk_save(obj, f, *args, **kwargs):
        if "-n21-" in Path(f).name:  # the new cache entry runs out of space half-way
            Path(f).write_bytes(b"PK\x03\x04 half a zip")
            raise enospc()
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk_save)
    err = user_error_output(_ref, "mnist:test", ext, 21, data_dir, tmp_path, capsys=capsys).strip()
    folder = tmp_path / "reference"
    assert err.startswith(f"error: disk full while writing {folder}/mnist-test-") and "-n21-" in err
    assert err.endswith(f": free space in {folder} and run again") and "\n" not in err
    assert kept.path.read_bytes() == kept_bytes and checksum_path(kept.path).read_bytes() == kept_sum
    assert sorted(p.name for p in folder.iterdir()) == [kept.path.name, kept.path.name + ".sha256"]
    monkeypatch.setattr(torch, "save", real_save)  # space freed: the same call now builds it
    assert not _ref("mnist:test", ext, 21, data_dir, tmp_path).from_cache


def test_latent_cache_build_on_a_full_disk_leaves_no_folder(data_dir, tmp_path, monkeypatch):
    import numpy as np

    from tests.test_latent_cache import make_dm, tiny_ae

    def full(*args, **kwargs):
        raise enospc()

    monkeypatch.setattr(np, "save", full)  # labels.npy, after the latents were encoded
    dm = make_dm(data_dir, tmp_path, tiny_ae())
    with pytest.raises(DiskFullError, match=f"disk full while writing {dm.cache_folder('train')}: free space in"):
        dm.ensure_cache("train")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("target", ["last.ckpt", "ema.safetensors"])
def test_training_on_a_full_disk_keeps_the_last_checkpoint_and_says_how_to_resume(
    data_dir, tmp_path, monkeypatch, capsys, target
):
    import diffusionlab.lit.callbacks as callbacks

    ckpt_dir = tmp_path / "checkpoints"
    previous: dict[str, bytes] = {}
    calls = {"n": 0}

    def failing(real):
        def write(obj, f, *args, **kwargs):
            if Path(f).name.startswith(f".{target}."):
                calls["n"] += 1
                if calls["n"] == 2:  # the second save of the target (global step 4)
                    previous.update({p.name: p.read_bytes() for p in ckpt_dir.glob("*") if p.is_file()})
                    Path(f).write_bytes(b"half")
                    raise enospc()
            return real(obj, f, *args, **kwargs)

        return write

    if target == "last.ckpt":
        monkeypatch.setattr(torch, "save", failing(torch.save))
    else:
        monkeypatch.setattr(callbacks, "save_file", failing(callbacks.save_file))
    cfg = compose_cfg(
        "train.yaml",
        train_overrides(data_dir, "trainer.max_steps=6", "callbacks.last_checkpoint.every_n_train_steps=2"),
        tmp_path,
    )
    from diffusionlab.cli.train import train

    err = user_error_output(train, cfg, capsys=capsys)
    line = f"error: disk full while writing {ckpt_dir / target}: free space in {ckpt_dir} and "
    assert line + "resume with ckpt_path=last" in err.splitlines(), err[-2000:]
    from diffusionlab.utils.checkpoints import load_torch_checkpoint

    assert load_torch_checkpoint(ckpt_dir / "last.ckpt")["global_step"] == 2
    for name in ("last.ckpt", "ema.safetensors") if target == "ema.safetensors" else ("last.ckpt",):
        assert (ckpt_dir / name).read_bytes() == previous[name], f"{name} changed"
    assert leftovers(tmp_path) == []


def test_metrics_json_on_a_full_disk_keeps_the_previous_one(
    trained_run, data_dir, shared_dir, tmp_path, monkeypatch, capsys
):
    from diffusionlab.cli.evaluate import evaluate

    out = tmp_path / "eval"
    atomic_write_json(out / "metrics.json", {"fid": 42.0, "protocol": {"num_samples": 10000}})
    before = (out / "metrics.json").read_bytes()
    real_write_text = Path.write_text

    def full_disk_write_text(self, text, *args, **kwargs):
        if self.name.startswith(".metrics.json."):
            real_write_text(self, text[: len(text) // 2], *args, **kwargs)
            raise enospc()
        return real_write_text(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk_write_text)
    weights = shared_dir / "weights" / "inception-2015-12-05-pool3.torchscript.pt"
    cfg = compose_cfg(
        "evaluate.yaml",
        [f"ckpt={trained_run}", "num_samples=8", "steps=2", "batch_size=8", f"out_dir={out}",
         f"inception_weights={weights}", f"data_dir={data_dir}", f"cache_dir={tmp_path / 'cache'}",
         "classifier=false"],
        tmp_path / "h",
    )  # fmt: skip
    err = user_error_output(evaluate, cfg, capsys=capsys)
    assert f"error: disk full while writing {out / 'metrics.json'}: free space in {out} and run again" in err
    assert (out / "metrics.json").read_bytes() == before and leftovers(out) == []
