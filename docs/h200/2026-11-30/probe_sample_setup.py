"""Where a fresh sample_ar call's time goes (before the second step, then per replayed step; CUDA events recorded
from the callback), and the compiled vqgan-f16 tokenizer with and without CUDA graphs (mode="reduce-overhead") at
batch 64 and 128. H200 only; writes $OUT/probe1.json (kept as sample_ar_setup_split.json).

    OUT=results PYTHONPATH=. python docs/h200/2026-11-30/probe_sample_setup.py
"""
import dataclasses, json, sys, time
import torch
from regvq_cli.priors.presets import model_for, preset
from regvq_cli.priors.sampling import sample_ar

dev = torch.device("cuda")
res = {}

def ar_probe(model, b, cfg, kv):
    cond = torch.arange(b, device=dev) % 10
    N = 256
    ev = {}
    def cb(d):
        i = d["i"]
        if i in (1, N - 1):
            e = torch.cuda.Event(enable_timing=True); e.record(); ev[i] = e
    kw = dict(cfg=cfg, top_k=0, cuda_graphs=True, compile=True, attention="triton", kv_dtype=kv)
    sample_ar(model, cond, b, **kw)
    out = []
    for rep in range(3):
        torch.cuda.synchronize()
        s = torch.cuda.Event(enable_timing=True); s.record()
        t = time.perf_counter()
        sample_ar(model, cond, b, callback=cb, **kw)
        e = torch.cuda.Event(enable_timing=True); e.record()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t) * 1000
        loop = ev[1].elapsed_time(ev[N - 1])  # N-2 replays
        out.append({"wall_ms": round(wall, 2), "gpu_ms": round(s.elapsed_time(e), 2),
                    "start_to_step1_ms": round(s.elapsed_time(ev[1]), 2),
                    "replay_ms_per_step": round(loop / (N - 2), 4),
                    "loop_ms_extrapolated": round(loop / (N - 2) * N, 2),
                    "last_ms": round(ev[N - 1].elapsed_time(e), 2)})
    return out

with torch.inference_mode():
    cfgp = dataclasses.replace(preset("ar-b"), cond="class", num_classes=10, codebook_size=1024)
    model = model_for(cfgp).to(device=dev, dtype=torch.bfloat16).eval()
    res["ar_b1_cfg4"] = ar_probe(model, 1, 4.0, None)
    res["ar_b1_cfg1"] = ar_probe(model, 1, 1.0, None)
    res["ar_b256_cfg4_int8"] = ar_probe(model, 256, 4.0, torch.int8)
    print(json.dumps(res, indent=1), flush=True)
    del model
    torch.cuda.empty_cache()

from regvq_cli.engine.runtime import TokenizerRunner
from regvq_cli.tokenizer.presets import PRESETS

sys.path.insert(0, "benchmarks")
from bench_tokenizer import timed
from regvq_cli.tokenizer.model import Tokenizer

def tok_probe(mode, batch):
    model = Tokenizer(PRESETS["vqgan-f16"])
    runner = TokenizerRunner(model, dev, torch.bfloat16, compile=False)
    runner.compiled = True
    kw = {} if mode is None else {"mode": mode}
    runner._encode = torch.compile(runner._encode_impl, dynamic=False, **kw)
    runner._decode = torch.compile(runner._decode_impl, dynamic=False, **kw)
    images = torch.rand(batch, 3, 256, 256, device=dev) * 2 - 1
    with torch.inference_mode():
        idx = runner.encode(images).clone()
        te = timed(runner.encode, images, dev, 20, 5)
        td = timed(runner.decode, idx, dev, 20, 5)
    return {"mode": mode, "batch": batch, "encode_ips": round(batch / te, 1), "decode_ips": round(batch / td, 1)}

tres = []
for mode, batch in ((None, 64), ("reduce-overhead", 64), (None, 128), ("reduce-overhead", 128)):
    t0 = time.time()
    try:
        r = tok_probe(mode, batch)
    except Exception as e:
        r = {"mode": mode, "batch": batch, "error": repr(e)[:300]}
    r["s"] = round(time.time() - t0)
    tres.append(r)
    print(json.dumps(r), flush=True)
    torch._dynamo.reset()
    torch.cuda.empty_cache()
res["tok"] = tres
import os
json.dump(res, open(os.environ["OUT"] + "/probe1.json", "w"), indent=1)
