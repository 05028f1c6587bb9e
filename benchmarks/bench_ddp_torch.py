"""DDP in plain PyTorch, without Lightning: how much of ``bench_ddp.py``'s DDP cost is DDP's own.

    python benchmarks/bench_ddp_torch.py [--model unet_small_28] [--batch 64] [--bucket-mb 1] [--rounds 2]

Two gloo processes, one thread each, run ``bench_unet.py``'s training step (forward + MSE + backward + fused
AdamW, bf16 autocast, channels-last) on ``--batch`` images per process: once wrapped in
``DistributedDataParallel`` (``bucket_cap_mb=--bucket-mb``, as ``trainer=ddp_cpu``) and once unwrapped, the
two processes then independent. Printed: each mode's median step time (the slower rank) per round, and
``independent / DDP``: DDP's own efficiency (1.0 = free). ``--rounds`` alternates the two modes.
"""

from __future__ import annotations

from diffusionlab.utils.allocator import tune_cpu_allocator

tune_cpu_allocator()  # before torch is imported; the same for every peer timed here

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))


def rank_main(rank: int, args: argparse.Namespace, use_ddp: bool, port: int, results) -> None:
    from bench_unet import make_train_step, setup

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    spec = dict(
        model=args.model, impl="ours", precision="bf16", channels_last=True, compile=False, batch=args.batch, threads=1
    )
    net, _, _, (x, t, y) = setup(spec)
    model = torch.nn.parallel.DistributedDataParallel(net, bucket_cap_mb=args.bucket_mb) if use_ddp else net
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
    step = make_train_step(model, opt, (x, t, y), torch.randn_like(x), bf16=True)

    for _ in range(3):
        step()
    dist.barrier()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    results[rank] = statistics.median(times)
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="unet_small_28", choices=["unet_small", "unet_small_28"])
    p.add_argument("--batch", type=int, default=64, help="images per process")
    p.add_argument("--bucket-mb", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=10, help="timed steps (after 3 warm-up steps)")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    print(f"plain torch DDP, 2 gloo processes x 1 thread, {args.model}, batch {args.batch} per process, bf16")
    best = {"ddp": float("inf"), "independent": float("inf")}
    for r in range(args.rounds):
        for mode in ("ddp", "independent"):
            with mp.Manager() as manager:
                results = manager.dict()
                mp.spawn(rank_main, args=(args, mode == "ddp", 29500 + 2 * r + (mode == "ddp"), results), nprocs=2)
                step = max(results.values())
            best[mode] = min(best[mode], step)
            print(f"  round {r + 1} {mode:<12} median step {step:.3f} s")
    print(f"DDP's own efficiency (independent / DDP, best rounds): {best['independent'] / best['ddp']:.2f}")


if __name__ == "__main__":
    main()
