"""OmegaConf resolvers used by the configs (registered once by the entry points)."""

from __future__ import annotations

import netrc
import os

from omegaconf import ListConfig, OmegaConf


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


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("wandb_offline"):
        OmegaConf.register_new_resolver("wandb_offline", wandb_offline)
    if not OmegaConf.has_resolver("sweep_tags"):
        OmegaConf.register_new_resolver("sweep_tags", sweep_tags)
