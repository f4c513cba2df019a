"""Where an `ar-b` decode step's time goes at batch 1, and whether a Triton GEMV beats F.linear for its layers.

    OUT=results PYTHONPATH=. python docs/h200/2026-12-01/gemv/probe.py

A: each layer shape of ar-b (1 and 2 rows), F.linear against gemv.py's kernel over a sweep of launches, timed
   inside one CUDA graph over distinct weight copies (more than the L2 holds, as a step reads them).
B: a kept ARSampler's call (compiled, CUDA graphs, Triton attention), b1, CFG 4 and off: wall times and the
   kernels per step from torch.profiler.
C: B with the linear layers of the decode step through the best gemv launch per shape: times and token agreement.
"""
import dataclasses, json, os, sys, time
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from gemv import gemv  # noqa: E402

dev = torch.device("cuda")
OUT = os.environ.get("OUT", ".")
res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}


def graph_us(calls, reps=5):
    """us per call of the list of zero-arg callables, replayed as one CUDA graph."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for c in calls:
            c()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=s):
        for c in calls:
            c()
    g.replay(); g.replay(); torch.cuda.synchronize()
    best = 1e9
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); g.replay(); b.record(); torch.cuda.synchronize()
        best = min(best, a.elapsed_time(b) * 1e3 / len(calls))
    return best


# ---- A
shapes = {"qkv": (2304, 768), "proj": (768, 768), "gate_up": (4096, 768), "down": (768, 2048), "head": (1024, 768)}
best = {}
resA = {}
t0 = time.time()
for name, (N, K) in shapes.items():
    copies = max(8, int(240e6 // (N * K * 2)))
    ws = [torch.randn(N, K, device=dev, dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
    for R in (1, 2):
        x = torch.randn(R, K, device=dev, dtype=torch.bfloat16)
        ys = [torch.empty(R, N, device=dev, dtype=torch.bfloat16) for _ in ws]
        base = graph_us([lambda w=w: F.linear(x, w) for w in ws])
        rows = []
        bks = [b for b in (128, 256, 512) if K % b == 0]
        for bn in (4, 8, 16):
            for bk in bks:
                for nw in (2, 4):
                    try:
                        us = graph_us([lambda w=w, y=y: gemv(x, w, bn, bk, nw, out=y) for w, y in zip(ws, ys)])
                    except Exception as e:  # noqa: BLE001
                        print("fail", name, R, bn, bk, nw, type(e).__name__, str(e)[:100], flush=True)
                        continue
                    rows.append((us, bn, bk, nw))
        rows.sort()
        err = (gemv(x, ws[0], *rows[0][1:]).float() - F.linear(x, ws[0]).float()).abs().max().item()
        floor = N * K * 2 / 4.3e12 * 1e6
        best[(N, K, R)] = rows[0][1:]
        resA[f"{name}_r{R}"] = {"N": N, "K": K, "linear_us": round(base, 2), "gemv_best": [round(v, 2) if isinstance(v, float) else v for v in rows[0]],
                               "top5": [[round(r[0], 2), *r[1:]] for r in rows[:5]], "floor_us": round(floor, 2),
                               "max_abs_diff": err}
        print(f"A {name} R{R} N{N} K{K}: linear {base:.2f} us, gemv best {rows[0][0]:.2f} us {rows[0][1:]}, "
              f"floor {floor:.2f}, top {[(round(r[0],2),)+r[1:] for r in rows[1:4]]} ({time.time()-t0:.0f}s)", flush=True)
    del ws
res["A"] = resA

# ---- B / C
from regvq_cli.priors import layers  # noqa: E402
from regvq_cli.priors.presets import model_for, preset  # noqa: E402
from regvq_cli.priors.sampling import ARSampler  # noqa: E402


def kernel_table(s, cond, steps=255):
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        s(cond)
        torch.cuda.synchronize()
    agg = {}
    for e in prof.events():
        if e.device_type.name != "CUDA":
            continue
        k = e.name[:90]
        c, t = agg.get(k, (0, 0.0))
        agg[k] = (c + 1, t + e.device_time)
    tot = sum(t for _, t in agg.values())
    ranked = sorted(agg.items(), key=lambda kv: -kv[1][1])
    return {"kernel_us_per_step": round(tot / steps, 1), "kernels_per_step": round(sum(c for c, _ in agg.values()) / steps, 1),
            "top": [[k, round(c / steps, 2), round(t / steps, 2)] for k, (c, t) in ranked[:25]]}


def timings(model, b, cfg, reps=4):
    cond = torch.arange(b, device=dev) % 10
    out = {}
    # fresh calls (the compiled step warm): a new sampler per call
    fresh = []
    for r in range(reps + 1):
        torch.cuda.synchronize(); t = time.perf_counter()
        ARSampler(model, b, cfg=cfg, cuda_graphs=True, compile=True, attention="triton")(cond)
        torch.cuda.synchronize(); fresh.append((time.perf_counter() - t) * 1e3)
    s = ARSampler(model, b, cfg=cfg, cuda_graphs=True, compile=True, attention="triton")
    s(cond)
    kept = []
    for r in range(reps):
        torch.cuda.synchronize(); t = time.perf_counter()
        s(cond)
        torch.cuda.synchronize(); kept.append((time.perf_counter() - t) * 1e3)
    out["fresh_ms"] = [round(v, 1) for v in fresh[1:]]
    out["kept_ms"] = [round(v, 1) for v in kept]
    out["profile"] = kernel_table(s, cond)
    g = torch.Generator(dev).manual_seed(0)
    s2 = ARSampler(model, b, cfg=cfg, cuda_graphs=True, compile=True, attention="triton", generator=g)
    out["tokens"] = torch.cat([s2(cond) for _ in range(4)]).cpu()
    return out


with torch.inference_mode():
    cfgp = dataclasses.replace(preset("ar-b"), cond="class", num_classes=10, codebook_size=1024)
    torch.manual_seed(0)
    model = model_for(cfgp).to(device=dev, dtype=torch.bfloat16).eval()
    R = {}
    for label in ("plain", "gemv"):
        if label == "gemv":
            plain_forward = layers.Linear.forward

            def forward(self, x, _plain=plain_forward):
                rows = x.numel() // x.shape[-1]
                key = (self.weight.shape[0], self.weight.shape[1], rows)
                if x.is_cuda and rows <= 2 and key in best and self.bias is None:
                    bn, bk, nw = best[key]
                    return gemv(x.reshape(rows, -1), self.weight, bn, bk, nw).view(*x.shape[:-1], -1)
                return _plain(self, x)
            layers.Linear.forward = forward
            model.__dict__.pop("_compiled_decode_step", None)
            torch._dynamo.reset()
        for b, cfg in ((1, 4.0), (1, 1.0)):
            t = time.time()
            r = timings(model, b, cfg)
            R[f"{label}_b{b}_cfg{cfg}"] = r
            print(f"{label} b{b} cfg{cfg}: fresh {r['fresh_ms']} kept {r['kept_ms']} kernels/step "
                  f"{r['profile']['kernels_per_step']} kernel us/step {r['profile']['kernel_us_per_step']} ({time.time()-t:.0f}s)", flush=True)
            for row in r["profile"]["top"][:18]:
                print("   ", row, flush=True)
    for key in ("b1_cfg4.0", "b1_cfg1.0"):
        a, c = R["plain_" + key].pop("tokens"), R["gemv_" + key].pop("tokens")
        agree = (a == c).float().mean().item()
        first = [(int((x != y).flatten().nonzero()[0]) if (x != y).any() else None) for x, y in zip(a, c)]
        R["agree_" + key] = {"agreement": agree, "first_diff": first}
        print("agreement", key, agree, first, flush=True)
    res["BC"] = R
json.dump(res, open(os.path.join(OUT, "probe.json"), "w"), indent=1)
