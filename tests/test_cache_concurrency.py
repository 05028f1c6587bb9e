"""Two jobs of a sweep build the same latent cache, reference features and domain classifier at the same moment
(two real processes): each cache is built once, by one of them; the other waits for the lock and reuses it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from diffusionlab.data.datamodule import ImageDataModule
from diffusionlab.data.latent_cache import LatentCacheDataModule
from diffusionlab.nets.autoencoder import kl_autoencoder
from diffusionlab.utils.checksums import checksum_problem
from tests.helpers import ROOT


def test_two_processes_build_each_cache_once_and_share_it(data_dir, tmp_path):
    cache, sync = tmp_path / "cache", tmp_path / "sync"
    sync.mkdir()
    ImageDataModule(name="mnist", data_dir=str(data_dir)).prepare_data()  # the .gz extracted before, not racing
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.cache_build_worker",
                str(data_dir),
                str(cache),
                str(sync),
                str(rank),
                str(tmp_path / f"report{rank}.json"),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    for p in procs:
        out, _ = p.communicate(timeout=900)
        assert p.returncode == 0, out[-3000:]
    r = [json.loads((tmp_path / f"report{rank}.json").read_text()) for rank in (0, 1)]

    # latent cache: 200 train images encoded by exactly one process, the same latents read by both
    assert sorted(x["latent"]["encoded"] for x in r) == [0, 200], [x["latent"] for x in r]
    assert r[0]["latent"]["folder"] == r[1]["latent"]["folder"] and r[0]["latent"]["z"] == r[1]["latent"]["z"]
    # reference features: 300 images through the extractor once; the other process loaded the cached file
    assert sorted(x["reference"]["extracted"] for x in r) == [0, 300]
    assert sorted(x["reference"]["from_cache"] for x in r) == [False, True]
    assert r[0]["reference"]["sum"] == r[1]["reference"]["sum"]
    # classifier: trained once, both load the same verified file
    assert sorted(x["classifier"]["trained"] for x in r) == [0, 1]
    assert r[0]["classifier"]["sha256"] == r[1]["classifier"]["sha256"]
    # the one that did not build got there while the other held the lock: it waited, then reused
    for what in ("latent cache", "reference features", "domain classifier"):
        waited = [x for x in r if any(what in line and "meanwhile" in line for line in x["log"])]
        assert len(waited) == 1, (what, [x["log"] for x in r])

    # what is on disk is one complete, verified copy of each, and no lock or temporary files
    latent_dirs = sorted(p.name for p in (cache / "latents").iterdir())
    assert len(latent_dirs) == 1 and latent_dirs[0].startswith("mnist-train-"), latent_dirs
    ref_files = sorted(p.name for p in (cache / "reference").iterdir())
    assert len(ref_files) == 2 and ref_files[1] == ref_files[0] + ".sha256", ref_files
    assert checksum_problem(cache / "reference" / ref_files[0]) is None
    classifier_files = sorted(p.name for p in (cache / "classifiers").iterdir())
    assert classifier_files == ["mnist.safetensors", "mnist.safetensors.sha256"]
    assert checksum_problem(cache / "classifiers" / "mnist.safetensors") is None
    torch.manual_seed(0)  # the workers' autoencoder and images: the cache verifies (sizes and sha256)
    ae = kl_autoencoder(in_channels=1, ch=8, norm_groups=4, mid_attention=False).eval()
    images = ImageDataModule(name="mnist", data_dir=str(data_dir), image_size=32, batch_size=16, val_size=32,
                             train_subset=200)  # fmt: skip
    dm = LatentCacheDataModule(images, ae, cache_dir=cache / "latents", progress=False, sample=False)
    assert dm.cache_folder("train").name == latent_dirs[0]
    assert dm._problem(dm.cache_folder("train"), dm.cache_key("train")) is None
