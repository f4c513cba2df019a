"""Train and evaluate the tokenizers behind docs/results.md's comparisons, at equal steps, seed, data and network.

    python benchmarks/results_runs.py run --train DIR [DIR...] --val DIR --out results/ [--only a,b] [--parallel 3]
        [--preset small-f16] [--steps 2000] [--batch-size 32] [--workers 16] [--eval-limit 2000] [--deadline S]
    python benchmarks/results_runs.py gen --train DIR --out results/ [--only a,b] [--kind ar] [--prior-preset ar-small]
        [--prior-steps 2000] [--samples 2000] [--parallel 5] [--deadline S]
    python benchmarks/results_runs.py table --out results/        # markdown tables from the rows written so far
    python benchmarks/results_runs.py list                        # the runs and their flags

Each run is one `regvq train-tokenizer` (GAN off, so that the comparison is of the quantizers and losses) and one
`regvq eval recon` on the held-out folder; its row (flags, commands, final training metrics, held-out metrics)
is written to OUT/rows/NAME.json. A run whose row exists is skipped, so a long comparison can be split over
several calls (`--only`) and the rows collected. `--parallel K` trains K runs at once (small presets leave a
large GPU partly idle). `--deadline S` stops everything S seconds after the start: a training run gets SIGTERM,
checkpoints and exits, and the same command later resumes it (for machines lent in slices of time).

The comparisons (the paper: Zhang et al., CVPR 2023, arXiv 2303.06424):
  quantizers   deterministic VQ, Gumbel-VQ, RegVQ (Table 1, Fig. 1)
  ablation     straight-through argmax -> +prior -> +mask -> +CL -> +PCL, cumulative (Table 2)
  mask         mask ratio 0, 0.2, 0.4, 0.6, 1.0 (Fig. 3; PSNR here, generation FID needs priors)
  codebook     RegVQ with 1,024 and 4,096 codes (Fig. 8)
and, beside the quantizers, RegVQ with the shipped tokenizer's prior schedule (not the paper's), with the mask and
codebook sweeps repeated on it. Runs shared between comparisons are trained once (RegVQ with the defaults is the
last ablation row, mask 0.4 and codebook 1,024).

`gen` measures what a tokenizer gives a prior (the generation side of Fig. 3): for each finished run it encodes
the training images, trains a small unconditional prior on the tokens (same preset, steps and seed for all) and
writes FID, KID and precision/recall of its samples against the reference images to OUT/gen/NAME-KIND.json. The
reference images' statistics are computed once for all runs (OUT/ref-stats-SIZE.safetensors).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REGVQ = [sys.executable, "-m", "regvq_cli"]
FULL = []  # RegVQ with every default: prior, mask 0.4, PCL

# not the paper's: sharper initial logits and a weak prior KL that starts late (the shipped tokenizer's recipe,
# docs/results.md); its schedule is in steps, sized for runs of 1,200-2,000
LATE = ["--logit-init", "30", "--prior-weight", "0.01", "--prior-start", "300", "--prior-ramp", "600"]

RUNS: dict[str, list[str]] = {
    "vq": ["--quantizer", "vq"],
    "gumbel": ["--quantizer", "gumbel"],
    "regvq": FULL,
    "st-argmax": ["--no-prior", "--no-mask", "--contrastive-weight", "0"],
    "plus-prior": ["--no-mask", "--contrastive-weight", "0"],
    "plus-mask": ["--contrastive-weight", "0"],
    "plus-cl": ["--no-pcl"],
    "mask-0.0": ["--mask-ratio", "0"],
    "mask-0.2": ["--mask-ratio", "0.2"],
    "mask-0.6": ["--mask-ratio", "0.6"],
    "mask-1.0": ["--mask-ratio", "1"],
    "codebook-4096": ["--codebook-size", "4096"],
    "regvq-late-prior": LATE,
    # the mask and codebook sweeps again on that recipe: with the paper's prior the codes stay uniform early on
    # (docs/results.md), which leaves the mask nothing to trade
    **{f"late-mask-{r}": [*LATE, "--mask-ratio", r] for r in ("0.0", "0.2", "0.6", "1.0")},
    "late-codebook-4096": [*LATE, "--codebook-size", "4096"],
}

TABLES: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "quantizers": ("Deterministic VQ, Gumbel-VQ and RegVQ",
                   [("VQ", "vq"), ("Gumbel-VQ", "gumbel"), ("RegVQ", "regvq"),
                    ("RegVQ, logits x30, prior 0.01 from step 300 (ours)", "regvq-late-prior")]),
    "ablation": ("Cumulative ablation",
                 [("straight-through argmax", "st-argmax"), ("+ prior", "plus-prior"), ("+ mask", "plus-mask"),
                  ("+ CL", "plus-cl"), ("+ PCL (RegVQ)", "regvq")]),
    "mask": ("Mask ratio",
             [("0", "mask-0.0"), ("0.2", "mask-0.2"), ("0.4", "regvq"), ("0.6", "mask-0.6"), ("1.0", "mask-1.0")]),
    "codebook": ("Codebook size", [("1,024", "regvq"), ("4,096", "codebook-4096")]),
    "mask-late": ("Mask ratio, logits x30 and the late prior",
                  [("0", "late-mask-0.0"), ("0.2", "late-mask-0.2"), ("0.4", "regvq-late-prior"),
                   ("0.6", "late-mask-0.6"), ("1.0", "late-mask-1.0")]),
    "codebook-late": ("Codebook size, logits x30 and the late prior",
                      [("1,024", "regvq-late-prior"), ("4,096", "late-codebook-4096")]),
}


def train_command(args, name: str) -> list[str]:
    return [*REGVQ, "-q", "train-tokenizer", *args.train, "-o", str(Path(args.out) / "runs" / name),
            "--preset", args.preset, "--batch-size", str(args.batch_size), "--lr", str(args.lr),
            "--max-steps", str(args.steps), "--gan-start", "100000000", "--log-every", "50",
            "--sample-every", "100000000", "--checkpoint-every", "500", "--workers", str(args.workers),
            "--seed", str(args.seed), *RUNS[name]]


def eval_command(args, name: str) -> list[str]:
    return [*REGVQ, "-q", "eval", "recon", "--model", str(Path(args.out) / "runs" / name / "model"), args.val,
            "--limit", str(args.eval_limit), "--fid-method", "eigh", "--workers", str(args.workers), "--json"]


def number(metrics: dict, key: str) -> float:
    """A metric, NaN where it is absent or was not computed (rFID/KID on too few images are null)."""
    value = metrics.get(key)
    return float("nan") if value is None else value


def child_env(parallel: int) -> dict:
    """The environment of each command: the CPU cores split between the --parallel runs, so that their CPU work
    (data loading aside: those are separate processes) does not run parallel x cores threads on the cores."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(parallel, 1))))
    return env


