"""One AR decode step's attention on its own: one query per row against a KV cache of P positions, through each
SDPA backend, without a mask, with the additive mask the decode step passes (one row per batch row), with one
shared mask row, and with the mask carried by the keys ("in-key": one more query/key dimension, padded to 8, that
adds 0 or -1e4 to each score, so no attn_mask is passed), against the bandwidth floor of reading the keys and
values once. Each backend's output is compared with fp32 attention of the same inputs. `--triton` adds the
sampler's own Triton decode kernel (decode_attention.py, which reads exactly the written positions and needs no
mask) per launch config, timed as a CUDA graph of 20 calls.

    python benchmarks/bench_attention.py --rows 512 --positions 64 256 [--heads 12 --head-dim 64] [--json]
    python benchmarks/bench_attention.py --rows 512 --positions 64 256 --cache-len 257   # as the decode step reads
    python benchmarks/bench_attention.py --rows 512 --positions 128 256 --only-triton --triton 64:0:0 128:4:2

`--rows` is the batch times 2 with guidance (`ar-b` at batch 256 with CFG: 512 rows, 12 heads of 64). The mask
rows hide the last quarter of the positions, as a step early in a cache window does. With `--cache-len N` the
keys and values are the first P positions of a cache of N ([2, rows, heads, N, head_dim], one layer of the KV
cache), strided views as the decode step passes them, instead of tensors of their own.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BANDWIDTH = 4.3e12  # bytes/s, H200 HBM3e
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}


def seconds(fn, device, iters: int) -> float:
    for _ in range(3):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def two_matmuls(q, k, v, mask, scale: float | None = None):
    """The reference: scores, softmax in fp32, weighted values."""
    s = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if mask is not None:
        s = s + mask
    return torch.softmax(s.float(), -1).to(q.dtype) @ v


def bias_in_keys(q, k, v, keep, pad: int = 8):
    """The mask carried by the keys instead: one extra query/key dimension (padded to `pad` for the kernels'
    alignment) holding 1 in every query and, in every key, 0 where kept and -1e4 where hidden, so q'.k' = q.k +
    (0 or -1e4) and a hidden key's weight underflows to 0 without an attn_mask. Keys and values grow by pad/hd."""
    def grow(t, fill):
        extra = t.new_zeros(*t.shape[:-1], pad)
        extra[..., 0] = fill
        return torch.cat([t, extra], -1)

    bias = torch.zeros(k.shape[-2], dtype=k.dtype, device=k.device).masked_fill_(~keep, -1e4)
    return grow(q, 1.0), grow(k, bias), grow(v, 0.0)


def rows_for(rows: int, heads: int, positions: int, head_dim: int, device, dtype, iters: int,
             cache_len: int = 0) -> list[dict]:
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(rows, heads, 1, head_dim, device=device, dtype=dtype, generator=g)
    kv = torch.randn(2, rows, heads, max(cache_len, positions), head_dim, device=device, dtype=dtype, generator=g)
    k, v = kv[0, :, :, :positions], kv[1, :, :, :positions]  # [rows, heads, P, hd]; strided when cache_len > P
    keep = torch.arange(positions, device=device) < positions - positions // 4
    shared = torch.zeros(1, 1, 1, positions, device=device, dtype=dtype).masked_fill_(~keep, float("-inf"))
    # the decode step's mask is per row ([rows, 1, 1, P]: text prompts pad differently); without padding one
    # broadcast row ([1, 1, 1, P]) says the same, and may suit a backend better; "in-key" carries it in the keys
    variants = {"no": (q, k, v, None), "per-row": (q, k, v, shared.expand(rows, 1, 1, positions).contiguous()),
                "shared": (q, k, v, shared), "in-key": (*bias_in_keys(q, k, v, keep), None)}
    floor = (k.nbytes + v.nbytes) / BANDWIDTH  # the keys and values of head_dim, read once
    scale = head_dim ** -0.5
    out = []
    for masked, (q_, k_, v_, m) in variants.items():
        # every backend is checked against fp32 attention of the same (unpadded) inputs and mask
        ref_mask = None if masked == "no" else shared.float()
        reference = two_matmuls(q.float(), k.float(), v.float(), ref_mask)
        for name, backend in [*BACKENDS.items(), ("two matmuls", None)]:
            if backend is None:
                def fn(q_=q_, k_=k_, v_=v_, m=m):
                    return two_matmuls(q_, k_, v_, m, scale)[..., :head_dim]
            else:
                def fn(backend=backend, q_=q_, k_=k_, v_=v_, m=m):
                    with sdpa_kernel(backend):
                        return F.scaled_dot_product_attention(q_, k_, v_, attn_mask=m, scale=scale)[..., :head_dim]
            try:
                diff = (fn().float() - reference).abs().max().item()
                s = seconds(fn, device, iters)
            except RuntimeError as e:  # a backend that does not take these inputs (dtype, mask, device)
                out.append({"positions": positions, "mask": masked, "backend": name, "error": str(e).splitlines()[0][:80]})
                continue
            out.append({"positions": positions, "mask": masked, "backend": name, "ms": s * 1e3,
                        "floor_fraction": floor / s, "max_abs_diff": diff})
    return out


def graphed_seconds(fn, device, iters: int, calls: int = 20) -> float:
    """Seconds per call of fn with `calls` calls recorded in one CUDA graph and replayed: the kernels' own time,
    without the host's launch cost (a Triton launch from Python takes longer than a short kernel runs)."""
    fn()
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        fn()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            for _ in range(calls):
                fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    return seconds(graph.replay, device, iters) / calls


