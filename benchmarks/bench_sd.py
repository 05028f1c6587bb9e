"""Stable Diffusion 1.5 at full size on the CPU: our UNet against diffusers' UNet2DConditionModel.

    python benchmarks/bench_sd.py            # one UNet step at 64x64 latents, float32 and bfloat16
    python benchmarks/bench_sd.py --e2e      # also seconds per 512x512 image, 20 steps (slow: minutes)
    python benchmarks/bench_sd.py --skip-unet --e2e --e2e-size 256 --e2e-steps 2   # smoke test

SD 1.5 weights are not on this machine: random weights of the exact SD 1.5 architecture are written once
(``--weights``, an original-layout .safetensors, 4.3 GB) and both implementations load the same tensors
(diffusers' through our key mapping). Every (implementation, precision) cell runs in its own subprocess,
ours and diffusers' alternately, ``--repeats`` times; the table keeps the fastest repeat (the machine is
shared). A UNet step is one forward at batch 2 (classifier-free guidance), 64x64 latents, 77 tokens.

Peak memory: after one warm-up step the subprocess resets its peak-RSS counter (``echo 5 >
/proc/self/clear_refs``) and reports ``VmHWM - VmRSS`` over the timed steps: the extra memory of a step
(activations), on top of the weights (3.4 GB in float32, 1.7 GB in bfloat16).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768,
    attention_head_dim=8,
)
DTYPES = ("fp32", "bf16")


def make_weights(path: Path) -> None:
    """Random SD 1.5 weights (seed 0, PyTorch's default init) in the original single-file layout."""
    import torch
    from safetensors.torch import save_file

    from diffusionlab.sd.clip import CLIPTextEncoder
    from diffusionlab.sd.config import sd15
    from diffusionlab.sd.convert import to_compvis
    from diffusionlab.sd.unet import UNet
    from diffusionlab.sd.vae import AutoencoderKL

    torch.manual_seed(0)
    cfg = sd15()
    parts = {
        "unet": UNet(cfg.unet),
        "vae": AutoencoderKL(cfg.vae),
        "text_encoder": CLIPTextEncoder(cfg.text_encoder),
    }
    flat = to_compvis({k: m.state_dict() for k, m in parts.items()}, cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in flat.items()}, tmp)
    tmp.replace(path)


# ----------------------------------------------------------------------------------------------- worker
def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _load_unet(path: str, impl: str, dtype):
    from diffusionlab.sd.checkpoint import load_component, open_state_dict
    from diffusionlab.sd.config import sd15
    from diffusionlab.sd.convert import to_diffusers
    from diffusionlab.sd.key_map import COMPVIS_PREFIX

    cfg = sd15().unet
    prefix = COMPVIS_PREFIX["unet"]
    src = open_state_dict(path)
    keys = {k[len(prefix) :]: k for k in src if k.startswith(prefix)}
    unet = load_component("unet", cfg, src, keys, "compvis", dtype=dtype)
    if impl == "ours":
        return lambda z, t, c: unet(z, t, c)
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        ref = UNet2DConditionModel(**SD15_UNET)
    ref.load_state_dict(to_diffusers("unet", unet.state_dict(), cfg), strict=True, assign=True)
    ref.eval().requires_grad_(False)
    return lambda z, t, c: ref(z, t, encoder_hidden_states=c, return_dict=False)[0]


def unet_worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    dtype = torch.float32 if spec["precision"] == "fp32" else torch.bfloat16
    forward = _load_unet(spec["weights"], spec["impl"], dtype)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 64, 64, generator=g).to(dtype)
    c = torch.randn(2, 77, 768, generator=g).to(dtype)
    t = torch.tensor([500, 500])
    with torch.no_grad():
        out = forward(z, t, c)  # warm-up (also touches every weight)
        try:
            Path("/proc/self/clear_refs").write_text("5")
            peak_field = "VmHWM"
        except OSError:
            peak_field = None
        base = _rss_kb("VmRSS")
        times = []
        for _ in range(spec["steps"]):
            t0 = time.perf_counter()
            out = forward(z, t, c)
            times.append(time.perf_counter() - t0)
    peak = (_rss_kb(peak_field) - base) / 1024 if peak_field else float("nan")
    torch.save(out.float(), spec["out"])
    return {"seconds": min(times), "peak_mb": peak}


