"""OmegaConf resolvers used by the configs (registered once by the entry points)."""

from __future__ import annotations

import netrc
import os

from omegaconf import OmegaConf


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


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("wandb_offline"):
        OmegaConf.register_new_resolver("wandb_offline", wandb_offline)
