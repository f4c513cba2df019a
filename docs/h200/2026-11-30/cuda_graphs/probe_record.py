"""How the tokenizer runner records its CUDA graph, inside `regvq encode`'s loop: variants of `_Graphed._capture`
patched into one process each, over the same JPEGs, each run's tokens compared with an eager run's.

    OUT=... PYTHONPATH=. python docs/h200/2026-11-30/cuda_graphs/probe_record.py JPEG_DIR VARIANT [encode options]

VARIANT: eager (--no-cuda-graphs); context (torch.cuda.graph, as the package first did: it also empties the
device's and the pinned host memory's caches); context_global (the same, capture_error_mode="global"); manual
(capture_begin / capture_end on the warm-up's stream after a device synchronize, no cache emptied); manual_host (the
same, the pinned host cache emptied as torch.cuda.graph does). Prints one JSON line. (The runs in results/ patched
the whole of `_record`, warm-up and recording, before the recording became a method of its own; the warm-up was
the package's then as now.)
"""

import json
import os
import sys
import time

import torch

from regvq_cli.engine import runtime


def capture(variant):
    """`_Graphed._capture` in the variant's way (the warm-up before it is the package's)."""
    def _capture(self, graph, stream, static_in):
        if variant.startswith("context"):
            mode = "global" if variant == "context_global" else "thread_local"
            with torch.cuda.graph(graph, stream=stream, capture_error_mode=mode):
                return self.fn(static_in)
        torch.cuda.synchronize(static_in.device)
        torch.cuda.empty_cache()
        if variant == "manual_host":
            torch._C._host_emptyCache()
        with torch.cuda.stream(stream):
            graph.capture_begin(capture_error_mode="thread_local")
            out = self.fn(static_in)
            graph.capture_end()
        return out
    return _capture


def main():
    jpegs, variant, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
    out = os.path.join(os.environ.get("OUT", "/tmp"), f"tokens_{variant}")
    if variant != "eager":
        runtime._Graphed._capture = capture(variant)
    from click.testing import CliRunner

    from regvq_cli.cli import cli

    t = time.perf_counter()
    args = ["-q", "encode", jpegs, "-o", out, "--json", *extra] + (["--no-cuda-graphs"] if variant == "eager" else [])
    r = CliRunner().invoke(cli, args, catch_exceptions=True)
    row = {"variant": variant, "exit": r.exit_code, "seconds": round(time.perf_counter() - t, 2)}
    try:
        row["images_per_s"] = json.loads(r.stdout)["images_per_s"]
    except Exception:  # noqa: BLE001
        row["output"] = (r.stdout_bytes + (r.stderr_bytes or b"")).decode()[-600:] + repr(r.exception)[:300]
    eager = os.path.join(os.environ.get("OUT", "/tmp"), "tokens_eager")
    if variant != "eager" and r.exit_code == 0 and os.path.isdir(eager):
        from safetensors.numpy import load_file
        names = sorted(f for f in os.listdir(eager) if f.startswith("shard-"))
        row["shards_equal"] = sum(
            bool((load_file(os.path.join(eager, f))["tokens"] == load_file(os.path.join(out, f))["tokens"]).all())
            for f in names)
        row["shards"] = len(names)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