def triton_rows(rows: int, heads: int, positions: int, head_dim: int, device, dtype, iters: int,
                configs: list[str], int8: bool = False) -> list[dict]:
    """The sampler's Triton decode kernel (decode_attention.py) attending `positions` keys: positions - 1 cached
    ones plus the step's new key, rotated and appended at position positions - 1 of a cache of positions + 1, no
    mask, for each launch config "BLOCK:WARPS:STAGES" (0 for Triton's default), checked against fp32 attention
    (of the keys and values as the cache holds them: `dtype`, or with `int8` quantized as ar.KVCache stores them,
    the query too).
    On a GPU timed as a CUDA graph of 20 calls, as the sampler replays it."""
    from regvq_cli.priors.ar import dequantize, quantize
    from regvq_cli.priors.decode_attention import decode_attention, rope_table
    from regvq_cli.priors.layers import apply_rope

    g = torch.Generator(device=device).manual_seed(0)
    qkv = torch.randn(rows, 3, heads, head_dim, device=device, dtype=dtype, generator=g)
    cache = torch.randn(2, rows, heads, positions + 1, head_dim, device=device, dtype=dtype, generator=g)
    last = torch.tensor([positions - 1], device=device)
    rope = rope_table(positions + 1, head_dim, 10000.0, device)
    cos, sin = rope[positions - 1]
    q, k_new = (apply_rope(qkv[:, i, :, None], cos, sin) for i in (0, 1))  # [rows, heads, 1, hd]
    keys = torch.cat([cache[0, :, :, :positions - 1], k_new], 2)
    values = torch.cat([cache[1, :, :, :positions - 1], qkv[:, 2, :, None]], 2)
    scales = None
    if int8:  # the cache quantized; the reference attends what it holds, the query, new key and value quantized too
        cache, scale = quantize(cache)
        scales = (scale[0], scale[1])
        q, keys, values = (dequantize(*quantize(x), torch.float32) for x in (q, keys, values))
    reference = two_matmuls(q.float(), keys.float(), values.float(), None)[:, :, 0]
    per_key = 2 * head_dim * cache.element_size() + (8 if int8 else 0)  # a key and a value (and their scales)
    floor = rows * heads * positions * per_key / BANDWIDTH
    out = []
    for config in configs:
        block, warps, stages = (int(x) for x in config.split(":"))

        def fn(block=block, warps=warps, stages=stages):
            return decode_attention(qkv, rope, cache[0], cache[1], last, block=block,
                                    num_warps=warps or None, num_stages=stages or None, scales=scales)

        try:
            diff = (fn().float() - reference).abs().max().item()
            s = graphed_seconds(fn, device, iters) if device.type == "cuda" else seconds(fn, device, iters)
        except Exception as e:  # a config the kernel cannot compile (registers, shared memory)
            out.append({"positions": positions, "mask": "exact", "backend": f"triton {config}",
                        "error": str(e).splitlines()[0][:80]})
            continue
        out.append({"positions": positions, "mask": "exact", "backend": f"triton {config}", "ms": s * 1e3,
                    "floor_fraction": floor / s, "max_abs_diff": diff})
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--positions", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--cache-len", type=int, default=0, metavar="N",
                    help="keys and values as the first P positions of a KV cache of N positions")
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--triton", nargs="*", default=[], metavar="BLOCK:WARPS:STAGES",
                    help="also time the Triton decode kernel with these launch configs (0: Triton's default), "
                         "reading exactly the positions with no mask; e.g. 64:0:0 128:4:2")
    ap.add_argument("--only-triton", action="store_true", help="skip the SDPA backends")
    ap.add_argument("--kv-cache", choices=("model", "int8"), default="model",
                    help="what the Triton kernel's cache holds: --dtype, or int8 with a scale per vector")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    device, dtype = torch.device(a.device), {"bf16": torch.bfloat16, "fp32": torch.float32}[a.dtype]
    results = [r for p in a.positions for r in
               ([] if a.only_triton else rows_for(a.rows, a.heads, p, a.head_dim, device, dtype, a.iters, a.cache_len))
               + triton_rows(a.rows, a.heads, p, a.head_dim, device, dtype, a.iters, a.triton,
                             a.kv_cache == "int8")]
    command = "python benchmarks/bench_attention.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if a.json:
        print(json.dumps({"device": str(device), "torch": torch.__version__, "rows": a.rows, "heads": a.heads,
                          "head_dim": a.head_dim, "cache_len": a.cache_len, "dtype": a.dtype,
                          "kv_cache": a.kv_cache, "results": results,
                          "command": command}, indent=2))
        return
    print(f"{device} {a.dtype} torch {torch.__version__}: {a.rows} rows x {a.heads} heads x {a.head_dim}, one query")
    print(f"{'positions':>9}  {'mask':>7}  {'backend':<12} {'ms':>8}  {'floor':>6}  {'max |diff|':>10}")
    for r in results:
        tail = r["error"] if "error" in r else f"{r['ms']:8.4f}  {r['floor_fraction']:6.1%}  {r['max_abs_diff']:10.2e}"
        print(f"{r['positions']:>9}  {r['mask']:>7}  {r['backend']:<12} {tail}")
    print(f"command: {command}")


if __name__ == "__main__":
    main()
