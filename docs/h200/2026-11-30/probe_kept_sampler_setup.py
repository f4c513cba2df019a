"""A kept ARSampler's call at batch 1 (ar-b, compiled, CUDA graphs, Triton attention): time from the call to the
first step, per replayed step, and the host's side. H200 only; writes $OUT/probe2.json (kept as
sample_ar_kept_setup_split.json, before and after the prefix pass was recorded).

    OUT=results PYTHONPATH=. python docs/h200/2026-11-30/probe_kept_sampler_setup.py
"""
import dataclasses, json, os, time
import torch
from regvq_cli.priors.presets import model_for, preset
from regvq_cli.priors.sampling import ARSampler

dev = torch.device("cuda")
res = {}
with torch.inference_mode():
    cfgp = dataclasses.replace(preset("ar-b"), cond="class", num_classes=10, codebook_size=1024)
    model = model_for(cfgp).to(device=dev, dtype=torch.bfloat16).eval()
    for b, cfg in ((1, 4.0), (1, 1.0)):
        cond = torch.arange(b, device=dev) % 10
        s = ARSampler(model, b, cfg=cfg, top_k=0, cuda_graphs=True, compile=True, attention="triton")
        s(cond)
        N = 256
        out = []
        for rep in range(4):
            ev, host = {}, {}
            def cb(d):
                i = d["i"]
                if i in (0, 1, N - 1):
                    e = torch.cuda.Event(enable_timing=True); e.record(); ev[i] = e; host[i] = time.perf_counter()
            torch.cuda.synchronize()
            st = torch.cuda.Event(enable_timing=True); st.record(); t0 = time.perf_counter()
            s(cond, callback=cb)
            en = torch.cuda.Event(enable_timing=True); en.record(); th = time.perf_counter()
            torch.cuda.synchronize(); t1 = time.perf_counter()
            out.append({"wall": round((t1 - t0) * 1e3, 2), "gpu_to_step0": round(st.elapsed_time(ev[0]), 2),
                        "host_to_step0": round((host[0] - t0) * 1e3, 2),
                        "step_ms": round(ev[1].elapsed_time(ev[N - 1]) / (N - 2), 4),
                        "gpu_last": round(ev[N - 1].elapsed_time(en), 2),
                        "host_loop_ms": round((host[N - 1] - host[1]) * 1e3, 2), "host_return": round((th - t0) * 1e3, 2)})
        res[f"b{b}_cfg{cfg}"] = out
        print(f"b{b} cfg{cfg}", json.dumps(out), flush=True)
json.dump(res, open(os.environ["OUT"] + "/probe2.json", "w"), indent=1)
