"""Shared fixtures: real MNIST / Fashion-MNIST from ../shared/datasets, linked into a writable folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DIFFUSIONLAB_SHARED", ROOT.parent / "shared"))

# `make test` runs the suite in 2 pytest-xdist workers (one per core of the 2-core CI machine): each worker then
# computes with one thread, and so do the scripts it starts, or 4 spinning OpenMP threads would share 2 cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
else:
    torch.set_num_threads(min(2, os.cpu_count() or 1))


def _link_dataset(src_root: Path, dst_root: Path, name: str) -> None:
    src, dst = src_root / name / "raw", dst_root / name / "raw"
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.glob("*.gz"):
        if not (dst / f.name).exists():
            os.symlink(f.resolve(), dst / f.name)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A writable data folder in torchvision's layout whose .gz files link to ../shared/datasets."""
    src = SHARED / "datasets"
    if not (src / "MNIST" / "raw").is_dir():
        pytest.fail(f"real MNIST not found under {src}: put ../shared beside the checkout (or set DIFFUSIONLAB_SHARED)")
    root = tmp_path_factory.mktemp("data")
    for name in ("MNIST", "FashionMNIST"):
        _link_dataset(src, root, name)
    return root


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread avoids OpenMP spin contention that otherwise
    makes each tiny op take tens of milliseconds. Per module: ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return SHARED


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, data_dir) -> Path:
    """A run folder from 6 real training steps of a tiny UNet on MNIST (checkpoints, EMA, config, grid)."""
    from diffusionlab.cli.train import train
    from tests.helpers import compose_cfg, train_overrides

    out = tmp_path_factory.mktemp("runs") / "run1"
    train(compose_cfg("train.yaml", train_overrides(data_dir, "trainer.max_steps=6"), out))
    return out
