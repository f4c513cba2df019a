"""The compiled tokenizer with inductor's store-or-recompute threshold changed, patched into the benchmark's
process: `realize_reads_threshold` (default 4) is how many buffer reads a pointwise value with several users may
have before inductor stores it instead of recomputing it in each user. A residual sum (skip + conv output +
bias, 3 reads) feeds the next block's GroupNorm statistics, its normalising pass and the next sum, so each of
them reads the two full-resolution inputs again; stored once, they read one.

    REGVQ_REALIZE_READS=1 PYTHONPATH=.:docs/h200/2026-11-30 python3 -c "import realize.realize as r; r.run()" \
      benchmarks/bench_tokenizer.py --preset vqgan-f16 --batch-size 128 --dtype bf16 --compile --json

The patched function lives in this module (not __main__), whose globals dynamo's guards can find under runpy.
"""
import os
import runpy
import sys

import regvq_cli.engine.runtime as runtime

PACKAGE_OPTIONS = runtime.compile_options


def compile_options() -> dict:
    return {**PACKAGE_OPTIONS(), "realize_reads_threshold": int(os.environ["REGVQ_REALIZE_READS"])}


def run():
    """Patch the runner's inductor options (unless REGVQ_REALIZE_READS is empty), then run sys.argv[1:] as a
    script."""
    if os.environ.get("REGVQ_REALIZE_READS"):
        runtime.compile_options = compile_options
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