def finished(cmd: list[str], deadline: float | None, stdout=None, env=None) -> tuple[bool, str]:
    """Run ``cmd``; at the deadline send it SIGTERM (a training run checkpoints) and return ``(False, "")``.
    Otherwise ``(True, its stdout when stdout=PIPE)``; a failure raises CalledProcessError."""
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.STDOUT if stdout is not subprocess.PIPE else None,
                            text=True, env=env)
    try:
        out, _ = proc.communicate(timeout=None if deadline is None else max(deadline - time.time(), 0.0))
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        proc.communicate()
        return False, ""
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return True, out or ""


def run_chain(args, commands: list[list[str]], log_name: str) -> str | None:
    """Run the commands in turn, all but the last logging to OUT/logs/LOG_NAME.log (each with its start time and
    duration there); the last one's stdout, or None when the deadline stopped one (what was done is kept: the same
    call later resumes)."""
    deadline = args.start + args.deadline if args.deadline else None
    if deadline is not None and time.time() >= deadline:
        return None
    log = Path(args.out) / "logs" / f"{log_name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        for i, cmd in enumerate(commands):
            last = i == len(commands) - 1
            started = time.time()
            print(f"[{time.strftime('%H:%M:%S')}] {command_text(cmd)}", file=f, flush=True)
            done, out = finished(cmd, deadline, stdout=subprocess.PIPE if last else f,
                                 env=child_env(args.parallel))
            print(f"[{time.strftime('%H:%M:%S')}] {'done' if done else 'stopped at the deadline'} after "
                  f"{time.time() - started:.0f} s", file=f, flush=True)
            if not done:
                return None
    return out


def last_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])


def command_text(cmd: list[str]) -> str:
    return shlex.join(["regvq"] + cmd[3:])


def run_one(args, name: str) -> dict | None:
    """Train and evaluate one tokenizer; returns its row (also written to OUT/rows/NAME.json), or None when the
    deadline stopped it first."""
    row_path = Path(args.out) / "rows" / f"{name}.json"
    if row_path.exists():
        return json.loads(row_path.read_text())
    train, evaluate = train_command(args, name), eval_command(args, name)
    result = run_chain(args, [train, evaluate], name)
    if result is None:
        return None
    last = last_metrics(Path(args.out) / "runs" / name)
    row = {"name": name, "flags": RUNS[name], "train_command": command_text(train),
           "eval_command": command_text(evaluate), "train_seconds": round(last["elapsed_s"], 1),
           "final_training_metrics": last, "eval": json.loads(result)}
    row_path.parent.mkdir(parents=True, exist_ok=True)
    row_path.write_text(json.dumps(row, indent=2) + "\n")
    return row


