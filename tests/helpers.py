"""Test helpers: compose the real Hydra configs with overrides, run the real entry points."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from diffusionlab.cli.resolvers import register_resolvers

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = str(ROOT / "configs")

# A network small enough to train for a few hundred steps in a test (28x28, two levels, no attention).
TINY_UNET = [
    "model=unet_small",
    "model.base_channels=16",
    "model.channel_mult=[1,2]",
    "model.attention_resolutions=[]",
    "model.norm_groups=8",
    "data.image_size=28",
]


def compose_hydra_cfg(config_name: str, overrides: list[str]) -> DictConfig:
    """The composed config including its ``hydra`` node (launcher, sweeper), registered as the current one."""
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    return cfg


def compose_cfg(config_name: str, overrides: list[str], out_dir: Path) -> DictConfig:
    """The config an entry point would see, with its run folder set to ``out_dir``."""
    cfg = compose_hydra_cfg(config_name, overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
        cfg.paths.log_dir = str(out_dir.parent)
        del cfg.hydra
    return cfg


def train_overrides(data_dir: Path, *extra: str) -> list[str]:
    return [
        "debug=fast",
        f"paths.data_dir={data_dir}",
        "logger=csv",
        "data.val_size=128",
        "callbacks.sample_grid.per_class=2",
        "callbacks.sample_grid.steps=4",
        *TINY_UNET,
        *extra,
    ]


def run_script(script: str, *args: str, env: dict | None = None, timeout: int = 300):
    """Run ``python <script> args`` from the repository root; returns the CompletedProcess."""
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def user_error_output(fn, *args, capsys) -> str:
    """Call an entry-point task under :func:`exit_on_user_error`; assert it exits with the user-error code 2
    and without a traceback; return its stderr."""
    import pytest

    from diffusionlab.cli.errors import exit_on_user_error

    with pytest.raises(SystemExit) as e:
        exit_on_user_error(fn)(*args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    return err


def require_cpp_kernel(what: str, available, without: str) -> None:
    """Skip when this machine has no C++ compiler (``without``: what runs instead); where it has one, the kernel
    (``available()``, e.g. ``fused_group_norm.available``) must build."""
    import shutil

    import pytest

    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip(f"no C++ compiler: the {what} cannot be built here ({without})")
    assert available(), f"g++ exists but the {what} did not build (see the warning)"


def require_fused_group_norm() -> None:
    from diffusionlab.nets import fused_group_norm

    require_cpp_kernel("fused GroupNorm kernel", fused_group_norm.available, "the NCHW detour is used")


def require_winograd() -> None:
    from diffusionlab.metrics import winograd

    require_cpp_kernel("Winograd convolution kernel", winograd.available, "direct convolutions are used")


def run_without_compiler(code: str, tmp_path, **env: str):
    """``python -c code`` with no C++ compiler on PATH, an empty extensions folder and HOME in ``tmp_path``
    (plus ``env``): our kernels cannot build there. Returns the CompletedProcess (text output)."""
    import subprocess
    import sys

    base = {"PATH": str(tmp_path / "empty"), "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"), "HOME": str(tmp_path)}
    return subprocess.run(
        [sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True, timeout=300
    )
