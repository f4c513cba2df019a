"""The device-side resize of `regvq encode --resize-on device` / `--jpeg-decoder nvjpeg` on its own: a batch of
pictures of mixed sizes (as decoded JPEGs arrive) resized to the model's size with `resize_batch`, in images/s,
to set beside the end-to-end numbers of bench_encode.py.

    python benchmarks/bench_resize.py --device cuda --batch-size 128 --min-side 256 --max-side 512 [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from regvq_cli.engine.jpeg import resize_batch


def pictures(n: int, lo: int, hi: int, device, seed: int = 0) -> list[torch.Tensor]:
    """`n` smooth random uint8 [3, h, w] pictures, sides uniform in [lo, hi]."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        h, w = torch.randint(lo, hi + 1, (2,), generator=g).tolist()
        coarse = torch.rand((1, 3, h // 8 + 2, w // 8 + 2), generator=g)
        img = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
        img = img + 0.1 * torch.rand((3, h, w), generator=g)  # some fine detail
        out.append((img.clamp(0, 1) * 255).round().to(torch.uint8).to(device))
    return out


def seconds_per_batch(batch, size: int, device, iters: int) -> float:
    resize_batch(batch, size, size)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        resize_batch(batch, size, size)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--size", type=int, default=256, help="output side (default 256)")
    ap.add_argument("--min-side", type=int, default=256)
    ap.add_argument("--max-side", type=int, default=512)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    batch = pictures(args.batch_size, args.min_side, args.max_side, device)
    s = seconds_per_batch(batch, args.size, device, args.iters)
    command = " ".join(["python benchmarks/bench_resize.py", *(sys.argv[1:] if argv is None else argv)])
    result = {"images_per_s": round(args.batch_size / s, 1), "ms_per_batch": round(1000 * s, 2),
              "batch_size": args.batch_size, "sides": [args.min_side, args.max_side], "size": args.size,
              "device": str(device), "torch": torch.__version__, "command": command}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['images_per_s']:.1f} images/s, {result['ms_per_batch']:.2f} ms per batch of {args.batch_size} "
              f"({args.min_side}-{args.max_side} px -> {args.size} px, {device})")


if __name__ == "__main__":
    main()
