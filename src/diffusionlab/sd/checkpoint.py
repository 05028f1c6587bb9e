"""Reading SD weights: original single files (``.ckpt`` / ``.safetensors``) and diffusers folders.

- ``.safetensors`` is memory-mapped (``safe_open``): each tensor is read when it is placed into the
  module, which was built on the meta device, so the weights are never held twice.
- ``.ckpt`` / ``.pt`` / ``.bin`` go through ``torch.load(weights_only=True)`` (memory-mapped when the file
  is in torch's zip format): a pickle that would build arbitrary Python objects is refused.
- Keys are renamed with the patterns of ``key_map``; missing, unexpected or mis-shaped keys stop the load
  with a :class:`CheckpointError` that lists them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import struct
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from diffusionlab.nets.vae import AutoencoderKL
from diffusionlab.sd import config as C
from diffusionlab.sd.clip import CLIPTextEncoder
from diffusionlab.sd.convert import apply_transform, compvis_ema_key, plan_keys, split_compvis_keys
from diffusionlab.sd.key_map import COMPVIS_PREFIX, module_map
from diffusionlab.sd.unet import UNet

BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "unet": UNet,
    "vae": AutoencoderKL,
    "text_encoder": CLIPTextEncoder,
}
_LIST_AT_MOST = 20
EMA_UNET_PREFIX = compvis_ema_key(COMPVIS_PREFIX["unet"])  # "model_ema.diffusion_model"


class CheckpointError(ValueError):
    """A file that is not a usable SD checkpoint; ``missing`` / ``unexpected`` hold the full key lists."""

    def __init__(self, message: str, missing=(), unexpected=(), mismatched=()):
        super().__init__(message)
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)


# ------------------------------------------------------------------------------------ lazy state dicts
class LazyStateDict(Mapping):
    """Read-only ``{key: Tensor}`` whose tensors are read from the file only when asked for."""

    def __init__(self, keys, get: Callable[[str], Tensor], shape: Callable[[str], tuple], closer=None):
        self._keys, self._get, self._shape, self._closer = list(keys), get, shape, closer
        self._key_set = set(self._keys)

    def __contains__(self, key) -> bool:
        return key in self._key_set

    def __getitem__(self, key: str) -> Tensor:
        return self._get(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._shape(key))

    def close(self) -> None:
        if self._closer is not None:
            self._closer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _sniff(path: Path) -> str:
    """``safetensors``, ``torch_zip`` or ``pickle`` from the first bytes; CheckpointError otherwise."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        if not zipfile.is_zipfile(path):
            raise CheckpointError(f"{str(path)!r} is a truncated or corrupt torch checkpoint (broken zip archive)")
        return "torch_zip"
    if head[:1] == b"\x80":
        return "pickle"
    if len(head) == 9 and head[8:9] == b"{":
        (n,) = struct.unpack("<Q", head[:8])
        if n > size - 8:
            raise CheckpointError(
                f"{str(path)!r} is a truncated safetensors file: its header says {n} bytes, "
                f"the file has {size - 8} after the length field"
            )
        return "safetensors"
    raise CheckpointError(
        f"{str(path)!r} is not a checkpoint: expected a .safetensors file or a torch .ckpt/.pt/.bin "
        f"(zip or pickle), found {size} bytes starting with {head[:8]!r}"
    )


def _open_safetensors(path: Path) -> LazyStateDict:
    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
        keys = list(handle.keys())
    except SafetensorError as err:
        raise CheckpointError(f"{str(path)!r} is a truncated or corrupt safetensors file: {err}") from None
    return LazyStateDict(keys, handle.get_tensor, lambda k: handle.get_slice(k).get_shape(), None)


def _torch_load(path: Path, kind: str) -> Mapping:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=kind == "torch_zip")
    except pickle.UnpicklingError as err:
        detail = str(err).strip().splitlines()
        reason = next((line for line in detail if "GLOBAL" in line or "Unsupported" in line), detail[-1])
        raise CheckpointError(
            f"refusing to load {str(path)!r}: it holds Python objects other than tensors, and unpickling "
            f"them could run arbitrary code ({reason.strip()}). Use a .safetensors file, or re-save the "
            "weights from a source you trust"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise CheckpointError(
            f"{str(path)!r} is not a readable torch checkpoint (truncated, corrupt, or another kind of file): {err}"
        ) from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{str(path)!r} holds no state dict: expected {{name: tensor}} or {{'state_dict': {{...}}}}"
        )
    return obj


