"""The tokenizer's single-head attention (vqgan-f16: 16x16 positions, 512 channels, batch 128) on an H200: which
SDPA backend torch picks for bf16 q, k, v of head width 512, what each backend and an explicit bf16 form take, and
their largest error against float32; then the whole compiled encode and decode with cuDNN's autotuning off and on.
Writes $OUT/tok_attention.json.

    OUT=results PYTHONPATH=. python docs/h200/2026-11-30/probe_tok_attention.py
"""
import json, os, sys, time
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

dev = torch.device("cuda")
res = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0)}
B, C, H = 128, 512, 16
qkv = torch.randn(B, 3 * C, H, H, device=dev, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
q, k, v = (t.reshape(B, 1, C, H * H).transpose(2, 3) for t in qkv.chunk(3, dim=1))  # as AttnBlock makes them
ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
try:
    res["fused_sdp_choice"] = int(torch._fused_sdp_choice(q, k, v))
except Exception as e:  # noqa: BLE001
    res["fused_sdp_choice"] = repr(e)


def bench(fn, n=50):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(n):
        fn()
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e) / n


def explicit(q, k, v):
    w = torch.matmul(q, k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
    return torch.matmul(w.softmax(-1).to(v.dtype), v)


rows = {}
for name, fn in {
    "sdpa_default": lambda: F.scaled_dot_product_attention(q, k, v),
    "math": lambda: _with(SDPBackend.MATH),
    "efficient": lambda: _with(SDPBackend.EFFICIENT_ATTENTION),
    "cudnn": lambda: _with(SDPBackend.CUDNN_ATTENTION),
    "flash": lambda: _with(SDPBackend.FLASH_ATTENTION),
    "efficient_contiguous": lambda: _with(SDPBackend.EFFICIENT_ATTENTION, contiguous=True),
    "explicit_bf16": lambda: explicit(q, k, v),
    "explicit_compiled": lambda: _compiled(q, k, v),
}.items():
    def _with(backend, contiguous=False):
        a = [t.contiguous() for t in (q, k, v)] if contiguous else (q, k, v)
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(*a)
    try:
        if name == "explicit_compiled":
            _compiled = torch.compile(explicit)
        out = fn()
        rows[name] = {"ms": round(bench(fn), 4), "max_err": float((out.float() - ref).abs().max())}
    except Exception as e:  # noqa: BLE001
        rows[name] = {"error": repr(e)[:300]}
    print(name, rows[name], flush=True)
res["attention_b128"] = rows
torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(True)
try:
    with sdpa_kernel(SDPBackend.MATH):
        out = F.scaled_dot_product_attention(q, k, v)
        res["attention_b128"]["math_bf16_reduction"] = {
            "ms": round(bench(lambda: F.scaled_dot_product_attention(q, k, v)), 4),
            "max_err": float((out.float() - ref).abs().max())}
except Exception as e:  # noqa: BLE001
    res["attention_b128"]["math_bf16_reduction"] = {"error": repr(e)[:300]}
torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(False)
print(res["attention_b128"].get("math_bf16_reduction"), flush=True)

sys.path.insert(0, "benchmarks")
import bench_tokenizer  # noqa: E402
import contextlib, io  # noqa: E402

for label, flag in (("cudnn_benchmark_off", False), ("cudnn_benchmark_on", True)):
    torch.backends.cudnn.benchmark = flag
    buf = io.StringIO()
    t = time.time()
    with contextlib.redirect_stdout(buf):
        bench_tokenizer.main(["--preset", "vqgan-f16", "--batch-size", "128", "--dtype", "bf16", "--compile",
                              "--json"])
    r = json.loads(buf.getvalue())
    res[label] = {"rows": r["rows"], "peak_memory_gib": r["peak_memory_gib"], "wall_s": round(time.time() - t, 1)}
    print(label, res[label], flush=True)
    json.dump(res, open(os.path.join(os.environ["OUT"], "tok_attention.json"), "w"), indent=1)
