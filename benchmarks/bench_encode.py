"""`regvq encode` end to end, from a folder of JPEGs to token shards: images/s with the CPU decoding pipeline,
with --resize-on device the resizing moved from the workers to the device, with --jpeg-decoder nvjpeg the JPEGs
decoded on the GPU too.

    python benchmarks/bench_encode.py --make-jpegs 5000 --source ../shared/data/photos --jpeg-dir /tmp/jpegs \
        --preset vqgan-f16 --batch-size 64 --workers 15

--make-jpegs N first writes N JPEGs of 256-512 px (random crops of the source photos, quality 90) to
--jpeg-dir, so the input resembles a real dataset. The tokenizer has random weights (speed does not depend on
them) unless --model names a real one. Prints images/s of the whole command, and with --loader-only first the
rate of its decoding pipeline alone (the same DataLoader, workers and batches, no model, no shards): if the two
are close, the CPU decoding is the limit. With the nvjpeg decoder the pipeline alone reads the files and their
headers (the decoding is on the device). Also: ms per image, the encoder's GFLOP per image (counted on one
image), the fraction of the FLOP floor that the whole command reaches (--peak-tflops, 790 for an H200 in dense
bf16) and the peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image


def _jpeg_part(args) -> None:
    """JPEGs i = part, part + parts, ... of make_jpegs (one process's share)."""
    source, out, n, seed, part, parts = args
    photos = sorted(p for p in source.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    opened = [Image.open(p).convert("RGB") for p in photos]
    for i in range(part, n, parts):
        rng = random.Random(seed * 1_000_003 + i)  # per image: the same files whatever the number of processes
        im = opened[i % len(opened)]
        side = rng.randint(256, min(512, *im.size))
        x, y = rng.randint(0, im.size[0] - side), rng.randint(0, im.size[1] - side)
        w = min(side, im.size[0] - x)
        crop = im.crop((x, y, x + w, y + int(side * rng.uniform(0.75, 1.0))))
        crop.save(out / f"{i:06d}.jpg", quality=90)


def make_jpegs(source: Path, out: Path, n: int, seed: int = 0, processes: int | None = None) -> None:
    """n JPEGs of 256-512 px, random crops of the source photos, written by several processes."""
    from multiprocessing import Pool

    out.mkdir(parents=True, exist_ok=True)
    parts = max(1, min(processes or os.cpu_count() or 1, n))
    with Pool(parts) as pool:
        pool.map(_jpeg_part, [(source, out, n, seed, k, parts) for k in range(parts)])


def loader_images_per_s(folder: Path, size: int, opts, pin_memory: bool) -> float:
    """Images/s of `regvq encode`'s decoding pipeline alone over `folder`, timed after its first batch (worker
    start-up excluded; 0 when there is only one batch). With opts.jpeg_decoder "nvjpeg" the workers read the JPEGs
    and parse their headers, and do not decode them."""
    from regvq_cli.data.inputs import list_inputs
    from regvq_cli.data.shards import plan_shards
    from regvq_cli.engine.encode import image_batches

    listing = list_inputs([str(folder)])
    batches = iter(image_batches(listing, plan_shards(len(listing), opts.shard_size), opts, size,
                                 pin_memory=pin_memory))
    next(batches)  # the workers are up
    n, t = 0, time.perf_counter()
    for batch in batches:
        n += len(batch["i"])
    return round(n / max(time.perf_counter() - t, 1e-9), 2)


def main(argv=None):
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other benchmarks
    from runner_options import add_runner_options

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jpeg-dir", type=Path, required=True)
    p.add_argument("--make-jpegs", type=int, default=0)
    p.add_argument("--source", type=Path, default=Path("../shared/data/photos"))
    p.add_argument("--preset", default="vqgan-f16")
    p.add_argument("--model", default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--shard-size", type=int, default=4096)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--compile", action="store_true")
    add_runner_options(p)
    p.add_argument("--jpeg-decoder", choices=["pillow", "nvjpeg"], default="pillow")
    p.add_argument("--resize-on", choices=["workers", "device"], default="workers")
    p.add_argument("--loader-only", action="store_true", help="also time the decoding pipeline without the model")
    p.add_argument("--peak-tflops", type=float, default=790.0, help="the FLOP floor for the floor fraction")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import torch

    from regvq_cli.engine.checkpoint import save_model
    from regvq_cli.engine.device import pick_device, pick_dtype
    from regvq_cli.engine.encode import EncodeOptions, encode_images
    from regvq_cli.engine.jpeg import pick_decoder
    from regvq_cli.engine.resolve import load
    from regvq_cli.engine.runtime import default_channels_last

    if args.make_jpegs and sum(1 for _ in args.jpeg_dir.glob("*.jpg")) != args.make_jpegs:  # else: made before
        t = time.perf_counter()
        make_jpegs(args.source, args.jpeg_dir, args.make_jpegs)
        print(f"wrote {args.make_jpegs} JPEGs in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp())
    if args.model is None:
        from regvq_cli.tokenizer.model import Tokenizer
        from regvq_cli.tokenizer.presets import PRESETS

        args.model = str(save_model(Tokenizer(PRESETS[args.preset]), tmp / "model"))
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    opts = EncodeOptions(batch_size=args.batch_size, workers=args.workers, shard_size=args.shard_size,
                         compile=args.compile, cuda_graphs=args.cuda_graphs, channels_last=args.channels_last,
                         jpeg_decoder=args.jpeg_decoder, resize_on=args.resize_on)
    decoder = pick_decoder(args.jpeg_decoder, device)
    n = sum(1 for _ in args.jpeg_dir.iterdir())
    tokenizer = load(args.model)
    loader_rate = loader_images_per_s(args.jpeg_dir, tokenizer.config.image_size, opts, device.type == "cuda") \
        if args.loader_only else None
    from bench_tokenizer import floor_columns, peak_memory_gib, tokenizer_gflop

    gflop = tokenizer_gflop(tokenizer)[0]
    if device.type == "cuda":
        torch.cuda.init()  # the allocator's statistics exist once CUDA is initialised (--loader-only did it before)
        torch.cuda.reset_peak_memory_stats(device)
    summary = encode_images([str(args.jpeg_dir)], tmp / "tokens", tokenizer, device, dtype, opts)
    result = {"images": n, "images_per_s": summary["images_per_s"], "wall_s": summary["seconds"],
              "timings": summary["timings"], "input_wait_s": summary["input_wait"],
              **floor_columns(summary["images_per_s"], gflop, args.peak_tflops),
              "peak_memory_gib": peak_memory_gib(device),
              "loader_only_images_per_s": loader_rate,
              "model": args.model if args.model.startswith(str(tmp)) is False else args.preset,
              "batch_size": args.batch_size, "workers": args.workers, "device": str(device), "dtype": str(dtype),
              "compile": args.compile, "cuda_graphs": args.cuda_graphs,
              "channels_last": default_channels_last(device, args.compile) if args.channels_last is None
              else args.channels_last, "jpeg_decoder": decoder,
              "resize_on": args.resize_on, "cpus": os.cpu_count(),
              "torch": torch.__version__, "command": " ".join(["python"] + sys.argv)}
    shutil.rmtree(tmp)
    print(json.dumps(result, indent=2) if args.json else
          f"encode {n} JPEGs: {result['images_per_s']:.1f} images/s ({result['wall_s']:.1f}s wall incl. start-up, "
          f"{result['ms_per_image']} ms per image, {result['gflop_per_image']} GFLOP per image, "
          f"{result['floor_fraction']:.2g} of the FLOP floor"
          + (f", {result['peak_memory_gib']} GiB peak" if result["peak_memory_gib"] is not None else "") + ") "
          f"{device} {dtype} batch {args.batch_size} workers {args.workers} JPEG decoder {decoder} resize on {args.resize_on}"
          + f"; the loop waited {result['input_wait_s']:.1f} s of {result['timings']['encoding']:.1f} s for input"
          + (f"; decoding pipeline alone: {loader_rate:.1f} images/s" if loader_rate else "")
          + f"\ncommand: {result['command']}")


if __name__ == "__main__":
    main()