def gen_commands(args, name: str) -> list[list[str]]:
    """Encode the training images with run NAME's tokenizer, train a small unconditional prior on the tokens,
    sample from it and measure the samples against the reference images."""
    out = Path(args.out)
    tokens, prior = out / "tokens" / name, out / "priors" / f"{name}-{args.kind}"
    encode = [*REGVQ, "-q", "encode", *args.train, "-o", str(tokens), "-m", str(out / "runs" / name / "model"),
              "--workers", str(args.workers), "--batch-size", "128"]
    train = [*REGVQ, "-q", "train-prior", str(tokens), "-o", str(prior), "--kind", args.kind,
             "--preset", args.prior_preset, "--cond", "none", "--batch-size", str(args.prior_batch_size),
             "--max-steps", str(args.prior_steps), "--log-every", "50", "--sample-every", "100000000",
             "--checkpoint-every", "500", "--seed", str(args.seed)]
    evaluate = [*REGVQ, "-q", "eval", "gen", "--model", str(prior / "model"), "-n", str(args.samples),
                "--ref", str(ref_stats_path(args)), "--batch-size", "128", "--fid-method", "eigh",
                "--workers", str(args.workers), "--seed", str(args.seed), "--json"]
    return [encode, train, evaluate]


def ref_stats_path(args) -> Path:
    return Path(args.out) / f"ref-stats-{args.ref_size}.safetensors"


def ref_stats_command(args) -> list[str]:
    """The reference images' statistics, computed once for every run's evaluation."""
    return [*REGVQ, "-q", "eval", "gen", "--ref", args.ref or args.train[0], "--save-ref-stats",
            str(ref_stats_path(args)), "--size", str(args.ref_size), "--batch-size", "128",
            "--workers", str(args.workers), "--json"]


def ensure_ref_stats(args) -> bool:
    """Compute the reference statistics unless they exist; False when the deadline came first."""
    if ref_stats_path(args).exists():
        return True
    return run_chain(args, [ref_stats_command(args)], "ref-stats") is not None


def gen_one(args, name: str) -> dict | None:
    """The generation row of tokenizer run NAME (OUT/gen/NAME-KIND.json), or None when the deadline came first."""
    row_path = Path(args.out) / "gen" / f"{name}-{args.kind}.json"
    if row_path.exists():
        return json.loads(row_path.read_text())
    commands = gen_commands(args, name)
    result = run_chain(args, commands, f"{name}-{args.kind}")
    if result is None:
        return None
    row = {"name": name, "kind": args.kind, "ref_stats_command": command_text(ref_stats_command(args)),
           "commands": [command_text(c) for c in commands],
           "prior_final_metrics": last_metrics(Path(args.out) / "priors" / f"{name}-{args.kind}"),
           "eval": json.loads(result)}
    row_path.parent.mkdir(parents=True, exist_ok=True)
    row_path.write_text(json.dumps(row, indent=2) + "\n")
    return row


def run_names(args) -> list[str]:
    names = args.only.split(",") if args.only else list(RUNS)
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        sys.exit(f"unknown run(s) {', '.join(unknown)}; known: {', '.join(RUNS)}")
    return names


def in_pool(args, names: list[str], one, report) -> None:
    """one(args, name) for the named runs, --parallel at a time; report(row) for each finished one."""
    left = []
    with ThreadPoolExecutor(args.parallel) as pool:
        for name, row in zip(names, pool.map(lambda n: one(args, n), names)):
            if row is None:
                left.append(name)
            else:
                print(report(row), file=sys.stderr)
    if left:
        print(f"deadline reached; not finished: {','.join(left)} (run the same command again to resume)",
              file=sys.stderr)


def cmd_run(args) -> None:
    def report(row):
        m = row["eval"]["metrics"]
        return (f"{row['name']}: psnr {m['psnr']:.2f} rfid {number(m, 'rfid'):.1f} "
                f"usage {m['codebook_usage']:.1f}% ({row['train_seconds']} s)")

    in_pool(args, run_names(args), run_one, report)


def cmd_gen(args) -> None:
    def report(row):
        m = row["eval"]["metrics"]
        return f"{row['name']} ({row['kind']} prior): fid {number(m, 'fid'):.1f} kid {number(m, 'kid'):.4f}"

    names = run_names(args)
    ready = [n for n in names if (Path(args.out) / "rows" / f"{n}.json").exists()]
    if len(ready) < len(names):
        print(f"no tokenizer row yet, skipped: {','.join(n for n in names if n not in ready)} "
              "(`results_runs.py run` makes them)", file=sys.stderr)
    if ready and not ensure_ref_stats(args):
        print("deadline reached while computing the reference statistics (run the same command again to resume)",
              file=sys.stderr)
        return
    in_pool(args, ready, gen_one, report)


