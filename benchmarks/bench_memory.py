"""Resident memory of `regvq encode` against the number of input files: it should stay flat.

    python benchmarks/bench_memory.py --counts 20000 100000 --work /tmp/memtest

Makes a folder of N hard links to a small PNG (N files to list, decode and encode, no disk cost; a new copy every
50,000 links, under the file systems' cap), encodes it with the tiny test tokenizer in a subprocess, and reports
that process's peak resident set (VmHWM, main process; decoding workers are separate processes of constant size)
and its resident set sampled every 0.2 s over the second half of the run (median and maximum): the peak of one
run is a single spike of the allocator's sawtooth, more likely higher the longer the run; the late samples show
whether the set grows with the files.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


LINKS_PER_FILE = 50_000


def make_folder(root: Path, n: int) -> Path:
    from PIL import Image

    folder = root / f"links-{n}"
    if folder.exists() and sum(1 for _ in os.scandir(folder)) == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i in range(n):
        if i % LINKS_PER_FILE == 0:  # a file system caps the links to one file (ext4: 65,000)
            source = root / f"{folder.name}-{i // LINKS_PER_FILE}.png"  # a folder's own copies
            if not source.exists():
                Image.new("RGB", (40, 40), (200, 30, 30)).save(source)
        os.link(source, folder / f"{i:09d}.png")
    return folder


def vm_rss_kb(pid: int) -> int | None:
    """The resident set of a running process (Linux), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return int(next(line for line in f if line.startswith("VmRSS")).split()[1])
    except (OSError, StopIteration):
        return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", type=int, nargs="+", default=[20000, 100000])
    p.add_argument("--work", type=Path, default=Path("/tmp/regvq-memtest"))
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)

    import torch

    from regvq_cli.engine.checkpoint import save_model
    from regvq_cli.tokenizer.model import Tokenizer
    from regvq_cli.tokenizer.presets import PRESETS

    args.work.mkdir(parents=True, exist_ok=True)
    model = save_model(Tokenizer(PRESETS["tok-test"]), args.work / "tok")
    print(f"{'files':>10}{'peak RSS MB':>13}{'late median':>12}{'late max':>11}{'seconds':>9}{'images/s':>10}")
    for n in args.counts:
        folder = make_folder(args.work, n)
        out = args.work / f"tokens-{n}"
        shutil.rmtree(out, ignore_errors=True)
        code = ("import sys, resource; from regvq_cli.cli import main\n"
                "try:\n    main()\nexcept SystemExit as e:\n"
                "    print('VmHWM', [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1],"
                " file=sys.stderr); raise")
        t = time.perf_counter()
        with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: nothing blocks while the loop polls
            proc = subprocess.Popen([sys.executable, "-c", code, "-q", "encode", str(folder), "-o", str(out), "-m",
                                     str(model), "--batch-size", "256", "--workers", str(args.workers),
                                     "--shard-size", "8192"], stderr=log, env={**os.environ, "OMP_NUM_THREADS": "1"})
            samples = []  # (seconds, resident MB) every 0.2 s
            while proc.poll() is None:
                kb = vm_rss_kb(proc.pid)
                if kb:
                    samples.append((time.perf_counter() - t, kb / 1024))
                time.sleep(0.2)
            seconds = time.perf_counter() - t
            log.seek(0)
            stderr = log.read()
        if proc.returncode != 0:
            sys.exit(stderr)
        peak_kb = int(next(line for line in stderr.splitlines() if line.startswith("VmHWM")).split()[1])
        late = [mb for s, mb in samples if s > seconds / 2] or [0.0]
        print(f"{n:>10}{peak_kb / 1024:>13.0f}{statistics.median(late):>12.0f}{max(late):>11.0f}{seconds:>9.1f}"
              f"{n / seconds:>10.0f}")
        shutil.rmtree(out)
    print(f"torch {torch.__version__}; command: {' '.join(['python'] + sys.argv)}")


if __name__ == "__main__":
    main()
