"""An AR decode step's linear layers at a few rows: `rows_linear` (decode_attention.py's Triton kernel, with the
residual add and norm or SwiGLU's silu(gate) * up folded in) per launch config, against what the step runs for
more rows (the add_rms_norm kernel or silu * up, then cuBLAS through F.linear), for each layer of a prior preset,
against the floor of reading the layer's weight once.

    python benchmarks/bench_decode_linear.py --preset ar-b --rows 1 2 4 8 --configs 4:256:4 2:256:4 8:256:4 4:512:4

A config is BLOCK_N:BLOCK_K:WARPS (outputs a program, inputs a loop iteration, warps). Each layer is timed as a
CUDA graph of calls over copies of its weight that together outgrow the GPU's L2 cache (--l2-mb), as a step
reads every weight from memory once. Rows above decode_attention.FEW_ROWS are timed too, for the comparison (the
step runs them the other way). max |diff| is against float32 arithmetic on the same inputs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F

BANDWIDTH = 4.3e12  # bytes/s, H200 HBM3e


def layers(cfg) -> list[tuple[str, int, int, str]]:
    """(name, out features N, in features K, what comes before) of one block's linear layers and the head."""
    from regvq_cli.priors.layers import mlp_hidden

    d, hidden = cfg.dim, mlp_hidden(cfg.dim, cfg.mlp_ratio)
    return [("qkv", 3 * d, d, "add+norm"), ("proj", d, d, "none"), ("gate_up", 2 * hidden, d, "add+norm"),
            ("down", d, hidden, "swiglu"), ("head", cfg.codebook_size, d, "add+norm")]


def seconds(fn, device, iters: int) -> float:
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def graphed_seconds(calls, device, iters: int) -> float:
    """Seconds per call of the zero-argument functions `calls`, recorded in order in one CUDA graph and replayed."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for fn in calls:  # (a capture needs its kernels compiled and warmed on its stream first)
            fn()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            for fn in calls:
                fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    return seconds(graph.replay, device, iters) / len(calls)


def layer_rows(name: str, N: int, K: int, before: str, rows: int, device, dtype, configs: list[str], iters: int,
               l2_bytes: int) -> list[dict]:
    from regvq_cli.priors.decode_attention import add_rms_norm, rows_linear

    g = torch.Generator(device=device).manual_seed(0)
    copies = max(1, math.ceil(2 * l2_bytes / (N * K * 2))) if device.type == "cuda" else 1
    weights = [torch.randn(N, K, device=device, dtype=dtype, generator=g) * K ** -0.5 for _ in range(copies)]
    x = torch.randn(rows, 2 * K if before == "swiglu" else K, device=device, dtype=dtype, generator=g)
    y = torch.randn(rows, K, device=device, dtype=dtype, generator=g)
    gain = torch.rand(K, device=device, dtype=dtype, generator=g) + 0.5
    eps = 1e-5

    def reference(w):  # float32 arithmetic on the same inputs
        a = {"none": lambda: x.float(), "swiglu": lambda: F.silu(x[:, :K].float()) * x[:, K:].float(),
             "add+norm": lambda: F.rms_norm(x.float() + y.float(), (K,), gain.float(), eps)}[before]()
        return a @ w.float().t()

    def torch_way(w):  # what the step runs for more rows
        if before == "add+norm":
            return F.linear(add_rms_norm(x, y, gain, eps)[1], w)
        if before == "swiglu":
            return F.linear(F.silu(x[:, :K]) * x[:, K:], w)
        return F.linear(x, w)

    def triton_way(w, config):
        block_n, block_k, warps = (int(v) for v in config.split(":"))
        opts = dict(block_n=block_n, block_k=block_k, num_warps=warps)
        if before == "add+norm":
            return rows_linear(x, w, norm=gain, add=y, eps=eps, **opts)[1]
        return rows_linear(x, w, glu=before == "swiglu", **opts)

    floor = N * K * dtype.itemsize / BANDWIDTH
    out = []
    for impl, fn in [("torch", torch_way)] + [(f"triton {c}", lambda w, c=c: triton_way(w, c)) for c in configs]:
        row = {"layer": name, "N": N, "K": K, "before": before, "rows": rows, "impl": impl}
        try:
            row["max_abs_diff"] = (fn(weights[0]).float() - reference(weights[0])).abs().max().item()
            calls = [lambda w=w: fn(w) for w in weights]
            s = graphed_seconds(calls, device, iters) if device.type == "cuda" else seconds(calls[0], device, iters)
        except Exception as e:  # a launch the kernel cannot compile (registers, shared memory)
            out.append({**row, "error": str(e).splitlines()[0][:80]})
            continue
        out.append({**row, "us": s * 1e6, "floor_fraction": floor / s})
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="ar-b", help="the AR prior preset whose layer shapes are timed")
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--configs", nargs="+", default=["4:256:4"], metavar="BLOCK_N:BLOCK_K:WARPS")
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--iters", type=int, default=20, help="graph replays timed (each calls every weight copy)")
    ap.add_argument("--l2-mb", type=float, default=60.0, help="the GPU's L2 cache, which the weight copies outgrow")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    from regvq_cli.priors.presets import preset

    device, dtype = torch.device(a.device), {"bf16": torch.bfloat16, "fp32": torch.float32}[a.dtype]
    results = [r for shape in layers(preset(a.preset)) for rows in a.rows
               for r in layer_rows(*shape, rows, device, dtype, a.configs, a.iters, int(a.l2_mb * 2 ** 20))]
    command = "python benchmarks/bench_decode_linear.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if a.json:
        print(json.dumps({"device": str(device), "torch": torch.__version__, "preset": a.preset, "dtype": a.dtype,
                          "results": results, "command": command}, indent=2))
        return
    print(f"{device} {a.dtype} torch {torch.__version__}: {a.preset}'s linear layers")
    print(f"{'layer':<8} {'rows':>4}  {'before':<8} {'impl':<16} {'us':>8}  {'floor':>6}  {'max |diff|':>10}")
    for r in results:
        tail = r["error"] if "error" in r else f"{r['us']:8.2f}  {r['floor_fraction']:6.1%}  {r['max_abs_diff']:10.2e}"
        print(f"{r['layer']:<8} {r['rows']:>4}  {r['before']:<8} {r['impl']:<16} {tail}")
    print(f"command: {command}")


if __name__ == "__main__":
    main()