def open_state_dict(path: str | os.PathLike) -> LazyStateDict:
    """Open a ``.safetensors``/``.ckpt``/``.pt``/``.bin`` weight file as a :class:`LazyStateDict`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.is_dir():
        raise CheckpointError(f"{str(path)!r} is a folder; load a diffusers folder with StableDiffusion.from_diffusers")
    kind = _sniff(path)
    if kind == "safetensors":
        return _open_safetensors(path)
    sd = _torch_load(path, kind)
    return LazyStateDict(sd.keys(), sd.__getitem__, lambda k: sd[k].shape)


# ------------------------------------------------------------------------------------ loading modules
def _summary(name: str, keys: list[str]) -> str:
    more = f" (+{len(keys) - _LIST_AT_MOST} more)" if len(keys) > _LIST_AT_MOST else ""
    return f"{len(keys)} {name}: {', '.join(keys[:_LIST_AT_MOST])}{more}"


def _shape(source: Mapping, key: str) -> tuple[int, ...]:
    return source.shape(key) if isinstance(source, LazyStateDict) else tuple(source[key].shape)


def build_meta(component: str, cfg) -> nn.Module:
    """The component's module with parameters on the meta device (no memory, no init)."""
    with torch.device("meta"):
        return BUILDERS[component](cfg)


def load_component(
    component: str,
    cfg,
    source: Mapping[str, Tensor] | LazyStateDict,
    keys: dict[str, str],
    layout: str,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    where: str = "checkpoint",
    prefix: str = "",
) -> nn.Module:
    """Build ``component`` from ``cfg`` and fill it from ``source``.

    ``keys`` maps the component's keys in ``layout`` (no checkpoint prefix) to the key to read in
    ``source``. Raises :class:`CheckpointError` listing missing (named in ``layout``, after ``prefix``),
    unexpected and mis-shaped keys.
    """
    module = build_meta(component, cfg)
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    plan, unexpected = plan_keys(keys, component, cfg, layout, "ours")
    unexpected = [keys[k] for k in unexpected]
    placed = {dst: src for src, (dst, _) in plan.items()}
    back = module_map(component, cfg, "ours", layout)
    missing = [k.rpartition(".") for k in sorted(set(expected) - set(placed))]
    missing = [f"{prefix}{back[path][0]}.{param}" for path, _, param in missing]
    unexpected += sorted(keys[src] for src, (dst, _) in plan.items() if dst not in expected)
    mismatched = []
    for src, (dst, transform) in plan.items():
        if dst in expected:
            shape = _shape(source, keys[src])
            if transform == "conv1x1" and len(shape) == 4:
                shape = shape[:2]
            if tuple(shape) != expected[dst]:
                mismatched.append(f"{keys[src]} {list(shape)} (model expects {list(expected[dst])})")
    if missing or unexpected or mismatched:
        parts = [_summary(n, v) for n, v in (("missing", missing), ("unexpected", unexpected)) if v]
        if mismatched:
            parts.append(_summary("with another shape", mismatched))
        raise CheckpointError(
            f"{where} does not fit the {component} architecture {cfg}: "
            + "; ".join(parts)
            + ". Is it a checkpoint of another model (pass the matching config), or damaged?",
            missing,
            unexpected,
            mismatched,
        )
    state = {}
    for src, (dst, transform) in plan.items():
        state[dst] = apply_transform(source[keys[src]], transform, "ours").to(device=device, dtype=dtype)
    module.load_state_dict(state, strict=True, assign=True)
    return module.eval().requires_grad_(False)


def load_single_file(
    path: str | os.PathLike,
    config: C.SDConfig | str | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    use_ema: bool = True,
) -> tuple[C.SDConfig, dict[str, nn.Module]]:
    """Load an original-layout checkpoint file: ``(config, {"unet", "vae", "text_encoder"})``.

    ``config`` is an :class:`SDConfig`, or a preset name (None = ``"sd15"``) whose UNet input channels
    are read from the weights (4, or 9 for an inpainting checkpoint). With ``use_ema`` and a full
    checkpoint holding ``model_ema.*``, the UNet gets the EMA weights.
    """
    with open_state_dict(path) as source:
        return load_compvis(source, config, dtype=dtype, device=device, use_ema=use_ema, where=repr(str(path)))


