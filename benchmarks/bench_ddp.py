"""Multi-process scaling on the CPU: the real training entry point with 1 process vs 2 DDP processes (gloo).

    python benchmarks/bench_ddp.py                    # default MNIST UNet, global batch 64, fp32
    python benchmarks/bench_ddp.py --precision bf16-mixed --batch 128 --steps 30 --rounds 3   # make bench

Four cells, the same global batch and model (``train.py debug=fast`` with the throughput callback):

* 1 process, 1 thread: the unit of work;
* 1 process, N threads: what you get without DDP on an N-core machine;
* N processes (``trainer=ddp_cpu``), 1 thread each, batch / N per process;
* N independent single-threaded runs side by side, batch / N each, no communication: what the machine itself
  gives N processes (shared memory bandwidth and caches, the smaller per-process batch).

Reported: median global images/s over the steps after the warm-up, scaling efficiency
``img/s(N processes) / (N x img/s(1 process, 1 thread))`` (1.0 = perfect) split into the machine's share
(independent / (N x 1 process)) and DDP's own (DDP / independent), and the speed-up of DDP over threads.

On a shared VM the same step moves by 10% within minutes, more than DDP costs, so a single pass over the
cells measures the load as much as the code. ``--rounds`` repeats the four cells, in reversed order every
other round, prints each round's ratios (cells of one round run within two minutes of each other) and their
median: the figure to quote.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def start_cell(processes: int, threads: int, args, out: Path, ddp: bool = True) -> tuple[subprocess.Popen, Path]:
    """Launch one ``train.py`` run (``processes`` DDP ranks when ``ddp``, else one process with batch / ``processes``)
    and return it with the path its throughput summary will be written to."""
    summary = out / "throughput.json"
    ranks = processes if ddp else 1
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "debug=fast",
        f"data.batch_size={args.batch // processes}",
        f"data.train_subset={args.batch * (args.steps + 4)}",
        f"trainer.max_steps={args.steps}",
        f"trainer.precision={args.precision}",
        "module.channels_last=true",
        "callbacks=none",
        "+callbacks@callbacks.throughput=throughput",
        f"callbacks.throughput.path={summary}",
        "callbacks.throughput.warmup=3",
        f"hydra.run.dir={out}",
        *(["trainer=ddp_cpu", f"trainer.devices={ranks}"] if ranks > 1 else ["trainer=cpu"]),
        *args.overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "DIFFUSIONLAB_DATA_DIR": str(args.data_dir)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return proc, summary


def finish(proc: subprocess.Popen, summary: Path, name: str, timeout: float) -> dict:
    _, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0 or not summary.is_file():
        raise RuntimeError(f"cell {name!r} failed:\n{err[-2000:]}")
    return json.loads(summary.read_text())


def run_cell(processes: int, threads: int, args, workdir: Path) -> dict:
    """One run: 1 process (``processes`` = 1) or ``processes`` DDP ranks, ``threads`` threads each."""
    name = f"p{processes}_t{threads}"
    return finish(*start_cell(processes, threads, args, workdir / name), name, args.timeout)


def run_independent(processes: int, args, workdir: Path) -> dict:
    """``processes`` single-threaded runs side by side, each with batch / ``processes`` and no communication:
    what the machine gives N processes before DDP adds anything. Returns their summed images/s."""
    started = [start_cell(processes, 1, args, workdir / f"independent_{i}", ddp=False) for i in range(processes)]
    results = [finish(p, s, f"independent {i}", args.timeout) for i, (p, s) in enumerate(started)]
    return {
        "images_per_s": sum(r["images_per_s"] for r in results),
        "median_step_s": max(r["median_step_s"] for r in results),
        "steps": results[0]["steps"],
    }


def ratios(cells: dict[str, dict], n: int) -> dict[str, float]:
    """Scaling efficiency and its two factors from one round's four cells (in ``main``'s order)."""
    base, threaded, ddp, independent = (c["images_per_s"] for c in cells.values())
    return {
        "scaling": ddp / (n * base),
        "machine": independent / (n * base),
        "ddp": ddp / independent,
        "vs_threads": ddp / threaded,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64, help="global batch")
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=1, help="passes over the four cells, alternating their order")
    ap.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("DIFFUSIONLAB_DATA_DIR", ROOT / "data")))
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("overrides", nargs="*", help="extra train.py overrides, e.g. model=context_unet")
    args = ap.parse_args()
    n = args.processes
    if args.batch % n:
        ap.error(f"--batch {args.batch} must be divisible by --processes {n}")
    if args.rounds < 1:
        ap.error(f"--rounds must be >= 1, got {args.rounds}")
    runners = {
        "1 process x 1 thread": lambda d: run_cell(1, 1, args, d),
        f"1 process x {n} threads": lambda d: run_cell(1, n, args, d),
        f"{n} processes x 1 thread (DDP gloo)": lambda d: run_cell(n, 1, args, d),
        f"{n} independent processes x 1 thread": lambda d: run_independent(n, args, d),
    }
    rounds: list[dict[str, dict]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = list(runners) if r % 2 == 0 else list(reversed(runners))
            done = {name: runners[name](Path(tmp) / f"round{r}") for name in order}
            rounds.append({name: done[name] for name in runners})
    per_round = [ratios(cells, n) for cells in rounds]
    timed = rounds[0][next(iter(runners))]["steps"]
    from diffusionlab.utils import hardware

    print(
        f"\nglobal batch {args.batch}, {args.precision}, {args.steps} steps ({timed} timed), {args.rounds} round(s); "
        f"{hardware.describe_cpu()}"
    )
    print(f"{'cell':40s} {'img/s':>8s} {'step s':>8s}   (median over rounds)")
    for name in runners:
        img_s = statistics.median(cells[name]["images_per_s"] for cells in rounds)
        step_s = statistics.median(cells[name]["median_step_s"] for cells in rounds)
        print(f"{name:40s} {img_s:8.1f} {step_s:8.3f}")
    if args.rounds > 1:
        for r, q in enumerate(per_round):
            print(f"round {r + 1}: scaling {q['scaling']:.2f} = machine {q['machine']:.2f} x DDP itself {q['ddp']:.2f}")
    med = {key: statistics.median(q[key] for q in per_round) for key in per_round[0]}
    print(f"scaling efficiency of {n} processes: {med['scaling']:.2f} (1.00 = linear; median of the rounds' ratios)")
    print(
        f"  of which the machine: {med['machine']:.2f} ({n} runs of batch {args.batch // n} side by side, "
        f"no communication), DDP itself: {med['ddp']:.2f}"
    )
    print(f"DDP vs {n} threads in one process: {med['vs_threads']:.2f}x")


if __name__ == "__main__":
    main()
