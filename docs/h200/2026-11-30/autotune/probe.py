"""Compiled vqgan-f16 encode at batch 128 (bf16, H200) as the runner compiles it, then with inductor's max-autotune
(its Triton convolution templates compete with cuDNN, and a pointwise producer can fuse into a template's
prologue, which would put GroupNorm's normalising pass into the convolution that reads it). Reports images/s,
token agreement with the plain compile, the GPU's clocks, and the costliest kernels of one call.
    OUT=results PYTHONPATH=. python docs/h200/2026-11-30/autotune/probe.py"""
import json
import os
import sys
import time

import torch

sys.path.insert(0, "benchmarks")
from bench_tokenizer import busy_gpu_state, timed as bench_timed  # noqa: E402

import regvq_cli.engine.runtime as runtime  # noqa: E402
from regvq_cli.tokenizer.model import Tokenizer  # noqa: E402
from regvq_cli.tokenizer.presets import PRESETS  # noqa: E402

B = 128
dev = torch.device("cuda")
torch.manual_seed(0)
images = torch.rand(B, 3, 256, 256, device=dev) * 2 - 1
plain_options = runtime.compile_options


def timed(fn):
    """Seconds per call of fn(), as the benchmark times it: median of 10 after 3."""
    return bench_timed(lambda _: fn(), None, dev, 10, 3)


def top_kernels(fn, n=12):
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    rows = [(e.key, e.device_time_total / 1e3, e.count) for e in prof.key_averages()]
    rows.sort(key=lambda r: -r[1])
    return [{"name": k[:110], "ms": round(ms, 3), "calls": c} for k, ms, c in rows[:n]]


rows, ref = [], None
for name, extra in [("compiled as now", {}), ("max-autotune", {"max_autotune": True})]:
    runtime.compile_options = lambda extra=extra: {**plain_options(), **extra}
    t0 = time.perf_counter()
    runner = runtime.prepare_tokenizer(Tokenizer(PRESETS["vqgan-f16"]), dev, torch.bfloat16, compile=True)
    torch.manual_seed(0)
    runner.model.load_state_dict(Tokenizer(PRESETS["vqgan-f16"]).state_dict())  # the same weights each time
    with torch.inference_mode():
        tok = runner.encode(images)
        compile_s = time.perf_counter() - t0
        ref = tok if ref is None else ref
        t = timed(lambda: runner.encode(images))
        row = {"variant": name, "images_per_s": round(B / t, 1), "compile_s": round(compile_s, 1),
               "token_agreement": (tok == ref).float().mean().item(),
               "gpu_state": busy_gpu_state(runner.encode, images, dev),
               "top_kernels": top_kernels(lambda: runner.encode(images))}
        row["images_per_s_again"] = round(B / timed(lambda: runner.encode(images)), 1)
    rows.append(row)
    print(json.dumps(row), flush=True)
    json.dump({"batch_size": B, "torch": torch.__version__, "rows": rows},
              open(os.path.join(os.environ.get("OUT", "."), "autotune.json"), "w"), indent=2)