def load_compvis(
    source: Mapping[str, Tensor],
    config: C.SDConfig | str | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    use_ema: bool = True,
    where: str = "checkpoint",
) -> tuple[C.SDConfig, dict[str, nn.Module]]:
    """:func:`load_single_file` on an already opened ``{key: tensor}`` mapping in the original layout."""
    if not isinstance(config, C.SDConfig):  # a preset (SD 1.5 by default): UNet inputs read from the weights
        config = C.preset(config or "sd15")
        key0 = COMPVIS_PREFIX["unet"] + "input_blocks.0.0.weight"
        if key0 in source:
            unet = dataclasses.replace(config.unet, in_channels=int(_shape(source, key0)[1]))
            config = config.replace(unet=unet)
    parts, unexpected = split_compvis_keys(source.keys())
    if unexpected or not any(parts.values()):
        raise CheckpointError(
            f"{where} is not an SD 1.x checkpoint: "
            + (_summary("unexpected keys", unexpected) if unexpected else "it holds none of the keys")
            + f" (SD 1.x keys start with {', '.join(COMPVIS_PREFIX.values())})",
            unexpected=unexpected,
        )
    modules = {}
    for component, full_keys in parts.items():
        prefix = COMPVIS_PREFIX[component]
        keys = {k[len(prefix) :]: k for k in full_keys}
        if component == "unet" and use_ema and any(k.startswith(EMA_UNET_PREFIX) for k in source):
            ema = {k: compvis_ema_key(v) for k, v in keys.items()}
            absent = [v for v in ema.values() if v not in source]
            if absent:
                raise CheckpointError(
                    f"{where} holds EMA weights but not for every UNet key: "
                    + _summary("without EMA copy", absent)
                    + "; load with use_ema=False"
                )
            keys = ema
        cfg = getattr(config, component)
        modules[component] = load_component(
            component, cfg, source, keys, "compvis", dtype, device, where, prefix=COMPVIS_PREFIX[component]
        )
    return config, modules


# ------------------------------------------------------------------------------------ diffusers folders
_WEIGHT_NAMES = {
    "unet": ("diffusion_pytorch_model", "model"),
    "vae": ("diffusion_pytorch_model", "model"),
    "text_encoder": ("model", "pytorch_model"),
}
_CONFIG_READERS = {
    "unet": C.unet_from_diffusers,
    "vae": C.vae_from_diffusers,
    "text_encoder": C.text_encoder_from_transformers,
}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"diffusers folder is missing {str(path)!r}") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{str(path)!r} is not valid JSON: {err}") from None


def _component_weights(folder: Path, component: str, stack: ExitStack) -> Mapping[str, Tensor]:
    """All weights of one diffusers component folder (single file, fp16 variant, or sharded index)."""
    sub = folder / component
    for base in _WEIGHT_NAMES[component]:
        for variant in ("", ".fp16"):
            for ext in ("safetensors", "bin"):
                index = sub / f"{base}{variant}.{ext}.index.json"
                if index.exists():
                    weight_map = _read_json(index)["weight_map"]
                    shards = {
                        name: stack.enter_context(open_state_dict(sub / name)) for name in set(weight_map.values())
                    }
                    return LazyStateDict(
                        weight_map,
                        lambda k, m=weight_map, s=shards: s[m[k]][k],
                        lambda k, m=weight_map, s=shards: s[m[k]].shape(k),
                    )
                file = sub / f"{base}{variant}.{ext}"
                if file.exists():
                    return stack.enter_context(open_state_dict(file))
    raise CheckpointError(
        f"no weights in {str(sub)!r}: expected {_WEIGHT_NAMES[component][0]}.safetensors (or .bin, "
        ".fp16 variants, or a sharded .index.json)"
    )


def load_diffusers(
    folder: str | os.PathLike, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[C.SDConfig, dict[str, nn.Module], Path | None]:
    """Load a diffusers-format SD 1.x folder: ``(config, modules, tokenizer_folder or None)``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{str(folder)!r} is not a diffusers folder (expected unet/, vae/, text_encoder/)")
    configs = {c: read(_read_json(folder / c / "config.json")) for c, read in _CONFIG_READERS.items()}
    sched_file = folder / "scheduler" / "scheduler_config.json"
    schedule = C.schedule_from_diffusers(_read_json(sched_file)) if sched_file.exists() else C.ScheduleConfig()
    config = C.SDConfig(schedule=schedule, **configs)
    modules = {}
    with ExitStack() as stack:
        for component, cfg in configs.items():
            source = _component_weights(folder, component, stack)
            keys = {k: k for k in source}
            where = repr(str(folder / component))
            modules[component] = load_component(component, cfg, source, keys, "diffusers", dtype, device, where)
    tok = folder / "tokenizer"
    return config, modules, tok if (tok / "vocab.json").exists() and (tok / "merges.txt").exists() else None
