"""OmegaConf resolvers used by the configs (registered once by the entry points)."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from omegaconf import ListConfig, OmegaConf

from diffusionlab.utils.hardware import fast_precision


def wandb_offline() -> bool:
    """True unless the user is logged in to W&B (API key in the environment or ~/.netrc) or forces
    ``WANDB_MODE=online``: with no account, runs are logged offline into the run folder."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "disabled", "dryrun"):
        return True
    if mode == "online" or os.environ.get("WANDB_API_KEY"):
        return False
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return True


WANDB_TAG_MAX = 64  # W&B rejects longer tags
_UNTAGGED_PREFIXES = ("paths.", "hydra.", "+hydra.", "~hydra.", "ckpt_path=")


def sweep_tags(tags, overrides) -> ListConfig:
    """W&B tags of one sweep job: the run's ``tags`` followed by its Hydra overrides (``key=value``, from
    ``${hydra:overrides.task}``), so runs of a group can be told apart and filtered by their settings.
    Machine-specific overrides (``paths.*``, ``hydra.*``, ``ckpt_path``) are left out, each tag is cut to
    W&B's 64 characters, duplicates are dropped (first kept)."""
    out: list[str] = []
    for item in [*(tags or []), *(overrides or [])]:
        tag = str(item)
        if tag.startswith(_UNTAGGED_PREFIXES):
            continue
        tag = tag[:WANDB_TAG_MAX]
        if tag and tag not in out:
            out.append(tag)
    return ListConfig(out)  # a container, so OmegaConf.resolve (--resolve, saved run configs) accepts it


def run_dir(ckpt_path: str | None, runs_root: str, new_dir: str) -> str:
    """``hydra.run.dir``: the folder of the run that ``ckpt_path`` resumes (``last``, a run folder or a
    ``.ckpt`` in it), so a resumed session logs into that run's ``train.log`` instead of leaving a stray new
    folder; ``new_dir`` for a new run. A ``ckpt_path`` that does not resolve also gives ``new_dir``: the
    training task then reports it with a clear message."""
    from diffusionlab.cli.runs import resolve_resume_path

    try:
        resumed = resolve_resume_path(ckpt_path, runs_root)
    except (OSError, ValueError):
        return new_dir
    return new_dir if resumed is None else str(Path(resumed).resolve().parent.parent)


def hydra_subdir(ckpt_path: str | None, stamp: str) -> str:
    """``hydra.output_subdir``: ``.hydra`` for a new run; ``.hydra/resumed_<stamp>`` for a resumed one, so the
    run's original config and overrides stay as they were and every resume keeps its own."""
    return ".hydra" if ckpt_path in (None, "", "null") else f".hydra/resumed_{stamp}"


def conditional_classes(conditional, num_classes):
    """``num_classes`` of the network: the dataset's ``num_classes`` for a class-conditional model, None (an
    unconditional network) when ``conditional`` is false. Used by the model configs as
    ``${conditional_classes:${data.conditional},${data.num_classes}}``."""
    if not isinstance(conditional, bool):
        raise ValueError(f"data.conditional must be true or false, got {conditional!r}")
    return num_classes if conditional else None


def trainer_precision(accelerator: str = "cpu") -> str:
    """``trainer.precision: ${fast_precision:${trainer.accelerator}}``: ``bf16-mixed`` where the accelerator
    (``cpu``, ``gpu``/``cuda``; ``auto`` means CUDA if there is one) has native bf16, else ``32-true``: emulated
    bf16 on a CPU without it is about half as fast as float32 (:mod:`diffusionlab.utils.hardware`)."""
    from diffusionlab.cli.sample import pick_device  # resolved once per config: keep it off the import path

    kind = "cuda" if str(accelerator) == "gpu" else str(accelerator)
    device = pick_device(kind) if kind in ("auto", "cuda") else "cpu"
    return fast_precision(device, float32_name="32-true")


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("fast_precision"):
        OmegaConf.register_new_resolver("fast_precision", trainer_precision)
    if not OmegaConf.has_resolver("wandb_offline"):
        OmegaConf.register_new_resolver("wandb_offline", wandb_offline)
    if not OmegaConf.has_resolver("sweep_tags"):
        OmegaConf.register_new_resolver("sweep_tags", sweep_tags)
    if not OmegaConf.has_resolver("run_dir"):
        OmegaConf.register_new_resolver("run_dir", run_dir)
    if not OmegaConf.has_resolver("hydra_subdir"):
        OmegaConf.register_new_resolver("hydra_subdir", hydra_subdir)
    if not OmegaConf.has_resolver("conditional_classes"):
        OmegaConf.register_new_resolver("conditional_classes", conditional_classes)
