"""Prior sampling speed: token grids per second for AR (with and without guidance) and discrete diffusion
(VQ-Diffusion reverse process and MaskGIT) at several batch sizes, class-conditional, random weights.

    python benchmarks/bench_sample.py --ar ar-b --diffusion diffusion-b --batch-sizes 1 64 256 --steps 16 50 100
    python benchmarks/bench_sample.py --ar ar-b --diffusion '' --batch-sizes 1 256 --cuda-graphs
    python benchmarks/bench_sample.py --ar ar-test --diffusion diffusion-test --device cpu --batch-sizes 1 4

Counts the tokens only (decoding is `bench_tokenizer.py`'s business). Each row has images/s, ms per image, the GFLOP
per image of what the sampler runs (its matmuls and attention counted with torch's FLOP formulas on one eager call:
AR the whole loop, diffusion one denoiser step times the steps; guidance doubles the rows), the fraction of the FLOP
floor (--peak-tflops, 790 for an H200 in dense bf16) and the peak GPU memory of the call. Weights are cast to
--dtype. --cuda-graphs (CUDA only) adds rows `-graph`: sample_ar / sample_diffusion(cuda_graphs=True), whose time
includes recording the graphs, as every call records its own (AR: the step, the prefix pass running once
eagerly; diffusion: the denoiser). --keep adds rows `-kept`: the third call of one `ARSampler` or
`DiffusionSampler`, which replays what the first two recorded (the AR prefix pass is recorded by the second: what
`regvq sample` does batch after batch). --compile adds rows with the AR decode step and
draw or the diffusion denoiser compiled (`-compile`; the warm-up call pays for the compilation, the timed one does
not). --profile N adds, per batch size and per path timed (eager, and `-graph` / `-compile` where asked for), the N
operations that took the most time in one AR call with guidance (device kernels on a GPU, CPU operators on a CPU)
and how many kernels or operators ran per token, and the same for one diffusion call (VQ-Diffusion, the first
--steps) per step: where a step's time goes. A profiled `-graph` call includes recording its graphs (one eager step
each), as the timed one does.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path


def variant(base: str, graphs: bool, comp: bool) -> str:
    """A row's sampler name: the base, then -graph and -compile for the paths switched on."""
    return base + ("-graph" if graphs else "") + ("-compile" if comp else "")


def timed(fn, device, warmups: int = 1) -> tuple[float, float | None]:
    """Seconds of one call after `warmups` calls, and the peak GPU memory (GiB) of the timed call (None on a CPU)."""
    import torch

    for _ in range(warmups):  # compilation, kernel selection, a kept sampler's recordings
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter() - t, torch.cuda.max_memory_allocated(device) / 2 ** 30
    return time.perf_counter() - t, None


def counted_gflop(fn) -> float:
    """GFLOP of one eager call of fn: its matmuls and attention by torch's FLOP formulas (the trainers' counter).

    Run outside inference mode (under no_grad): inference mode hands composite operators such as `linear` to the
    counter undecomposed, and the formulas are for the `mm` and attention kernels they decompose into."""
    import torch

    from regvq_cli.train.common import flop_counter

    with torch.inference_mode(False), torch.no_grad(), flop_counter() as counter:
        fn()
    return counter.total / 1e9


def row(model: str, sampler: str, cfg: float, steps, batch: int, seconds: float, gflop_per_image: float,
        peak_gib, peak_tflops: float) -> dict:
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    from bench_tokenizer import floor_columns

    return {"model": model, "sampler": sampler, "cfg": cfg, "steps": steps, "batch": batch,
            "images_per_s": round(batch / seconds, 2), "ms_per_batch": round(1000 * seconds, 1),
            **floor_columns(batch / seconds, gflop_per_image, peak_tflops),
            "peak_memory_gib": None if peak_gib is None else round(peak_gib, 2)}


