"""Tokenizer throughput from tensors already on the device: encode and decode images/s, ms per image,
FLOPs counted by torch's FlopCounterMode, the fraction of the hardware's FLOP floor, and peak memory.

    python benchmarks/bench_tokenizer.py --preset vqgan-f16 --batch-size 64 --dtype bf16 [--compile]
    python benchmarks/bench_tokenizer.py --model regvq-tokenizer --device cpu --batch-size 8

Random weights give the same speed as trained ones (no data-dependent control flow); `--model` measures a
real model folder. Peak bf16 for the fraction: 790 TFLOP/s (H200, dense); pass --peak-tflops elsewhere. On a GPU
each row also records the clock, power and temperature nvidia-smi reads while that operation runs: the same code
has run 3-4% apart between machine starts, and these say whether the GPU's clocks did.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch


def count_flops(fn, *args) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops()


def tokenizer_gflop(model, size: int | None = None) -> tuple[float, float]:
    """GFLOP per image of a tokenizer's encode and decode at `size` (default: its image size), counted on one image
    where the model is, in its dtype: the FLOPs of the network as written, whatever forms inference takes on this
    device. Both halves are counted with their input requiring a gradient, so that the inference-only forms run as
    the layers they compute: the first convolution's Triton kernel (which FlopCounterMode cannot see into) and the
    decoder's transposed upsampling (fewer multiply-adds: counted as it runs for inference, vqgan-f16's decoder
    takes 226 GFLOP an image against the network's 253)."""
    p = next(model.parameters())
    size = size or model.config.image_size
    x = (torch.rand(1, 3, size, size, device=p.device) * 2 - 1).to(p.dtype)
    with torch.no_grad():
        codes = model.quantizer.decode_indices(model.encode(x))  # [1, embed_dim, h, w]
    with torch.enable_grad():
        encode = count_flops(model.encode, x.requires_grad_()) / 1e9
        codes = codes.to(model.post_quant_conv.weight.dtype).requires_grad_()
        decode = count_flops(lambda c: model.decoder(model.post_quant_conv(c)), codes) / 1e9
    return encode, decode


def floor_columns(images_per_s: float, gflop_per_image: float, peak_tflops: float) -> dict:
    """ms per image, GFLOP per image and the fraction of the FLOP floor at that rate (the benchmark tables' columns)."""
    return {"ms_per_image": round(1000 / max(images_per_s, 1e-9), 3), "gflop_per_image": float(f"{gflop_per_image:.4g}"),
            "floor_fraction": float(f"{images_per_s * gflop_per_image / (peak_tflops * 1e3):.3g}")}


