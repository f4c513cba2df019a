"""Train and evaluate the tokenizers behind docs/results.md's comparisons, at equal steps, seed, data and network.

    python benchmarks/results_runs.py run --train DIR [DIR...] --val DIR --out results/ [--only a,b] [--parallel 3]
        [--preset small-f16] [--steps 2000] [--batch-size 32] [--workers 16] [--eval-limit 2000] [--deadline S]
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
and, beside the quantizers, RegVQ with the shipped tokenizer's prior schedule (not the paper's).
Runs shared between comparisons are trained once (RegVQ with the defaults is the last ablation row, mask 0.4
and codebook 1,024).
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REGVQ = [sys.executable, "-m", "regvq_cli"]
FULL = []  # RegVQ with every default: prior, mask 0.4, PCL

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
    # not the paper's: sharper initial logits and a weak prior KL that starts late (the shipped tokenizer's recipe,
    # docs/results.md); its schedule is in steps, sized for runs of about 2,000
    "regvq-late-prior": ["--logit-init", "30", "--prior-weight", "0.01", "--prior-start", "300", "--prior-ramp", "600"],
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


def finished(cmd: list[str], deadline: float | None, stdout=None) -> tuple[bool, str]:
    """Run ``cmd``; at the deadline send it SIGTERM (a training run checkpoints) and return ``(False, "")``.
    Otherwise ``(True, its stdout when stdout=PIPE)``; a failure raises CalledProcessError."""
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.STDOUT if stdout is not subprocess.PIPE else None,
                            text=True)
    try:
        out, _ = proc.communicate(timeout=None if deadline is None else max(deadline - time.time(), 0.0))
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        proc.communicate()
        return False, ""
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return True, out or ""


def run_one(args, name: str) -> dict | None:
    """Train and evaluate one run; returns its row (also written to OUT/rows/NAME.json), or None when the deadline
    stopped it first (its checkpoint is kept: the next call resumes it)."""
    row_path = Path(args.out) / "rows" / f"{name}.json"
    if row_path.exists():
        return json.loads(row_path.read_text())
    deadline = args.start + args.deadline if args.deadline else None
    if deadline is not None and time.time() >= deadline:
        return None
    log = Path(args.out) / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    train, evaluate = train_command(args, name), eval_command(args, name)
    with open(log, "a") as f:
        if not finished(train, deadline, stdout=f)[0]:
            return None
    done, result = finished(evaluate, deadline, stdout=subprocess.PIPE)
    if not done:
        return None
    metrics_file = Path(args.out) / "runs" / name / "metrics.jsonl"
    last = json.loads(metrics_file.read_text().splitlines()[-1])
    row = {"name": name, "flags": RUNS[name], "train_command": shlex.join(["regvq"] + train[3:]),
           "eval_command": shlex.join(["regvq"] + evaluate[3:]), "train_seconds": round(last["elapsed_s"], 1),
           "final_training_metrics": last, "eval": json.loads(result)}
    row_path.parent.mkdir(parents=True, exist_ok=True)
    row_path.write_text(json.dumps(row, indent=2) + "\n")
    return row


def cmd_run(args) -> None:
    names = args.only.split(",") if args.only else list(RUNS)
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        sys.exit(f"unknown run(s) {', '.join(unknown)}; known: {', '.join(RUNS)}")
    args.start = time.time()
    left = []
    with ThreadPoolExecutor(args.parallel) as pool:
        for name, row in zip(names, pool.map(lambda n: run_one(args, n), names)):
            if row is None:
                left.append(name)
                continue
            m = row["eval"]["metrics"]
            print(f"{row['name']}: psnr {m['psnr']:.2f} rfid {number(m, 'rfid'):.1f} "
                  f"usage {m['codebook_usage']:.1f}% ({row['train_seconds']} s)", file=sys.stderr)
    if left:
        print(f"deadline reached; not finished: {','.join(left)} (run the same command again to resume)",
              file=sys.stderr)


def cmd_table(args) -> None:
    rows = {p.stem: json.loads(p.read_text()) for p in sorted((Path(args.out) / "rows").glob("*.json"))}
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
        print(f"\nSteps {first['final_training_metrics'].get('step')}, protocol: {json.dumps(protocol, sort_keys=True)}")
        print("Commands: " + "; ".join(f"`{row['train_command']}`" for _, row in present) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="train and evaluate runs")
    run.add_argument("--train", nargs="+", required=True, help="training image folders")
    run.add_argument("--val", required=True, help="held-out image folder")
    run.add_argument("--out", required=True)
    run.add_argument("--only", default="", help="comma list of run names (default: all)")
    run.add_argument("--parallel", type=int, default=1)
    run.add_argument("--preset", default="small-f16")
    run.add_argument("--steps", type=int, default=2000)
    run.add_argument("--batch-size", type=int, default=32)
    run.add_argument("--lr", type=float, default=2e-4)
    run.add_argument("--workers", type=int, default=4)
    run.add_argument("--eval-limit", type=int, default=2000)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--deadline", type=float, default=None,
                     help="seconds: stop then, checkpointing the runs in progress (resumed by the same command)")
    table = sub.add_parser("table", help="markdown tables from OUT/rows")
    table.add_argument("--out", required=True)
    sub.add_parser("list", help="the runs and their flags")
    args = ap.parse_args(argv)
    if args.cmd == "run":
        cmd_run(args)
    elif args.cmd == "table":
        cmd_table(args)
    else:
        for name, flags in RUNS.items():
            print(f"{name}: {shlex.join(flags) or '(the defaults)'}")


if __name__ == "__main__":
    main()