def profiled(fn, device, top: int, tokens: int, per: str = "token") -> dict:
    """One call of `fn` under torch.profiler: the total time and count per token (or per `per`: `tokens` of them
    in the call) of the kernels (CUDA) or operators (CPU), and the `top` operators by their share of that time.

    On CUDA an operator's device time is the time of the kernels it launched, and the profiler lists those kernels
    too: totals are over the kernels alone, the ranking over the operators, so nothing is counted twice."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    fn()  # warm-up
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key) > 0]
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    operators = [e for e in events if e.device_type == DeviceType.CPU]
    counted = [e for e in events if e.device_type != DeviceType.CPU] if cuda else operators
    total = sum(getattr(e, key) for e in counted)
    def ranked(entries):
        return [{"name": e.key[:100], "ms": round(getattr(e, key) / 1000, 3), "calls": e.count,
                 "share": round(getattr(e, key) / max(total, 1e-9), 4)} for e in entries[:top]]

    # operators say what launched the time; on CUDA the kernels themselves say what a compiled region runs inside
    return {"unit": "device kernels" if cuda else "cpu operators", "ms_total": round(total / 1000, 2),
            f"per_{per}": round(sum(e.count for e in counted) / tokens, 1), "top": ranked(operators),
            **({"top_kernels": ranked(counted)} if cuda else {})}


def print_ranked(pr: dict) -> None:
    """A `profiled` result's ranked operators, then (on CUDA) its ranked kernels, one line each."""
    for kind, entries in (("", pr["top"]), ("kernel ", pr.get("top_kernels", []))):
        for e in entries:
            print(f"  {kind}{e['ms']:>10.3f} ms {e['share']:>6.1%} {e['calls']:>7}x  {e['name']}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ar", default="ar-b", help="AR preset ('' to skip)")
    p.add_argument("--diffusion", default="diffusion-b", help="diffusion preset ('' to skip)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 256])
    p.add_argument("--steps", type=int, nargs="+", default=[16, 50, 100])
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--codebook-size", type=int, default=1024)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="also time sampling with CUDA graphs (AR: the whole step; diffusion: the denoiser)")
    p.add_argument("--compile", action="store_true",
                   help="also time sampling with the AR decode step and draw / the diffusion denoiser compiled")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also profile one AR and one diffusion call per batch size and path timed (eager, -graph, "
                        "-compile) and list their N costliest entries")
    p.add_argument("--attention", choices=["sdpa", "triton"], default="sdpa",
                   help="the AR decode steps' attention: SDPA over a masked window of the cache, or the Triton "
                        "kernel that reads exactly the written positions (rows named ar-triton...)")
    p.add_argument("--attention-config", default=None, metavar="BLOCK:WARPS:STAGES",
                   help="the Triton kernel's launch (keys per iteration, warps, stages; 0 for Triton's default) "
                        "instead of decode_attention.launch_config's choice")
    p.add_argument("--kv-cache", choices=["model", "int8"], default="model",
                   help="what the AR KV cache holds: the model's dtype or int8 (rows named ...-int8)")
    p.add_argument("--keep", action="store_true",
                   help="add rows `-kept`: a kept sampler's second call (buffers made and passes recorded by the "
                        "first, as `regvq sample` runs batch after batch)")
    p.add_argument("--max-autotune", action="store_true",
                   help="compile with inductor's max-autotune (Triton matmul templates tried against cuBLAS)")
    p.add_argument("--peak-tflops", type=float, default=790.0,
                   help="the hardware's FLOP floor for the floor fraction (default: 790, an H200 in dense bf16)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import torch

    from regvq_cli.engine.device import pick_device, pick_dtype
    from regvq_cli.priors.presets import model_for, preset
    from regvq_cli.priors.sampling import ARSampler, DiffusionSampler, sample_ar, sample_diffusion

    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    if args.attention_config:
        from regvq_cli.priors import decode_attention

        block, warps, stages = (int(x) for x in args.attention_config.split(":"))
        decode_attention.launch_config = lambda programs: (block, warps or None, stages or None)
    if args.max_autotune:
        import torch._inductor.config as inductor_config

        inductor_config.max_autotune = True
    if args.cuda_graphs and device.type != "cuda":
        p.error(f"--cuda-graphs needs a CUDA device, not {device}")
    rows, profiles = [], []

    def build(name):
        cfg = dataclasses.replace(preset(name), cond="class", num_classes=10, codebook_size=args.codebook_size)
        return model_for(cfg).to(device=device, dtype=dtype).eval()

    variants = [(g, c) for c in ((False, True) if args.compile else (False,))
                for g in ((False, True) if args.cuda_graphs else (False,))]
    ar_name = ("ar" if args.attention == "sdpa" else "ar-triton") + ("-int8" if args.kv_cache == "int8" else "")
    kv_dtype = torch.int8 if args.kv_cache == "int8" else None
    with torch.inference_mode():
        if args.ar:
            model = build(args.ar)
            for b in args.batch_sizes:
                cond = torch.arange(b, device=device) % 10
                for cfg in (1.0, args.cfg):
                    # counted through SDPA: the FLOP counter sees torch's ops, not the Triton kernel's
                    gflop = counted_gflop(lambda: sample_ar(model, cond, b, cfg=cfg, top_k=0, attention="sdpa")) / b
                    for graphs, comp in variants:
                        opts = dict(cfg=cfg, top_k=0, cuda_graphs=graphs, compile=comp, attention=args.attention,
                                    kv_dtype=kv_dtype)
                        t, mem = timed(lambda: sample_ar(model, cond, b, **opts), device)
                        rows.append(row(args.ar, variant(ar_name, graphs, comp), cfg, None, b, t, gflop, mem,
                                        args.peak_tflops))
                        if args.keep:  # the warm-up calls record the passes, the timed one replays them
                            kept = ARSampler(model, b, **opts)
                            t, mem = timed(lambda: kept(cond), device, warmups=2)
                            del kept
                            rows.append(row(args.ar, variant(ar_name, graphs, comp) + "-kept", cfg, None, b, t,
                                            gflop, mem, args.peak_tflops))
                for graphs, comp in variants if args.profile else ():
                    tokens = model.config.grid_size[0] * model.config.grid_size[1]
                    prof = profiled(lambda: sample_ar(model, cond, b, cfg=args.cfg, top_k=0, cuda_graphs=graphs,
                                                      compile=comp, attention=args.attention, kv_dtype=kv_dtype),
                                    device, args.profile, tokens)
                    profiles.append({"model": args.ar, "sampler": variant(ar_name, graphs, comp), "batch": b,
                                     "cfg": args.cfg, **prof})
        if args.diffusion:
            model = build(args.diffusion)
            for b in args.batch_sizes:
                cond = torch.arange(b, device=device) % 10
                for sampler in ("vq", "maskgit"):
                    # every step is one denoiser pass of the same shape: count one step, times the steps
                    step_gflop = counted_gflop(lambda: sample_diffusion(model, cond, b, steps=1, cfg=args.cfg,
                                                                        sampler=sampler)) / b
                    for steps in args.steps:
                        for graphs, comp in variants:
                            opts = dict(steps=steps, cfg=args.cfg, sampler=sampler, cuda_graphs=graphs, compile=comp)
                            t, mem = timed(lambda: sample_diffusion(model, cond, b, **opts), device)
                            rows.append(row(args.diffusion, variant(sampler, graphs, comp), args.cfg, steps, b, t,
                                            steps * step_gflop, mem, args.peak_tflops))
                            if args.keep:
                                kept = DiffusionSampler(model, b, **opts)
                                t, mem = timed(lambda: kept(cond), device, warmups=2)
                                del kept
                                rows.append(row(args.diffusion, variant(sampler, graphs, comp) + "-kept", args.cfg,
                                                steps, b, t, steps * step_gflop, mem, args.peak_tflops))
                for graphs, comp in variants if args.profile else ():
                    steps = args.steps[0]
                    prof = profiled(lambda: sample_diffusion(model, cond, b, steps=steps, cfg=args.cfg,
                                                             cuda_graphs=graphs, compile=comp),
                                    device, args.profile, steps, per="step")
                    profiles.append({"model": args.diffusion, "sampler": variant("vq", graphs, comp), "batch": b,
                                     "cfg": args.cfg, "steps": steps, **prof})
    result = {"device": str(device), "dtype": str(dtype), "torch": torch.__version__, "rows": rows,
              **({"profile": profiles} if args.profile else {}),
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "command": " ".join(["python"] + sys.argv)}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{device} {dtype} torch {torch.__version__}")
    print(f"{'model':16}{'sampler':22}{'cfg':>5}{'steps':>7}{'batch':>7}{'images/s':>11}{'ms/image':>10}"
          f"{'GFLOP/image':>13}{'floor':>8}{'GiB':>7}")
    for r in rows:
        mem = "-" if r["peak_memory_gib"] is None else r["peak_memory_gib"]
        print(f"{r['model']:16}{r['sampler']:22}{r['cfg']:>5}{str(r['steps'] or '-'):>7}{r['batch']:>7}"
              f"{r['images_per_s']:>11}{r['ms_per_image']:>10}{r['gflop_per_image']:>13}"
              f"{r['floor_fraction']:>8.2g}{mem:>7}")
    for pr in profiles:
        per = "token" if "per_token" in pr else "step"
        print(f"profile {pr['model']} {pr['sampler']} batch {pr['batch']} cfg {pr['cfg']}: {pr['ms_total']} ms in "
              f"{pr['unit']}, {pr['per_' + per]} per {per}")
        print_ranked(pr)
    print(f"command: {result['command']}")


if __name__ == "__main__":
    main()
