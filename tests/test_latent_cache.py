"""LatentCacheDataModule on real MNIST with a small random-weight autoencoder: contents, reuse, keys, damage,
crashes, sampling, flips and two DDP processes (gloo) building one cache."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from diffusionlab.data.datamodule import ImageDataModule
from diffusionlab.data.latent_cache import LatentCacheDataModule
from diffusionlab.nets.autoencoder import kl_autoencoder, load_autoencoder, save_autoencoder
from diffusionlab.utils.images import uint8_to_signed

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread (tests/conftest.py)


def tiny_ae(seed: int = 0):
    torch.manual_seed(seed)
    return kl_autoencoder(in_channels=1, ch=8, norm_groups=4, mid_attention=False).eval()


def images(data_dir, **kw):
    opts = dict(name="mnist", data_dir=str(data_dir), image_size=32, batch_size=16, val_size=32, train_subset=64)
    return ImageDataModule(**{**opts, **kw})


def count_encodes(monkeypatch, ae) -> list[int]:
    """Replace ``ae.encode`` by a wrapper counting encoded images; returns the one-element counter."""
    count, encode = [0], ae.encode

    def counting(x):
        count[0] += len(x)
        return encode(x)

    monkeypatch.setattr(ae, "encode", counting)
    return count


def make_dm(data_dir, cache, ae, **kw):
    img_kw = {k: kw.pop(k) for k in list(kw) if k in ("train_subset", "hflip", "val_size")}
    if "img_size" in kw:
        img_kw["image_size"] = kw.pop("img_size")
    return LatentCacheDataModule(images(data_dir, **img_kw), ae, cache_dir=cache, progress=False, **kw)


def test_cache_holds_the_encoder_posterior_and_labels(data_dir, tmp_path):
    ae = tiny_ae()
    dm = make_dm(data_dir, tmp_path, ae, sample=False)
    dm.setup("fit")
    assert (dm.channels, dm.image_size) == (4, 8)
    train = dm.images.train_set
    x = torch.stack([train[i][0] for i in range(10)])
    y = torch.stack([train[i][1] for i in range(10)])
    with torch.no_grad():
        post = ae.encode(x)
    folder = dm.cache_folder("train")
    mean = np.load(folder / "mean.npy", mmap_mode="r")
    std = np.load(folder / "std.npy", mmap_mode="r")
    assert mean.shape == (1, 64, 4, 8, 8)
    torch.testing.assert_close(torch.from_numpy(np.array(mean[0, :10])), post.mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.from_numpy(np.array(std[0, :10])), post.std, atol=1e-5, rtol=1e-5)
    z, label = dm.datasets["train"][3]
    torch.testing.assert_close(z, post.mean[3], atol=1e-5, rtol=1e-5)
    assert label == y[3]
    xb, yb = next(iter(dm.val_dataloader()))
    assert xb.shape == (16, 4, 8, 8) and xb.dtype == torch.float32 and yb.shape == (16,)  # images.eval_batch_size
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["count"] == 64 and manifest["key"]["data"]["name"] == "mnist"
    assert dm.cache_bytes_per_image() == pytest.approx(2 * 4 * 8 * 8 * 4 + 8, rel=0.05)  # + npy headers


def test_second_run_does_no_encoding(data_dir, tmp_path, monkeypatch):
    ae = tiny_ae()
    first = count_encodes(monkeypatch, ae)
    dm = make_dm(data_dir, tmp_path, ae)
    dm.prepare_data()
    dm.setup("fit")
    assert first[0] == 64 + 32  # train + val, once each
    ae2 = tiny_ae()  # same weights, a new object (a new process in real life)
    second = count_encodes(monkeypatch, ae2)
    dm2 = make_dm(data_dir, tmp_path, ae2)
    dm2.prepare_data()
    dm2.setup("fit")
    assert second[0] == 0, "a complete cache was encoded again"
    assert len(dm2.datasets["train"]) == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [dm.cache_folder("train").name, dm.cache_folder("val").name]
    ), "leftover temporary folders or extra caches"


def test_changed_weights_data_or_dtype_give_a_new_key(data_dir, tmp_path, monkeypatch):
    base = make_dm(data_dir, tmp_path, tiny_ae())
    other_weights = tiny_ae()
    with torch.no_grad():
        next(other_weights.parameters()).add_(1e-3)
    keys = {
        "base": base.cache_folder("train"),
        "weights": make_dm(data_dir, tmp_path, other_weights).cache_folder("train"),
        "subset": make_dm(data_dir, tmp_path, tiny_ae(), train_subset=48).cache_folder("train"),
        "size": make_dm(data_dir, tmp_path, kl_autoencoder(1, ch=8, norm_groups=4, factor=2), img_size=28).cache_folder(
            "train"
        ),
        "dtype": make_dm(data_dir, tmp_path, tiny_ae(), dtype="float16").cache_folder("train"),
        "split": base.cache_folder("val"),
    }
    assert len(set(keys.values())) == len(keys), keys
    # not part of the key: loader settings and the data folder
    same = make_dm(data_dir, tmp_path, tiny_ae(), batch_size=7, num_workers=0)
    assert same.cache_folder("train") == keys["base"]
    # a new key is built, not served from the old cache
    base.setup("fit")
    count = count_encodes(monkeypatch, other_weights)
    make_dm(data_dir, tmp_path, other_weights).setup("fit")
    assert count[0] == 64 + 32


@pytest.mark.parametrize("verify", ["size", "hash"])
def test_damaged_cache_is_rebuilt_with_a_warning(data_dir, tmp_path, monkeypatch, verify):
    dm = make_dm(data_dir, tmp_path, tiny_ae(), verify=verify, sample=False)
    dm.setup("fit")
    folder = dm.cache_folder("train")
    good = np.load(folder / "mean.npy").copy()
    path = folder / "mean.npy"
    if verify == "size":  # truncated (a crash of something else, a full disk, a bad copy)
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)
    else:  # same size, one flipped byte: only the sha256 check sees it
        data = bytearray(path.read_bytes())
        data[-5] ^= 0xFF
        path.write_bytes(bytes(data))
    ae = tiny_ae()
    count = count_encodes(monkeypatch, ae)
    dm2 = make_dm(data_dir, tmp_path, ae, verify=verify, sample=False)
    with pytest.warns(UserWarning, match="damaged.*rebuilding"):
        dm2.setup("fit")
    assert count[0] == 64  # only the damaged split
    np.testing.assert_array_equal(np.load(folder / "mean.npy"), good)


def test_size_check_misses_same_size_damage_that_hash_catches(data_dir, tmp_path):
    dm = make_dm(data_dir, tmp_path, tiny_ae(), verify="size")
    dm.setup("fit")
    path = dm.cache_folder("val") / "std.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert dm._problem(dm.cache_folder("val"), dm.cache_key("val")) is None
    strict = make_dm(data_dir, tmp_path, tiny_ae(), verify="hash")
    assert "sha256" in strict._problem(strict.cache_folder("val"), strict.cache_key("val"))


def test_crash_while_encoding_leaves_no_cache(data_dir, tmp_path, monkeypatch):
    ae = tiny_ae()
    calls, encode = [0], ae.encode

    def crashing(x):
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("killed mid-way")
        return encode(x)

    monkeypatch.setattr(ae, "encode", crashing)
    dm = make_dm(data_dir, tmp_path, ae, encode_batch_size=16)
    with pytest.raises(RuntimeError, match="killed mid-way"):
        dm.ensure_cache("train")
    assert list(tmp_path.iterdir()) == [], "a half-written cache (or its temp folder) was left behind"
    monkeypatch.setattr(ae, "encode", encode)
    dm.ensure_cache("train")
    assert dm._problem(dm.cache_folder("train"), dm.cache_key("train")) is None


def test_items_are_fresh_posterior_samples_or_the_mean(data_dir, tmp_path):
    dm = make_dm(data_dir, tmp_path, tiny_ae(), sample=True)
    dm.setup("fit")
    folder = dm.cache_folder("train")
    mean = torch.from_numpy(np.load(folder / "mean.npy")[0, 5])
    std = torch.from_numpy(np.load(folder / "std.npy")[0, 5])
    torch.manual_seed(0)
    draws = torch.stack([dm.datasets["train"][5][0] for _ in range(400)])
    assert not torch.equal(draws[0], draws[1])
    eps = (draws - mean) / std  # must be standard normal per element
    assert abs(eps.mean().item()) < 0.02 and abs(eps.std().item() - 1) < 0.02
    val = dm.datasets["val"]  # validation items: one seeded draw each, so val losses are comparable
    assert torch.equal(val[2][0], val[2][0]) and not torch.equal(val[2][0], val[3][0])
    vmean = torch.from_numpy(np.load(dm.cache_folder("val") / "mean.npy")[0, 2])
    assert not torch.equal(val[2][0], vmean)
    fixed = make_dm(data_dir, tmp_path, tiny_ae(), sample=False)
    fixed.setup("fit")
    assert torch.equal(fixed.datasets["train"][5][0], mean)


def test_training_draws_are_keyed_by_epoch_and_index_not_the_global_rng(data_dir, tmp_path):
    """The training loader asks for ``(epoch, i)``: the same draw in any process and after a resume, a fresh
    one every epoch, and the global RNG untouched (a resumed latent run sees the latents it would have seen)."""
    dm = make_dm(data_dir, tmp_path, tiny_ae(), sample=True)
    dm.setup("fit")
    ds = dm.datasets["train"]
    state = torch.get_rng_state()
    a = ds[(3, 5)][0]
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)  # another global state: same draw
    assert torch.equal(ds[(3, 5)][0], a)
    assert not torch.equal(ds[(4, 5)][0], a) and not torch.equal(ds[(3, 6)][0], ds[(4, 6)][0])
    first = [z for z, _ in dm.train_dataloader()]
    other = make_dm(data_dir, tmp_path, tiny_ae(), sample=True)  # a new process, say: the same cache
    other.setup("fit")
    torch.manual_seed(7)
    again = [z for z, _ in other.train_dataloader()]
    assert len(first) == len(again) > 0 and all(torch.equal(u, v) for u, v in zip(first, again))


def test_flipped_images_are_cached_in_both_orientations(data_dir, tmp_path):
    ae = tiny_ae()
    dm = make_dm(data_dir, tmp_path, ae, hflip=True, sample=False)
    dm.setup("fit")
    mean = np.load(dm.cache_folder("train") / "mean.npy")
    assert mean.shape[0] == 2 and np.load(dm.cache_folder("val") / "mean.npy").shape[0] == 1
    x = dm.images.train_set.images[:4]  # uint8, not flipped
    with torch.no_grad():
        flipped = ae.encode(uint8_to_signed(x).flip(-1)).mean
    torch.testing.assert_close(torch.from_numpy(mean[1, :4]), flipped, atol=1e-5, rtol=1e-5)
    assert dm.images.train_set.hflip, "the image dataset's flips were not restored after encoding"
    seen = {tuple(dm.datasets["train"][0][0].flatten()[:3].tolist()) for _ in range(30)}
    assert len(seen) == 2, "items should draw either orientation"


def test_bad_settings_are_rejected_with_the_choices(data_dir, tmp_path):
    with pytest.raises(ValueError, match="float32, float16"):
        make_dm(data_dir, tmp_path, tiny_ae(), dtype="int8")
    with pytest.raises(ValueError, match="size, hash"):
        make_dm(data_dir, tmp_path, tiny_ae(), verify="quick")
    with pytest.raises(ValueError, match="channels=3 but the autoencoder gives 4"):
        make_dm(data_dir, tmp_path, tiny_ae(), channels=3)
    with pytest.raises(ValueError, match="image_size=4 .* set data.image_size=8"):
        make_dm(data_dir, tmp_path, tiny_ae(), image_size=4)
    with pytest.raises(ValueError, match="train_subset=10 differs"):
        LatentCacheDataModule(images(data_dir), tiny_ae(), cache_dir=tmp_path, train_subset=10)
    with pytest.raises(ValueError, match="not a multiple of the autoencoder's downsampling factor 4"):
        LatentCacheDataModule(images(data_dir, image_size=30), tiny_ae(), cache_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown stage"):
        make_dm(data_dir, tmp_path, tiny_ae()).setup("training")


# --------------------------------------------------------------------------------------- two processes
def _ddp_worker(rank: int, world: int, port: int, ae_path: str, data_dir: str, cache: str, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world, init_method=f"tcp://127.0.0.1:{port}")
    try:
        ae = load_autoencoder(ae_path)
        count, encode = [0], ae.encode
        ae.encode = lambda x: (count.__setitem__(0, count[0] + len(x)), encode(x))[1]
        dm = LatentCacheDataModule(images(data_dir), ae, cache_dir=cache, progress=False, sample=False)
        dm.setup("fit")  # no prepare_data: setup alone must coordinate the ranks
        z = dm.datasets["train"][7][0]
        Path(out, f"rank{rank}.json").write_text(json.dumps({"encoded": count[0], "z": z.flatten()[:5].tolist()}))
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ddp_processes_build_one_cache(data_dir, tmp_path):
    ae_path = save_autoencoder(tiny_ae(), tmp_path / "ae.safetensors")
    cache, out = tmp_path / "cache", tmp_path / "out"
    out.mkdir()
    env = os.environ.pop("LOCAL_RANK", None)
    try:
        mp.spawn(_ddp_worker, args=(2, _free_port(), str(ae_path), str(data_dir), str(cache), str(out)), nprocs=2)
    finally:
        if env is not None:
            os.environ["LOCAL_RANK"] = env
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["encoded"] == 64 + 32 and r1["encoded"] == 0, (r0["encoded"], r1["encoded"])
    assert r0["z"] == r1["z"]
    assert sorted(p.name.split("-")[1] for p in cache.iterdir()) == ["train", "val"], list(cache.iterdir())
