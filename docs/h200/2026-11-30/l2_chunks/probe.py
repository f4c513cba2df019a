"""Compiled vqgan-f16 encode at batch 128 (bf16, H200) with the encoder's first levels run `k` images at a time, so
that one chunk's full-resolution activations (16.8 MB an image at 256 px and 128 channels) can stay in L2 between
the statistics pass, the normalising pass and the convolution that read them; the rest of the encoder runs on the
whole batch. Each chunk's part is one CUDA graph (replayed per chunk) or plain compiled calls. Rows alternate with
the runner as it is; token agreement with it is reported.
    OUT=results PYTHONPATH=. python docs/h200/2026-11-30/l2_chunks/probe.py"""
import json
import os
import sys

import torch

sys.path.insert(0, "benchmarks")
from bench_tokenizer import busy_gpu_state, timed as bench_timed  # noqa: E402

from regvq_cli.engine.runtime import compile_options, prepare_tokenizer  # noqa: E402
from regvq_cli.tokenizer.model import Tokenizer  # noqa: E402
from regvq_cli.tokenizer.presets import PRESETS  # noqa: E402

B = 128
# every variant compiles `head` and `tail` again (same code objects, other shapes); the results in results/ were
# taken with torch's default limit of 8, which the last variant hit: it ran uncompiled, so its row is void
torch._dynamo.config.recompile_limit = 64
dev = torch.device("cuda")
torch.manual_seed(0)
model = Tokenizer(PRESETS["vqgan-f16"])
runner = prepare_tokenizer(model, dev, torch.bfloat16, compile=True)
enc = model.encoder
images = (torch.rand(B, 3, 256, 256, device=dev) * 2 - 1).to(torch.bfloat16)


def timed(fn):
    """Seconds per call of fn(), as the benchmark times it: median of 10 after 3."""
    return bench_timed(lambda _: fn(), None, dev, 10, 3)


def make_head(levels):
    def head(x):
        h = enc.conv_in(x)
        for level in enc.levels[:levels]:
            h = level(h)
        return h
    return head


def make_tail(levels):
    def tail(h):
        for level in enc.levels[levels:]:
            h = level(h)
        h = enc.mid(h)
        z = model.quant_conv(enc.conv_out(torch.nn.functional.silu(enc.norm_out(h))))
        return model.quantizer.encode(z.float())
    return tail


def chunked(levels, k, graph):
    head = torch.compile(make_head(levels), dynamic=False, options=compile_options())
    tail = torch.compile(make_tail(levels), dynamic=False, options=compile_options())
    static_in = images[:k].clone()
    if graph:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                head(static_in)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            static_out = head(static_in)
    else:
        static_out = head(static_in)
    fmt = torch.channels_last if static_out.is_contiguous(memory_format=torch.channels_last) and static_out.shape[1] > 1 else torch.contiguous_format
    buf = torch.empty((B, *static_out.shape[1:]), device=dev, dtype=static_out.dtype).contiguous(memory_format=fmt)

    def run():
        for i in range(0, B, k):
            if graph:
                static_in.copy_(images[i:i + k])
                g.replay()
                buf[i:i + k].copy_(static_out)
            else:
                buf[i:i + k].copy_(head(images[i:i + k]))
        return tail(buf)
    return run


out = os.environ.get("OUT", ".")
rows = []
with torch.inference_mode():
    ref = runner.encode(images)

    def base():
        return runner.encode(images)

    def add(name, fn):
        t = timed(fn)
        tok = fn()
        row = {"variant": name, "images_per_s": round(B / t, 1), "token_agreement": (tok == ref).float().mean().item(),
               "gpu_state": busy_gpu_state(lambda _: fn(), None, dev)}
        rows.append(row)
        print(json.dumps(row), flush=True)

    add("as now", base)
    for levels, k, graph in [(1, 1, True), (1, 2, True), (1, 4, True), (1, 8, False), (2, 2, True), (2, 4, True),
                             (1, 16, False)]:
        try:
            add(f"levels[:{levels}] {k} images at a time{' (CUDA graph)' if graph else ''}", chunked(levels, k, graph))
        except Exception as e:  # a variant that fails is reported, the rest go on
            print(json.dumps({"variant": f"{levels} {k} {graph}", "error": repr(e)[:300]}), flush=True)
        add("as now", base)
json.dump({"batch_size": B, "torch": torch.__version__, "gpu": torch.cuda.get_device_name(), "rows": rows},
          open(os.path.join(out, "l2_chunks.json"), "w"), indent=2)
