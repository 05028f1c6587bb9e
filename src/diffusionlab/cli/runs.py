"""Run folders on disk: find a run's checkpoint, rebuild its network and diffusion, load EMA weights.

A run folder ``<run>/`` holds ``checkpoints/{last.ckpt, ema.safetensors, config.yaml}``. Any of these
(or the run folder itself, or its ``checkpoints/``) identifies the run.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from safetensors import SafetensorError
from safetensors.torch import load_file

from diffusionlab.nets.autoencoder import AUTOENCODER_FILENAME, decode_latents, load_autoencoder
from diffusionlab.utils.checkpoints import CheckpointError, check_state_dict_keys
from diffusionlab.utils.io import atomic_write_text

CONFIG_FILENAME = "config.yaml"
EMA_FILENAME = "ema.safetensors"
LAST_FILENAME = "last.ckpt"


def checkpoint_dir(path: str | Path) -> Path:
    """The ``checkpoints/`` folder of a run given the run folder, that folder, or a file inside it."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"checkpoint path {str(p)!r} does not exist")
    if p.is_file():
        p = p.parent
    if (p / "checkpoints").is_dir():
        p = p / "checkpoints"
    if not (p / CONFIG_FILENAME).is_file():
        raise FileNotFoundError(
            f"no {CONFIG_FILENAME} in {str(p)!r}: give a run folder written by train.py "
            f"(it has checkpoints/{CONFIG_FILENAME}, {EMA_FILENAME}, {LAST_FILENAME})"
        )
    return p


def newest_run_checkpoint(runs_root: str | Path) -> Path:
    """``last.ckpt`` of the most recently modified run under ``runs_root`` (for ``ckpt_path=last``)."""
    found = sorted(Path(runs_root).glob(f"**/checkpoints/{LAST_FILENAME}"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"ckpt_path=last: no run with checkpoints/{LAST_FILENAME} under {str(runs_root)!r}")
    return found[-1]


def resolve_resume_path(ckpt_path: str | None, runs_root: str | Path) -> str | None:
    """Turn ``ckpt_path`` (None, ``last``, a run folder or a ``.ckpt`` file) into a ``.ckpt`` path."""
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "last":
        return str(newest_run_checkpoint(runs_root))
    p = Path(ckpt_path).expanduser()
    if p.is_dir():
        p = checkpoint_dir(p) / LAST_FILENAME
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {str(p)!r} does not exist (ckpt_path={ckpt_path!r})")
    return str(p)


def save_run_config(cfg: DictConfig, ckpt_dir: str | Path) -> Path:
    """Write the resolved config beside the checkpoints (what sample.py / evaluate.py rebuild from)."""
    path = Path(ckpt_dir) / CONFIG_FILENAME
    atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))
    return path


def load_run_config(path: str | Path) -> DictConfig:
    return OmegaConf.load(checkpoint_dir(path) / CONFIG_FILENAME)


@dataclass
class LoadedRun:
    """A trained model ready to sample: EMA network (eval mode), its diffusion, the run's config."""

    net: torch.nn.Module
    diffusion: object
    cfg: DictConfig
    ckpt_dir: Path
    global_step: int
    decode: object = None  # latent models: latents -> images in [-1, 1]
    sample_shape: tuple[int, int, int] | None = None
    autoencoder: torch.nn.Module | None = None  # latent models: the frozen autoencoder behind ``decode``


def load_ema_state(ckpt_dir: Path) -> tuple[dict, int]:
    path = ckpt_dir / EMA_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist: the run has not saved EMA weights yet")
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            step = int((f.metadata() or {}).get("global_step", -1))
        return load_file(str(path)), step
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{str(path)!r} is not a readable safetensors file (truncated?): {err}") from None


def load_run(path: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild the network of a run from its config and load its EMA weights (strict, clear errors)."""
    ckpt_dir = checkpoint_dir(path)
    cfg = load_run_config(ckpt_dir)
    net = instantiate(cfg.model)
    diffusion = instantiate(cfg.diffusion)
    state, step = load_ema_state(ckpt_dir)
    check_state_dict_keys(set(net.state_dict()), set(state), f"{ckpt_dir / EMA_FILENAME}")
    try:
        net.load_state_dict(state)
    except RuntimeError as err:  # same keys, other shapes
        raise CheckpointError(f"{ckpt_dir / EMA_FILENAME} does not fit the network: {err}") from None
    net.to(device).eval()
    shape = (net.in_channels, net.image_size, net.image_size)
    run = LoadedRun(net=net, diffusion=diffusion, cfg=cfg, ckpt_dir=ckpt_dir, global_step=step, sample_shape=shape)
    if cfg.get("autoencoder") is not None:  # latent model: samples are decoded by the run's autoencoder
        run.autoencoder = _load_run_autoencoder(ckpt_dir, cfg).to(device)
        run.decode = functools.partial(decode_latents, run.autoencoder)
    return run


def _load_run_autoencoder(ckpt_dir: Path, cfg: DictConfig) -> torch.nn.Module:
    """The copy a latent run saved beside its checkpoints, else the one its config names."""
    copy = ckpt_dir / AUTOENCODER_FILENAME
    return load_autoencoder(copy) if copy.is_file() else instantiate(cfg.autoencoder)
