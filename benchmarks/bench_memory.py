"""Peak memory of sample.py and evaluate.py against n: it must not grow with the number of samples.

    python benchmarks/bench_memory.py                    # n = 1,000 and 10,000 (a few minutes on 2 cores)
    python benchmarks/bench_memory.py --n 200 1000       # a quick check
    python benchmarks/bench_memory.py --json bench_memory.json

A tiny random-weight UNet stands in for a trained run (1 DDIM step) and a tiny TorchScript network for the
FID Inception (same code path: 299x299 resize, pool features), so the numbers measure the pipeline, not the
networks. Each command runs in its own process; its peak RSS comes from ``wait4``. ``sample.py`` writes every
sample as a PNG (``save_individual=true``); ``evaluate.py`` scores them against the MNIST test split. What may
grow with n is only the feature arrays (n x 64 float32 here, samples and reference: 0.5 KB per image).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = os.environ.get("DIFFUSIONLAB_DATA_DIR", str(ROOT.parent / "shared" / "datasets"))
TINY_NET = [
    "model=unet_small",
    "model.base_channels=8",
    "model.channel_mult=[1,2]",
    "model.attention_resolutions=[]",
    "model.norm_groups=4",
    "data.image_size=28",
]
FEATURES = 64


class TinyFeatures(nn.Module):
    """Stand-in for the FID Inception: ``[B, 3, 299, 299]`` -> ``[B, 64]`` (pooled colours, a random projection)."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(8)
        self.proj = nn.Linear(3 * 64, FEATURES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(x).flatten(1))


def make_run(folder: Path) -> Path:
    """A run folder (config.yaml + ema.safetensors) holding a random-weight tiny UNet."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate
    from omegaconf import open_dict
    from safetensors.torch import save_file

    from diffusionlab.cli.resolvers import register_resolvers
    from diffusionlab.cli.runs import save_run_config

    register_resolvers()
    overrides = [*TINY_NET, f"paths.output_dir={folder}", f"paths.data_dir={DATA_DIR}"]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train.yaml", overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)  # the config interpolates hydra.* (paths.root_dir): resolve it, then drop it
    with open_dict(cfg):
        del cfg.hydra
    torch.manual_seed(0)
    net = instantiate(cfg.model)
    ckpt = folder / "checkpoints"
    ckpt.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(ckpt / "ema.safetensors"))
    save_run_config(cfg, ckpt)
    return folder


def peak_rss_mb(args: list[str], cwd: Path) -> tuple[float, float]:
    """Run ``python <args>``; its peak resident memory (MB) and wall seconds."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{err[-3000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start  # ru_maxrss is in KB on Linux


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        tmp = Path(tmp)
        run = make_run(tmp / "run")
        weights = tmp / "tiny_features.torchscript.pt"
        with warnings.catch_warnings():  # "torch.jit.script is deprecated": still what load_inception reads
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.script(TinyFeatures().eval()).save(str(weights))
        common = [f"ckpt={run}", "steps=1", f"batch_size={args.batch_size}", "hydra.output_subdir=null"]
        for n in args.n:
            out = tmp / f"n{n}"
            sample_mb, sample_s = peak_rss_mb(
                ["sample.py", *common, f"n={n}", "save_individual=true", f"out_dir={out / 'samples'}",
                 f"hydra.run.dir={out / 'hydra-sample'}"], ROOT,
            )  # fmt: skip
            written = len(list((out / "samples" / "images").glob("*.png")))
            eval_mb, eval_s = peak_rss_mb(
                ["evaluate.py", *common, f"num_samples={n}", f"inception_weights={weights}", "classifier=false",
                 f"data_dir={DATA_DIR}", f"cache_dir={out / 'cache'}", f"out_dir={out / 'eval'}",
                 f"hydra.run.dir={out / 'hydra-eval'}"], ROOT,
            )  # fmt: skip
            rows.append({"n": n, "sample_peak_mb": sample_mb, "sample_s": sample_s, "pngs": written,
                         "evaluate_peak_mb": eval_mb, "evaluate_s": eval_s,
                         "feature_mb": 2 * n * FEATURES * 4 / 2**20})  # fmt: skip
            r = rows[-1]
            print(
                f"n={n:>6}: sample.py peak {sample_mb:7.1f} MB ({sample_s:5.1f} s, {written} PNGs)  "
                f"evaluate.py peak {eval_mb:7.1f} MB ({eval_s:5.1f} s; features {r['feature_mb']:.1f} MB)",
                flush=True,
            )
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        print(
            f"n x{b['n'] / a['n']:g}: sample.py peak {b['sample_peak_mb'] - a['sample_peak_mb']:+.1f} MB, "
            f"evaluate.py peak {b['evaluate_peak_mb'] - a['evaluate_peak_mb']:+.1f} MB "
            f"(feature arrays {b['feature_mb'] - a['feature_mb']:+.1f} MB)"
        )
    if args.json:
        from diffusionlab.utils.io import atomic_write_json

        atomic_write_json(args.json, {"rows": rows, "batch_size": args.batch_size})


if __name__ == "__main__":
    main()