def e2e_worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    from diffusionlab.sd.pipeline import StableDiffusion

    sd = StableDiffusion.from_single_file(spec["weights"])
    size, steps = spec["size"], spec["steps"]
    latents = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0))
    prompt = "an astronaut riding a horse"
    if spec["impl"] == "ours":
        t0 = time.perf_counter()
        images = sd.txt2img(
            prompt, steps=steps, sampler="dpmpp_2m", latents=latents, height=size, width=size, progress=False
        ).images
    else:
        import diffusers
        from accelerate import init_empty_weights
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

        from diffusionlab.sd.convert import to_diffusers
        from diffusionlab.sd.tokenizer import PACKAGE_FILES

        with init_empty_weights():
            unet = diffusers.UNet2DConditionModel(**SD15_UNET)
            vae = diffusers.AutoencoderKL(
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=(128, 256, 512, 512),
                layers_per_block=2,
            )
            text = CLIPTextModel(
                CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12)
            )
        for name, ref in (("unet", unet), ("vae", vae), ("text_encoder", text)):
            sd_ours = getattr(sd, name).state_dict()
            converted = to_diffusers(name, sd_ours, getattr(sd.config, name))
            if name == "text_encoder":
                converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
            ref.load_state_dict(converted, strict=True, assign=True)
            ref.eval().requires_grad_(False)
        sched = diffusers.DPMSolverMultistepScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
            timestep_spacing="leading", algorithm_type="dpmsolver++", solver_order=2,
        )  # fmt: skip
        tokenizer = CLIPTokenizer.from_pretrained(str(PACKAGE_FILES))
        pipe = diffusers.StableDiffusionPipeline(
            vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=sched, safety_checker=None,
            feature_extractor=None, requires_safety_checker=False,
        )  # fmt: skip
        pipe.set_progress_bar_config(disable=True)
        t0 = time.perf_counter()
        images = pipe(
            prompt,
            num_inference_steps=steps,
            guidance_scale=7.5,
            latents=latents,
            height=size,
            width=size,
            output_type="pt",
        ).images
    seconds = time.perf_counter() - t0
    torch.save(images.float(), spec["out"])
    return {"seconds": seconds}


# ----------------------------------------------------------------------------------------------- driver
def run_cell(kind: str, spec: dict) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker {spec['impl']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, default=Path(tempfile.gettempdir()) / "diffusionlab-sd15-random.safetensors")
    p.add_argument("--steps", type=int, default=3, help="timed UNet steps per cell (after one warm-up)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", nargs="+", default=list(DTYPES), choices=DTYPES)
    p.add_argument("--e2e", action="store_true", help="also time one image end to end (DPM++ 2M, float32)")
    p.add_argument("--e2e-size", type=int, default=512)
    p.add_argument("--e2e-steps", type=int, default=20)
    p.add_argument("--skip-unet", action="store_true", help="only the end-to-end timing")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        kind, spec = args.worker[0], json.loads(args.worker[1])
        print(json.dumps((unet_worker if kind == "unet" else e2e_worker)(spec)))
        return

    import torch

    if not args.weights.exists():
        print(f"writing random SD 1.5 weights to {args.weights} (once) ...", flush=True)
        make_weights(args.weights)
    results: dict = {"unet_step": {}, "e2e": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for prec in [] if args.skip_unet else args.precision:
            best: dict = {}
            for _ in range(args.repeats):
                for impl in ("ours", "diffusers"):
                    spec = dict(weights=str(args.weights), impl=impl, precision=prec, steps=args.steps)
                    spec.update(threads=args.threads, out=f"{tmp}/{impl}-{prec}.pt")
                    r = run_cell("unet", spec)
                    if impl not in best or r["seconds"] < best[impl]["seconds"]:
                        best[impl] = r
            diff = (torch.load(f"{tmp}/ours-{prec}.pt") - torch.load(f"{tmp}/diffusers-{prec}.pt")).abs().max()
            best["time_ratio"] = best["ours"]["seconds"] / best["diffusers"]["seconds"]
            best["max_abs_diff"] = float(diff)
            results["unet_step"][prec] = best
            ours, ref = best["ours"], best["diffusers"]
            print(
                f"UNet step {prec}: ours {ours['seconds']:.2f} s (+{ours['peak_mb']:.0f} MB), "
                f"diffusers {ref['seconds']:.2f} s (+{ref['peak_mb']:.0f} MB), "
                f"ratio {best['time_ratio']:.2f}, max |diff| {best['max_abs_diff']:.2e}",
                flush=True,
            )
        if args.e2e:
            for impl in ("ours", "diffusers"):
                spec = dict(weights=str(args.weights), impl=impl, threads=args.threads, out=f"{tmp}/e2e-{impl}.pt")
                spec.update(size=args.e2e_size, steps=args.e2e_steps)
                results["e2e"][impl] = run_cell("e2e", spec)
            diff = (torch.load(f"{tmp}/e2e-ours.pt") - torch.load(f"{tmp}/e2e-diffusers.pt")).abs().max()
            results["e2e"]["max_abs_diff"] = float(diff)
            e2e = results["e2e"]
            print(
                f"{args.e2e_size}x{args.e2e_size}, {args.e2e_steps} steps, float32: ours "
                f"{e2e['ours']['seconds']:.1f} s/image, diffusers "
                f"{e2e['diffusers']['seconds']:.1f} s/image, max |diff| {float(diff):.2e}",
                flush=True,
            )
    if args.json:
        from diffusionlab.utils.io import atomic_write_json

        atomic_write_json(args.json, results)


if __name__ == "__main__":
    main()
