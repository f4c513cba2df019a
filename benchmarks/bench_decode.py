"""`regvq decode` end to end: a token folder to PNG files on disk, images/s.

    python benchmarks/bench_decode.py --preset vqgan-f16 --n 4096 --batch-size 64

The token folder holds random token grids (decode speed does not depend on them) written in the shard format;
the tokenizer has random weights unless --model names a real one. Prints images/s of the whole command and of
the model alone, so it shows whether PNG writing or the network is the limit; for each, ms per image and the
fraction of the FLOP floor (the decoder's GFLOP per image counted on one image; --peak-tflops, 790 for an H200
in dense bf16); and the peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None):
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other benchmarks
    from runner_options import add_runner_options

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="vqgan-f16")
    p.add_argument("--model", default=None)
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    add_runner_options(p)
    p.add_argument("--peak-tflops", type=float, default=790.0, help="the FLOP floor for the floor fraction")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from regvq_cli.data.shards import RunInfo, write_manifest, write_shard
    from regvq_cli.engine.checkpoint import file_sha256, save_model, weights_path
    from regvq_cli.engine.decode import decode_source
    from regvq_cli.engine.device import pick_device, pick_dtype
    from regvq_cli.engine.resolve import load
    from regvq_cli.engine.runtime import prepare_tokenizer

    tmp = Path(tempfile.mkdtemp())
    if args.model is None:
        from regvq_cli.tokenizer.model import Tokenizer
        from regvq_cli.tokenizer.presets import PRESETS

        args.model = str(save_model(Tokenizer(PRESETS[args.preset]), tmp / "model"))
    tokenizer = load(args.model)
    grid = tokenizer.grid_size(tokenizer.config.image_size)
    run = RunInfo(tokenizer_id=args.model, tokenizer_sha256=file_sha256(weights_path(tokenizer.regvq_path)), grid=grid,
                  codebook_size=tokenizer.codebook_size, num_inputs=args.n, shard_size=args.n)
    tokens = np.random.default_rng(0).integers(0, tokenizer.codebook_size, (args.n, *grid))
    write_shard(tmp / "tokens", 0, run, tokens, [f"{i:06d}" for i in range(args.n)])
    write_manifest(tmp / "tokens", run)

    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    from bench_tokenizer import floor_columns, peak_memory_gib, tokenizer_gflop

    gflop = tokenizer_gflop(tokenizer)[1]
    if device.type == "cuda":
        torch.cuda.init()  # the allocator's statistics exist once CUDA is initialised
        torch.cuda.reset_peak_memory_stats(device)
    # the model alone (its pictures to host memory), first: before the command's writer threads load the host
    runner = prepare_tokenizer(tokenizer, device, dtype, cuda_graphs=args.cuda_graphs,
                               channels_last=args.channels_last)
    batch = torch.from_numpy(tokens[: args.batch_size])
    runner.decode_uint8(batch)  # warm-up
    t = time.perf_counter()
    for _ in range(10):
        runner.decode_uint8(batch)
    model_ips = 10 * len(batch) / (time.perf_counter() - t)
    cuda_graphs, channels_last = runner.cuda_graphs, runner.channels_last
    del runner  # and its CUDA graph's memory
    summary = decode_source(tmp / "tokens", tmp / "png", tokenizer, device, dtype, batch_size=args.batch_size,
                            cuda_graphs=args.cuda_graphs, channels_last=args.channels_last)
    result = {"images": args.n, "end_to_end_images_per_s": summary["images_per_s"],
              "model_only_images_per_s": round(model_ips, 1),
              "end_to_end": floor_columns(summary["images_per_s"], gflop, args.peak_tflops),
              "model_only": floor_columns(model_ips, gflop, args.peak_tflops),
              "peak_memory_gib": peak_memory_gib(device), "device": str(device), "dtype": str(dtype),
              "batch_size": args.batch_size, "cuda_graphs": cuda_graphs,
              "channels_last": channels_last,
              "model": args.preset if args.model.startswith(str(tmp)) else args.model,
              "torch": torch.__version__, "command": " ".join(["python"] + sys.argv)}
    shutil.rmtree(tmp)
    print(json.dumps(result, indent=2) if args.json else
          f"decode {args.n} grids to PNG: {result['end_to_end_images_per_s']:.1f} images/s end to end, "
          f"{result['model_only_images_per_s']:.1f} images/s for the model alone ({device}, {dtype}; "
          f"{result['end_to_end']['gflop_per_image']} GFLOP per image: {result['end_to_end']['floor_fraction']:.2g} "
          f"and {result['model_only']['floor_fraction']:.2g} of the FLOP floor"
          + (f"; {result['peak_memory_gib']} GiB peak" if result["peak_memory_gib"] is not None else "") + ")\n"
          f"command: {result['command']}")


if __name__ == "__main__":
    main()
