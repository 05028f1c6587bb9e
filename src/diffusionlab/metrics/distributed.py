"""The few collective operations the metrics need in DDP (no-ops in a single process)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def gather_cat(t: Tensor | None) -> Tensor | None:
    """Concatenate every rank's ``[N_r, ...]`` tensor along dim 0, in rank order (N_r may differ); on the CPU.

    Every rank gets the full result. ``None`` stays ``None`` (all ranks must agree on that).
    """
    if t is None or not is_distributed():
        return t
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = t.contiguous().to(device)
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([t.shape[0]], device=device))
    sizes = [int(s) for s in sizes]
    padded = torch.zeros((max(sizes), *t.shape[1:]), dtype=t.dtype, device=device)
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)]).cpu()
