"""On a GPU: the int8 decode attention with the kernel's own byte-to-float conversion against permute.py's.

    PYTHONPATH=. python docs/h200/2026-11-30/int8_unpack/probe.py [--permute] --output FILE
        writes the kernel's output and the key and value it cached, on fixed inputs (512 rows, 12 heads, 256
        positions; ROWS=N fewer rows), for a bitwise comparison of the two conversions (both are exact: they
        must agree)
    PYTHONPATH=. python docs/h200/2026-11-30/int8_unpack/probe.py [--permute] SCRIPT ARGS...
        runs SCRIPT (benchmarks/bench_attention.py, bench_sample.py) with that conversion

Each conversion needs a process of its own (the patch must come before Triton first compiles the kernel).
"""
import os, runpy, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
args = sys.argv[1:]
if args and args[0] == "--permute":
    __import__("permute").patch()
    args = args[1:]
if args[:1] == ["--output"]:
    import torch

    from regvq_cli.priors.ar import quantize
    from regvq_cli.priors.decode_attention import decode_attention, rope_table

    rows, heads, positions, hd = int(os.environ.get("ROWS", 512)), 12, 256, 64
    dev = torch.device(os.environ.get("DEVICE", "cuda"))  # DEVICE=cpu with TRITON_INTERPRET=1: the own conversion
    g = torch.Generator(device=dev).manual_seed(0)
    qkv = torch.randn(rows, 3, heads, hd, device=dev, dtype=torch.bfloat16, generator=g)
    cache, scale = quantize(torch.randn(2, rows, heads, positions + 1, hd, device=dev, dtype=torch.bfloat16,
                                        generator=g))
    last = torch.tensor([positions - 1], device=dev)
    out = decode_attention(qkv, rope_table(positions + 1, hd, 10000.0, dev), cache[0], cache[1], last,
                           block=64, num_warps=1, num_stages=2, scales=(scale[0], scale[1]))
    torch.save({"out": out.cpu(), "cached": cache[:, :, :, positions - 1].cpu(),
                "scales": scale[:, :, :, positions - 1].cpu()}, args[1])
else:
    sys.argv = args
    sys.path.insert(0, os.path.dirname(os.path.abspath(args[0])))
    runpy.run_path(args[0], run_name="__main__")
