"""On a GPU: the int8 decode attention as it is, against permute.py's conversion and dp4a.py's int8 query.

    PYTHONPATH=. python docs/h200/2026-11-30/int8_unpack/probe.py [--permute] [--dp4a] --output FILE
        writes the kernel's output and the key and value it cached, on fixed inputs (512 rows, 12 heads, 256
        positions; ROWS=N fewer rows), with a float32 reference (the query quantized too with --dp4a) and the
        output's largest difference from it; the kernel's own conversion and permute.py's must agree bitwise
    PYTHONPATH=. python docs/h200/2026-11-30/int8_unpack/probe.py [--permute] [--dp4a] SCRIPT ARGS...
        runs SCRIPT (benchmarks/bench_attention.py, bench_sample.py) with that kernel

Each variant needs a process of its own (the patch must come before Triton first compiles the kernel). DEVICE=cpu
with TRITON_INTERPRET=1 runs --output through Triton's interpreter (not --permute: it cannot run PTX).
"""
import os, runpy, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
args = sys.argv[1:]
variants = []
while args and args[0] in ("--permute", "--dp4a"):  # permute first: dp4a takes the conversion it finds
    variants.append(args.pop(0)[2:])
for name in sorted(variants, key=("permute", "dp4a").index):
    __import__(name).patch()
if args[:1] == ["--output"]:
    import torch

    from regvq_cli.priors.ar import dequantize, quantize
    from regvq_cli.priors.decode_attention import decode_attention, rope_table
    from regvq_cli.priors.layers import apply_rope

    rows, heads, positions, hd = int(os.environ.get("ROWS", 512)), 12, 256, 64
    dev = torch.device(os.environ.get("DEVICE", "cuda"))
    g = torch.Generator(device=dev).manual_seed(0)
    qkv = torch.randn(rows, 3, heads, hd, device=dev, dtype=torch.bfloat16, generator=g)
    cache, scale = quantize(torch.randn(2, rows, heads, positions + 1, hd, device=dev, dtype=torch.bfloat16,
                                        generator=g))
    rope = rope_table(positions + 1, hd, 10000.0, dev)
    # the reference, from the cache before the kernel writes the new key and value into it
    q, k_new = (apply_rope(qkv[:, i, :, None], rope[positions - 1, 0], rope[positions - 1, 1]) for i in (0, 1))
    if "dp4a" in variants:
        q = dequantize(*quantize(q), torch.float32)
    keys, values = (torch.cat([dequantize(cache[i, :, :, :positions - 1], scale[i, :, :, :positions - 1],
                                          torch.float32), dequantize(*quantize(new), torch.float32)], 2)
                    for i, new in ((0, k_new), (1, qkv[:, 2, :, None])))
    weights = (q.float() @ keys.transpose(-1, -2) / hd ** 0.5).softmax(-1)
    reference = (weights @ values)[:, :, 0]  # [rows, heads, hd]
    last = torch.tensor([positions - 1], device=dev)
    out = decode_attention(qkv, rope, cache[0], cache[1], last, block=64, num_warps=1, num_stages=2,
                           scales=(scale[0], scale[1]))
    print("largest difference from the float32 reference:", (out.float() - reference).abs().max().item())
    torch.save({"out": out.cpu(), "cached": cache[:, :, :, positions - 1].cpu(),
                "scales": scale[:, :, :, positions - 1].cpu(), "reference": reference.cpu()}, args[1])
else:
    sys.argv = args
    sys.path.insert(0, os.path.dirname(os.path.abspath(args[0])))
    runpy.run_path(args[0], run_name="__main__")
