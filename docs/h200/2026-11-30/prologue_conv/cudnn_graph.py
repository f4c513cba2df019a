"""cuDNN's own fused graphs (through its Python frontend, carried as a wheel) for vqgan-f16's widest convolution
(batch 128, 256 x 256, 128 -> 128 channels, bf16, channels-last, H200): the convolution alone, with its bias, with
the bias and a residual sum, and with per-image, per-channel sums (GroupNorm's statistics) of its output; each timed
against torch's cuDNN convolution without a bias, and checked against float32. A graph cuDNN cannot build is
recorded with its error; of one it can, each of the first 10 plans it ranks (heuristics A and B, then its fallback
list) that builds is timed.
    OUT=results PYTHONPATH=/tmp/site python docs/h200/2026-11-30/prologue_conv/cudnn_graph.py"""
import json
import os

import torch
import torch.nn.functional as F
import triton


def main():
    out = os.environ.get("OUT", "results")
    os.makedirs(out, exist_ok=True)
    dev = torch.device("cuda")
    B, C, H = 128, 128, 256
    g = torch.Generator(device="cpu").manual_seed(0)
    cl = torch.channels_last
    x = torch.randn(B, C, H, H, generator=g).to(dev, torch.bfloat16).contiguous(memory_format=cl)
    w = (torch.randn(C, C, 3, 3, generator=g) / 34).to(dev, torch.bfloat16).contiguous(memory_format=cl)
    b = (torch.randn(1, C, 1, 1, generator=g) * 0.1).to(dev, torch.bfloat16).contiguous(memory_format=cl)
    r = torch.randn(B, C, H, H, generator=g).to(dev, torch.bfloat16).contiguous(memory_format=cl)
    conv = F.conv2d(x, w, None, padding=1)  # loads torch's cuDNN before the frontend looks for it
    rows = []

    def row(name, **extra):
        rows.append({"variant": name, **extra})
        print(json.dumps(rows[-1]), flush=True)
        json.dump({"torch": torch.__version__, "cudnn": torch.backends.cudnn.version(), "rows": rows},
                  open(f"{out}/cudnn_graph.json", "w"), indent=1)

    bench = lambda fn: triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")  # noqa: E731
    row("torch cuDNN conv, no bias", ms=round(bench(lambda: F.conv2d(x, w, None, padding=1)), 4))
    import cudnn

    handle = cudnn.create_handle()
    cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream().cuda_stream)
    row("frontend", version=getattr(cudnn, "__version__", None), backend=cudnn.backend_version_string())
    ref32 = F.conv2d(x[:4].float(), w.float(), None, padding=1)

    def build(bias, residual, stats):
        graph = cudnn.pygraph(io_data_type=cudnn.data_type.BFLOAT16, intermediate_data_type=cudnn.data_type.FLOAT,
                              compute_data_type=cudnn.data_type.FLOAT, handle=handle)
        X = graph.tensor(name="X", dim=x.size(), stride=x.stride(), data_type=x.dtype)
        W = graph.tensor(name="W", dim=w.size(), stride=w.stride(), data_type=w.dtype)
        Y = graph.conv_fprop(image=X, weight=W, padding=[1, 1], stride=[1, 1], dilation=[1, 1])
        pack = {X: x, W: w}
        if bias:
            Bt = graph.tensor(name="B", dim=b.size(), stride=b.stride(), data_type=b.dtype)
            Y = graph.bias(name="bias", input=Y, bias=Bt)
            pack[Bt] = b
        if residual:
            R = graph.tensor(name="R", dim=r.size(), stride=r.stride(), data_type=r.dtype)
            Y = graph.add(name="residual", a=Y, b=R)
            pack[R] = r
        y = torch.empty_like(x)
        Y.set_output(True).set_data_type(cudnn.data_type.BFLOAT16)
        pack[Y] = y
        sums = None
        if stats:  # per image and channel: sum of y and of y * y
            S = graph.reduction(name="sum", input=Y, mode=cudnn.reduction_mode.ADD,
                                compute_data_type=cudnn.data_type.FLOAT)
            S.set_output(True).set_dim([B, C, 1, 1]).set_stride([C, 1, C, C]).set_data_type(cudnn.data_type.FLOAT)
            Q = graph.reduction(name="sumsq", input=graph.mul(name="sq", a=Y, b=Y), mode=cudnn.reduction_mode.ADD,
                                compute_data_type=cudnn.data_type.FLOAT)
            Q.set_output(True).set_dim([B, C, 1, 1]).set_stride([C, 1, C, C]).set_data_type(cudnn.data_type.FLOAT)
            sums = (torch.zeros(B, C, device=dev), torch.zeros(B, C, device=dev))
            pack[S], pack[Q] = sums
        graph.validate()
        graph.build_operation_graph()
        graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.B, cudnn.heur_mode.FALLBACK])
        graph.check_support()
        return graph, pack, y, sums

    def plans(graph, pack, limit=10):
        """(index, name, run) for each of the first `limit` ranked plans that build."""
        for i in range(min(graph.get_execution_plan_count(), limit)):
            try:
                graph.build_plan_at_index(i)
                ws = torch.empty(graph.get_workspace_size_plan_at_index(i), device=dev, dtype=torch.uint8)
            except Exception as e:  # a plan that does not build on this graph
                print("plan", i, type(e).__name__, str(e)[:200], flush=True)
                continue
            name = graph.get_plan_name_at_index(i) if hasattr(graph, "get_plan_name_at_index") else None
            yield i, name, (lambda i=i, ws=ws: graph.execute_plan_at_index(pack, ws, index=i, handle=handle))

    for name, bias, residual, stats in (("conv", False, False, False), ("conv + bias", True, False, False),
                                        ("conv + bias + residual", True, True, False),
                                        ("conv + bias + per-image sums", True, False, True),
                                        ("conv + bias + residual + per-image sums", True, True, True)):
        try:
            graph, pack, y, sums = build(bias, residual, stats)
        except Exception as e:  # not supported, or failed to build
            row(name, error=f"{type(e).__name__}: {str(e)[:400]}")
            continue
        ref = ref32 + (b.float() if bias else 0) + (r[:4].float() if residual else 0)
        for index, plan, run in plans(graph, pack):
            try:
                if stats:
                    sums[0].zero_(), sums[1].zero_()
                run()
                torch.cuda.synchronize()
            except Exception as e:  # built but does not run
                row(name, plan=index, name_of_plan=plan, error=f"{type(e).__name__}: {str(e)[:300]}")
                continue
            extra = {"largest_difference": (y[:4].float() - ref).abs().max().item()}
            if stats:
                yf = y[:4].float()
                extra["sum_relative_error"] = ((sums[0][:4] - yf.sum((2, 3))).abs().max()
                                               / yf.sum((2, 3)).abs().max()).item()
                extra["sumsq_relative_error"] = ((sums[1][:4] - (yf * yf).sum((2, 3))).abs().max()
                                                 / (yf * yf).sum((2, 3)).max()).item()
            row(name, plan=index, name_of_plan=plan, ms=round(bench(run), 4), **extra)
    del conv


if __name__ == "__main__":
    main()
