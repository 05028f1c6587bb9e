"""Rename state dicts between the ``ours``, ``compvis`` and ``diffusers`` layouts (see ``key_map``).

Renaming works on key names first (``plan_keys``) so a loader can fetch each tensor from a
memory-mapped file only when it is placed; ``convert_state_dict`` does the whole thing at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import Tensor

from diffusionlab.sd.key_map import (
    COMPONENTS,
    COMPVIS_EMA_PREFIX,
    COMPVIS_IGNORED_KEYS,
    COMPVIS_IGNORED_PREFIXES,
    COMPVIS_PREFIX,
    IGNORED_COMPONENT_KEYS,
    module_map,
)


def plan_keys(
    keys: Iterable[str], component: str, cfg, src: str, dst: str
) -> tuple[dict[str, tuple[str, str | None]], list[str]]:
    """Map each key of ``component`` (without any checkpoint-level prefix) from ``src`` to ``dst``.

    Returns ``({src_key: (dst_key, transform)}, unexpected_keys)``; keys the layout knows to hold no
    weights (e.g. CLIP's ``position_ids`` buffer) are dropped silently.
    """
    modules = module_map(component, cfg, src, dst)
    ignored = IGNORED_COMPONENT_KEYS.get(component, frozenset())
    plan, unexpected = {}, []
    for key in keys:
        if key in ignored:
            continue
        path, _, param = key.rpartition(".")
        if path in modules:
            new_path, transform = modules[path]
            plan[key] = (f"{new_path}.{param}", transform)
        else:
            unexpected.append(key)
    return plan, unexpected


def apply_transform(tensor: Tensor, transform: str | None, dst: str) -> Tensor:
    """Reshape a weight between a 1x1 conv (CompVis) and a linear layer when ``transform`` says so."""
    if transform != "conv1x1" or tensor.ndim == 1:
        return tensor
    if dst == "compvis":
        return tensor.reshape(*tensor.shape, 1, 1) if tensor.ndim == 2 else tensor
    return tensor.reshape(tensor.shape[:2]) if tensor.ndim == 4 else tensor


def convert_state_dict(
    state_dict: Mapping[str, Tensor], component: str, cfg, src: str, dst: str
) -> tuple[dict[str, Tensor], list[str]]:
    """Rename (and reshape where needed) a component's state dict; returns ``(new_dict, unexpected)``."""
    plan, unexpected = plan_keys(state_dict.keys(), component, cfg, src, dst)
    out = {new: apply_transform(state_dict[old], tr, dst) for old, (new, tr) in plan.items()}
    return out, unexpected


def split_compvis_keys(keys: Iterable[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Sort the keys of an original checkpoint by component: ``({component: [full keys]}, unexpected)``.

    Schedule buffers, EMA copies and other known non-weight keys are neither a component's nor unexpected.
    """
    parts: dict[str, list[str]] = {c: [] for c in COMPONENTS}
    unexpected = []
    for key in keys:
        for component, prefix in COMPVIS_PREFIX.items():
            if key.startswith(prefix):
                parts[component].append(key)
                break
        else:
            if key not in COMPVIS_IGNORED_KEYS and not key.startswith(COMPVIS_IGNORED_PREFIXES):
                unexpected.append(key)
    return parts, unexpected


def compvis_ema_key(unet_key: str) -> str:
    """Name of the EMA copy of ``model.diffusion_model.<name>`` in a full original checkpoint."""
    return COMPVIS_EMA_PREFIX + unet_key[len("model.") :].replace(".", "")


def to_compvis(state_dicts: Mapping[str, Mapping[str, Tensor]], cfg) -> dict[str, Tensor]:
    """Our per-component state dicts ``{"unet": ..., "vae": ..., "text_encoder": ...}`` (``cfg`` an
    ``SDConfig``) -> one original-layout state dict, as saved in ``v1-5-pruned-emaonly``."""
    out = {}
    for component, sd in state_dicts.items():
        converted, unexpected = convert_state_dict(sd, component, getattr(cfg, component), "ours", "compvis")
        if unexpected:
            raise ValueError(f"{component}: keys unknown to the {component} layout: {sorted(unexpected)[:20]}")
        prefix = COMPVIS_PREFIX[component]
        out.update({prefix + k: v for k, v in converted.items()})
    return out


def to_diffusers(component: str, state_dict: Mapping[str, Tensor], cfg) -> dict[str, Tensor]:
    """One of our component state dicts -> the diffusers/transformers layout of that component."""
    converted, unexpected = convert_state_dict(state_dict, component, cfg, "ours", "diffusers")
    if unexpected:
        raise ValueError(f"{component}: keys unknown to the {component} layout: {sorted(unexpected)[:20]}")
    return converted
