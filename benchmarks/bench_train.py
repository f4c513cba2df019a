"""Tokenizer training speed without the data loader: `TokenizerTrainer.train_step` on one fixed batch already on
the device, timed over a number of steps, with the step's counted FLOPs, TFLOP/s and MFU (the same counter as
the training log), and optionally a profile of one step. Set against a real run's logged images/s, it tells the
loader's share from the GPU's; with `--set`, what each loss costs.

    python benchmarks/bench_train.py --preset vqgan-f16 --batch-size 32 --gan --json
    python benchmarks/bench_train.py --preset small-f16 --batch-size 32 --gan --profile 20
    python benchmarks/bench_train.py --preset small-f16 --set perceptual_weight=0 --set contrastive_weight=0
    python benchmarks/bench_train.py --preset tok-test --batch-size 2 --steps 2 --device cpu

`--set FIELD=VALUE` overrides any `TrainTokenizerConfig` field (VALUE read as JSON where it parses, else as a
string). `--gan` runs the discriminator from the first step (its passes and the adaptive weight included). Random
weights and random pixels: the speed of a step does not depend on what it learns.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path


def config_overrides(pairs: list[str]) -> dict:
    """['lr=1e-4', 'perceptual_net=vgg16'] -> {'lr': 0.0001, 'perceptual_net': 'vgg16'}."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set {pair!r}: expected FIELD=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def build_trainer(args, run_dir: Path):
    """A TokenizerTrainer over a one-image folder whose batches are replaced by one fixed batch on the device."""
    import numpy as np
    import torch
    from PIL import Image

    from regvq_cli.train.tokenizer import TokenizerTrainer, TrainTokenizerConfig

    fields = {f.name for f in dataclasses.fields(TrainTokenizerConfig)}
    given = config_overrides(args.set)
    unknown = sorted(set(given) - fields)
    if unknown:
        raise SystemExit(f"--set: unknown field(s) {', '.join(unknown)} (see TrainTokenizerConfig)")
    cfg = TrainTokenizerConfig(preset=args.preset, batch_size=args.batch_size, compile=args.compile,
                               gan_start=0 if args.gan else 10 ** 9, num_workers=0,
                               device=None if args.device == "auto" else args.device,
                               log_every=10 ** 9, sample_every=10 ** 9, checkpoint_every=10 ** 9, **given)
    data = run_dir / "data"
    data.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(data / "0.png")  # the trainer wants a folder to list
    trainer = TokenizerTrainer([data], run_dir / "run", cfg)
    size = trainer.tok_cfg.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    g = torch.Generator().manual_seed(0)
    batch = (torch.rand(cfg.batch_size, 3, *size, generator=g) * 2 - 1).to(trainer.device)
    trainer._next_batch = lambda: batch
    return trainer


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(trainer, steps: int, warmup: int) -> dict:
    """Seconds per step over `steps` steps after `warmup` (compilation, cuDNN autotuning), and one step's FLOPs."""
    import torch

    from regvq_cli.train.common import flop_counter, peak_flops, training_precision

    device = trainer.device
    with training_precision(device):
        for _ in range(warmup):
            trainer.train_step()
        with flop_counter() as counter:
            trainer.train_step()
        flops = float(counter.total)
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        sync(device)
        seconds = (time.perf_counter() - t0) / steps
    batch = trainer.cfg.batch_size
    peak = peak_flops(device)
    out = {"ms_per_step": round(seconds * 1e3, 2), "images_per_s": round(batch / seconds, 1),
           "tflop_per_image": round(flops / batch / 1e12, 4), "tflops": round(flops / seconds / 1e12, 2),
           "mfu": round(flops / seconds / peak, 4) if peak else None}
    if device.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small-f16", help="tokenizer preset")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--gan", action="store_true", help="the discriminator on from the first step")
    p.add_argument("--compile", action="store_true", help="torch.compile the autoencoder (as --compile in training)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a TrainTokenizerConfig field (repeatable)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also profile one step and list its N costliest operators")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(args, Path(tmp))
        result = measure(trainer, args.steps, args.warmup)
        if args.profile:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from bench_sample import profiled

            from regvq_cli.train.common import training_precision

            with training_precision(trainer.device):
                result["profile"] = profiled(trainer.train_step, trainer.device, args.profile, 1)
            result["profile"].pop("per_token")  # one "token" here is the whole step
    device = trainer.device
    result = {"preset": args.preset, "batch": args.batch_size, "gan": args.gan, "compile": args.compile,
              "set": config_overrides(args.set), **result, "device": str(device), "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "command": "python benchmarks/bench_train.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    mfu = f"{result['mfu']:.1%} MFU" if result["mfu"] is not None else "MFU unknown (set REGVQ_PEAK_TFLOPS)"
    print(f"{args.preset} batch {args.batch_size}{' +gan' if args.gan else ''}{' compiled' if args.compile else ''}"
          f" on {device}: {result['images_per_s']} images/s, {result['ms_per_step']} ms per step, "
          f"{result['tflop_per_image']} TFLOP per image, {result['tflops']} TFLOP/s, {mfu}")
    if args.profile:
        pr = result["profile"]
        print(f"profile: {pr['ms_total']} ms of {pr['unit']} in one step")
        for e in pr["top"]:
            print(f"  {e['share']:6.1%}  {e['ms']:9.3f} ms  {e['calls']:6d}x  {e['name']}")
    print(f"command: {result['command']}")


if __name__ == "__main__":
    main()