def cmd_table(args) -> None:
    rows = {p.stem: json.loads(p.read_text()) for p in sorted((Path(args.out) / "rows").glob("*.json"))}
    gens = {p.stem: json.loads(p.read_text()) for p in sorted((Path(args.out) / "gen").glob("*.json"))}
    for title, entries in TABLES.values():
        present = [(label, rows[name]) for label, name in entries if name in rows]
        if not present:
            continue
        print(f"### {title}\n")
        print("| run | rFID | KID | PSNR | SSIM | codebook usage | perplexity | training L1 |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for label, row in present:
            m, t = row["eval"]["metrics"], row["final_training_metrics"]
            print(f"| {label} | {number(m, 'rfid'):.1f} | {number(m, 'kid'):.4f} | "
                  f"{m['psnr']:.2f} | {m['ssim']:.3f} | {m['codebook_usage']:.1f}% | "
                  f"{m['codebook_perplexity']:.0f} | {number(t, 'l1'):.3f} |")
        first = present[0][1]
        protocol = {k: v for k, v in first["eval"]["protocol"].items() if k != "model"}
        steps = first["final_training_metrics"].get("step")
        print(f"\nSteps {steps}, protocol: {json.dumps(protocol, sort_keys=True)}")
        print("Commands: " + "; ".join(f"`{row['train_command']}`" for _, row in present) + "\n")
        generated = [(label, gens[f"{row['name']}-{kind}"], row) for label, row in present
                     for kind in ("ar", "diffusion") if f"{row['name']}-{kind}" in gens]
        if generated:
            print("Generation: a small unconditional prior per tokenizer, its samples against the reference images\n")
            print("| run | prior | FID | KID | precision | recall | prior CE (training) | tokenizer PSNR |")
            print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
            for label, g, row in generated:
                m = g["eval"]["metrics"]
                print(f"| {label} | {g['kind']} | {number(m, 'fid'):.1f} | {number(m, 'kid'):.4f} | "
                      f"{number(m, 'precision'):.3f} | {number(m, 'recall'):.3f} | "
                      f"{number(g['prior_final_metrics'], 'ce'):.3f} | {row['eval']['metrics']['psnr']:.2f} |")
            print("\nCommands, per run: " + "; ".join(f"`{c}`" for c in generated[0][1]["commands"]) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="train and evaluate runs")
    gen = sub.add_parser("gen", help="a small prior per finished run: generation FID/KID/precision/recall")
    for p in (run, gen):  # what both stages take
        p.add_argument("--train", nargs="+", required=True, help="training image folders (gen: encoded)")
        p.add_argument("--out", required=True)
        p.add_argument("--only", default="", help="comma list of run names (default: all)")
        p.add_argument("--parallel", type=int, default=1)
        p.add_argument("--workers", type=int, default=4)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--deadline", type=float, default=None,
                       help="seconds: stop then, checkpointing what is training (the same command resumes it)")
    run.add_argument("--val", required=True, help="held-out image folder")
    run.add_argument("--preset", default="small-f16")
    run.add_argument("--steps", type=int, default=2000)
    run.add_argument("--batch-size", type=int, default=32)
    run.add_argument("--lr", type=float, default=2e-4)
    run.add_argument("--eval-limit", type=int, default=2000)
    gen.add_argument("--ref", default=None, help="reference images for FID (default: the first --train folder)")
    gen.add_argument("--kind", choices=("ar", "diffusion"), default="ar")
    gen.add_argument("--prior-preset", default="ar-small")
    gen.add_argument("--prior-steps", type=int, default=2000)
    gen.add_argument("--prior-batch-size", type=int, default=64)
    gen.add_argument("--samples", type=int, default=2000)
    gen.add_argument("--ref-size", type=int, default=256,
                     help="image size of the reference statistics: the tokenizers' (computed once, OUT/ref-stats-*)")
    table = sub.add_parser("table", help="markdown tables from OUT/rows and OUT/gen")
    table.add_argument("--out", required=True)
    sub.add_parser("list", help="the runs and their flags")
    args = ap.parse_args(argv)
    args.start = time.time()  # --deadline counts from here
    if args.cmd == "run":
        cmd_run(args)
    elif args.cmd == "gen":
        cmd_gen(args)
    elif args.cmd == "table":
        cmd_table(args)
    else:
        for name, flags in RUNS.items():
            print(f"{name}: {shlex.join(flags) or '(the defaults)'}")


if __name__ == "__main__":
    main()