def peak_memory_gib(device) -> float | None:
    """The peak GPU memory since the last `torch.cuda.reset_peak_memory_stats` (None on a CPU)."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)


SMI_FIELDS = ("clocks.sm", "clocks.max.sm", "power.draw", "power.limit", "temperature.gpu",
              "clocks_throttle_reasons.active")


def gpu_state(device) -> dict | None:
    """nvidia-smi's SM clock and its maximum (MHz), power draw and limit (W), temperature (C) and the active
    clock-limiting reasons (a bit mask: 0x4 the software power cap, 0x20 and 0x40 thermal) of `device`, as
    strings; a driver that no longer knows the reasons' field is asked for the rest. None on a CPU, without
    nvidia-smi, or if it fails."""
    if device.type != "cuda" or shutil.which("nvidia-smi") is None:
        return None
    uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
    gpu = f"GPU-{uuid}" if uuid is not None else str(device.index or 0)  # CUDA_VISIBLE_DEVICES may renumber
    for fields in (SMI_FIELDS, SMI_FIELDS[:-1]):
        try:
            done = subprocess.run(["nvidia-smi", "-i", gpu, "--query-gpu=" + ",".join(fields),
                                   "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        values = [v.strip() for v in done.stdout.strip().split(",")]
        if done.returncode == 0 and len(values) == len(fields):
            return dict(zip(fields, values))
    return None


def busy_gpu_state(fn, arg, device, calls: int = 8) -> dict | None:
    """gpu_state read while `calls` calls of fn(arg), queued without waiting, keep the GPU busy (clocks drop within
    milliseconds of going idle); then waits for them."""
    if device.type != "cuda":
        return None
    for _ in range(calls):
        fn(arg)
    state = gpu_state(device)
    torch.cuda.synchronize(device)
    return state


def timed(fn, arg, device, iters: int, warmup: int) -> float:
    """Seconds per call, median of `iters` timed calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn(arg)
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(arg)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def main(argv=None):
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other benchmarks
    from runner_options import add_runner_options

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="vqgan-f16", help="architecture preset (random weights)")
    p.add_argument("--model", default=None, help="a model folder / shipped name instead of a preset")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--compile", action="store_true", help="torch.compile the encode and decode functions")
    add_runner_options(p)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--peak-tflops", type=float, default=790.0)
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also profile one encode and one decode call and list their N costliest operators (and "
                        "kernels, on a GPU)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    from regvq_cli.engine.device import pick_device, pick_dtype
    from regvq_cli.engine.runtime import prepare_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    if args.model:
        from regvq_cli.engine.resolve import load

        model = load(args.model)
    else:
        from regvq_cli.tokenizer.model import Tokenizer
        from regvq_cli.tokenizer.presets import PRESETS

        model = Tokenizer(PRESETS[args.preset])
    size = args.image_size or model.config.image_size
    runner = prepare_tokenizer(model, device, dtype, compile=args.compile, channels_last=args.channels_last,
                               cuda_graphs=args.cuda_graphs)
    images = torch.rand(args.batch_size, 3, size, size, device=device) * 2 - 1
    with torch.inference_mode():
        indices = runner.encode(images)
        t_enc = timed(runner.encode, images, device, args.iters, args.warmup)
        t_dec = timed(runner.decode, indices, device, args.iters, args.warmup)
        states = [busy_gpu_state(runner.encode, images, device), busy_gpu_state(runner.decode, indices, device)]
        profiles = {}
        if args.profile:
            from bench_sample import print_ranked, profiled

            profiles = {"encode": profiled(lambda: runner.encode(images), device, args.profile, args.batch_size,
                                           per="image"),
                        "decode": profiled(lambda: runner.decode(indices), device, args.profile, args.batch_size,
                                           per="image")}
    rows = []
    for name, t, gflop, state in zip(("encode", "decode"), (t_enc, t_dec), tokenizer_gflop(model, size), states):
        ips = args.batch_size / t
        rows.append({"op": name, "images_per_s": round(ips, 1), **floor_columns(ips, gflop, args.peak_tflops),
                     **({"gpu_state": state} if state else {})})
    result = {
        "model": args.model or args.preset, "image_size": size, "batch_size": args.batch_size, "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "dtype": str(dtype),
        "compile": args.compile, "channels_last": runner.channels_last,
        "cuda_graphs": runner.cuda_graphs, "torch": torch.__version__,
        "peak_memory_gib": peak_memory_gib(device),
        "rows": rows, **({"profile": profiles} if profiles else {}), "command": " ".join(["python"] + sys.argv),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['model']} {size}px batch {args.batch_size} {device} {dtype} compile={args.compile} torch {torch.__version__}")
    print(f"{'op':8}{'images/s':>12}{'ms/image':>10}{'GFLOP/img':>11}{'% floor':>9}")
    for r in rows:
        print(f"{r['op']:8}{r['images_per_s']:>12}{r['ms_per_image']:>10}{r['gflop_per_image']:>11}"
              f"{100 * r['floor_fraction']:>9.2g}")
    for r in rows:
        if "gpu_state" in r:
            print(f"{r['op']}: " + ", ".join(f"{k} {v}" for k, v in r["gpu_state"].items()))
    for op, pr in profiles.items():
        print(f"profile {op}: {pr['ms_total']} ms of {pr['unit']} in one call ({pr['per_image']} per image)")
        print_ranked(pr)
    print(f"command: {result['command']}")


if __name__ == "__main__":
    main()
