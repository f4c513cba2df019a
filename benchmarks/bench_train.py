"""Training speed of one step, without the image loader: the trainers' own `train_step`, timed over a number of
steps, with the step's counted FLOPs, TFLOP/s and MFU (the same counter as the training log), and optionally a
profile of one step.

    python benchmarks/bench_train.py tokenizer --preset vqgan-f16 --batch-size 32 --gan --json
    python benchmarks/bench_train.py tokenizer --preset small-f16 --gan --profile 20
    python benchmarks/bench_train.py tokenizer --preset small-f16 --set perceptual_weight=0 --set contrastive_weight=0
    python benchmarks/bench_train.py prior --preset ar-b --batch-size 64 --compile --profile 20
    python benchmarks/bench_train.py prior --preset ar-test --batch-size 4 --steps 2 --device cpu
    python -m torch.distributed.run --standalone --nproc-per-node 2 benchmarks/bench_train.py tokenizer --gan

Under torchrun each process trains data-parallel (DDP, as `regvq train-*` there) and reports its own step: the
rate of all processes together is the sum.

tokenizer: `TokenizerTrainer` on one fixed batch of random pixels already on the device (set against a real
run's logged images/s, this tells the loader's share from the GPU's); `--gan` runs the discriminator from the
first step (its passes and the adaptive weight included). prior: `PriorTrainer` over a token folder of random
16x16 grids of 1,024 codes with class labels (`--cond class`), captions (`--cond text`: the text encoder's states
computed once, as in training) or none, read from memory as in training.
`--set FIELD=VALUE` overrides a field of the trainer's config (`TrainTokenizerConfig`, `TrainPriorConfig`; VALUE
read as JSON where it parses, else as a string): what each loss or option costs. Random weights: the speed of a
step does not depend on what it learns.
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


def make_config(config_class, args, **fields):
    """config_class(**fields) with --set applied over them; no logging, samples or checkpoints."""
    known = {f.name for f in dataclasses.fields(config_class)}
    given = config_overrides(args.set)
    unknown = sorted(set(given) - known)
    if unknown:
        raise SystemExit(f"--set: unknown field(s) {', '.join(unknown)} (see {config_class.__name__})")
    never = 10 ** 9
    return config_class(**{**fields, "batch_size": args.batch_size, "compile": args.compile,
                           "device": None if args.device == "auto" else args.device, "log_every": never,
                           "sample_every": never, "checkpoint_every": never, **given})


def tokenizer_trainer(args, run_dir: Path):
    """A TokenizerTrainer over a one-image folder whose batches are replaced by one fixed batch on the device."""
    import numpy as np
    import torch
    from PIL import Image

    from regvq_cli.train.tokenizer import TokenizerTrainer, TrainTokenizerConfig

    cfg = make_config(TrainTokenizerConfig, args, preset=args.preset or "small-f16",
                      gan_start=0 if args.gan else 10 ** 9, num_workers=0)
    data = run_dir / "data"
    data.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(data / "0.png")  # the trainer wants a folder to list
    trainer = TokenizerTrainer([data], run_dir / "run", cfg)
    size = trainer.tok_cfg.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    g = torch.Generator().manual_seed(0)
    batch = (torch.rand(cfg.batch_size, 3, *size, generator=g) * 2 - 1).to(trainer.device)
    batch = batch.to(memory_format=trainer.memory_format)  # as the loader gives it
    trainer._next_batch = lambda: batch
    return trainer


def prior_trainer(args, run_dir: Path):
    """A PriorTrainer over a token folder of random grids (four batches of them), as `regvq encode` writes one;
    with --cond text each grid gets one of a few hundred captions of the caption recipe's form."""
    import numpy as np

    from regvq_cli.data.shards import RunInfo, write_manifest, write_shard
    from regvq_cli.priors.training import PriorTrainer, TrainPriorConfig

    preset = args.preset or "ar-small"
    n, classes = 4 * args.batch_size, 10
    run = RunInfo(tokenizer_id="", tokenizer_sha256="", grid=(16, 16), codebook_size=1024, num_inputs=n,
                  shard_size=n, labels=args.cond == "class", captions=args.cond == "text")
    tokens = np.random.default_rng(0).integers(0, 1024, (n, 16, 16))
    labels = np.arange(n) % classes if args.cond == "class" else None
    captions = None
    if args.cond == "text":
        colors, things = ["red", "blue", "green", "yellow"], ["bird", "car", "apple", "flower", "fish", "house"]
        backgrounds = ["", " on a white background", " on a black background", " at the left", " at the top"]
        captions = [f"a {colors[i % 4]} {things[i // 4 % 6]}{backgrounds[i // 24 % 5]}" for i in range(n)]
    write_shard(run_dir / "tokens", 0, run, tokens, [f"{i}.png" for i in range(n)], labels=labels,
                captions=captions)
    write_manifest(run_dir / "tokens")
    cfg = make_config(TrainPriorConfig, args, kind=preset.split("-")[0], preset=preset, cond=args.cond,
                      decode_samples=False)
    return PriorTrainer(run_dir / "tokens", run_dir / "run", cfg)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(trainer, steps: int, warmup: int) -> dict:
    """Seconds per step over `steps` steps after `warmup` (compilation, cuDNN autotuning), and one step's FLOPs."""
    import torch

    from regvq_cli.train.common import flop_counter, peak_flops

    device = trainer.device
    with trainer.run_settings():  # as in the trainer's run()
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
    out = {"ms_per_step": round(seconds * 1e3, 2), "per_s": round(batch / seconds, 1),
           "tflop_per_item": float(f"{flops / batch / 1e12:.4g}"), "tflops": round(flops / seconds / 1e12, 2),
           "mfu": round(flops / seconds / peak, 4) if peak else None}
    if device.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("tokenizer", "prior"))
    p.add_argument("--preset", default="", help="the model's preset (default: small-f16, ar-small)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--gan", action="store_true", help="tokenizer: the discriminator on from the first step")
    p.add_argument("--cond", choices=("class", "text", "none"), default="class", help="prior: the condition")
    p.add_argument("--compile", action="store_true", help="torch.compile the model, as --compile in training")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a TrainTokenizerConfig field (repeatable)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also profile one step and list its N costliest operators")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        build = tokenizer_trainer if args.what == "tokenizer" else prior_trainer
        trainer = build(args, Path(tmp))
        result = measure(trainer, args.steps, args.warmup)
        if args.profile:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from bench_sample import profiled

            with trainer.run_settings():
                result["profile"] = profiled(trainer.train_step, trainer.device, args.profile, 1)
            result["profile"]["per_step"] = result["profile"].pop("per_token")  # kernels (operators) per step
    device = trainer.device
    unit = "images" if args.what == "tokenizer" else "grids"
    result = {"what": args.what, "preset": trainer.cfg.preset, "batch": args.batch_size, "compile": args.compile,
              **({"gan": args.gan} if args.what == "tokenizer" else {"cond": args.cond}), "unit": unit,
              "set": config_overrides(args.set), **result, "device": str(device), "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "command": "python benchmarks/bench_train.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    mfu = f"{result['mfu']:.1%} MFU" if result["mfu"] is not None else "MFU unknown (set REGVQ_PEAK_TFLOPS)"
    print(f"{result['preset']} batch {args.batch_size}{' +gan' if result.get('gan') else ''}"
          f"{' compiled' if args.compile else ''}"
          f" on {device}: {result['per_s']} {unit}/s, {result['ms_per_step']} ms per step, "
          f"{result['tflop_per_item']} TFLOP per {unit[:-1]}, {result['tflops']} TFLOP/s, {mfu}")
    if args.profile:
        pr = result["profile"]
        print(f"profile: {pr['ms_total']} ms of {pr['unit']} in one step ({pr['per_step']:.0f} of them)")
        for e in pr["top"]:
            print(f"  {e['share']:6.1%}  {e['ms']:9.3f} ms  {e['calls']:6d}x  {e['name']}")
    print(f"command: {result['command']}")


if __name__ == "__main__":
    main()
