"""The tokenizer's two RGB convolutions (vqgan-f16 at 256 px, batch 128, bf16) against GEMM forms, on an H200:

- the encoder's conv_in, 3 -> 128 channels: cuDNN took 1.26 ms at batch 64 for a 1.07 GB output (a quarter of
  that would be its bytes); as a GEMM, the 27 values of each pixel's 3x3x3 neighbourhood (padded to 32) times the
  [32, 128] weight, the output channels-last;
- the decoder's conv_out, 128 -> 3 channels (1.18 ms at batch 64): as a GEMM of each pixel's 128 channels times a
  [128, 32] weight (9 taps x 3 outputs, padded), then the 9 taps' partial sums shifted into place and added.

Each compiled with torch.compile, timed from CUDA events (median of 20 after 3), with the largest difference from
F.conv2d in float32. `--check` runs the forms against F.conv2d on the CPU in float32 only (no timing).

    OUT=results PYTHONPATH=. python docs/h200/2026-11-30/probe_tok_rgb_convs.py
    PYTHONPATH=. python docs/h200/2026-11-30/probe_tok_rgb_convs.py --check
"""
import json, os, sys

import torch
import torch.nn.functional as F

from regvq_cli.tokenizer.nets import conv3x3_to_few_channels as conv_out_gemm  # the decoder's last layer, compiled


def conv_in_gemm(x, w, b):
    """F.conv2d(x, w, b, padding=1) for w [O, 3, 3, 3]: im2col (27 values a pixel, padded to 32) times w."""
    B, C, H, W = x.shape
    cols = F.unfold(x, 3, padding=1).transpose(1, 2)  # [B, H*W, C*9], the weight's (c, i, j) order
    cols = F.pad(cols, (0, 32 - C * 9))
    wt = F.pad(w.reshape(w.shape[0], -1), (0, 32 - C * 9)).t()  # [32, O]
    out = (cols.reshape(B * H * W, 32) @ wt + b).view(B, H, W, -1)  # channels-last
    return out.permute(0, 3, 1, 2)


def check():
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 3, 16, 16), torch.randn(128, 3, 3, 3), torch.randn(128)
    print("conv_in", (conv_in_gemm(x, w, b) - F.conv2d(x, w, b, padding=1)).abs().max().item())
    x, w, b = torch.randn(2, 128, 16, 16), torch.randn(3, 128, 3, 3), torch.randn(3)
    print("conv_out", (conv_out_gemm(x, w, b) - F.conv2d(x, w, b, padding=1)).abs().max().item())


def timed(fn, *args):
    for _ in range(3):
        fn(*args)
    times = []
    for _ in range(20):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn(*args)
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    return sorted(times)[len(times) // 2]


def main():
    dev, dt, B = torch.device("cuda"), torch.bfloat16, 128
    res = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0), "batch": B}
    torch.manual_seed(0)
    cases = {"conv_in": (torch.randn(B, 3, 256, 256), torch.randn(128, 3, 3, 3) * 0.2, torch.randn(128), conv_in_gemm),
             "conv_out": (torch.randn(B, 128, 256, 256), torch.randn(3, 128, 3, 3) * 0.03, torch.randn(3), conv_out_gemm)}
    with torch.inference_mode():
        for name, (x, w, b, gemm) in cases.items():
            x, w, b = (t.to(dev, dt) for t in (x, w, b))
            x = x.contiguous(memory_format=torch.channels_last)
            ref = F.conv2d(x.float(), w.float(), b.float(), padding=1)
            for form, fn in (("cudnn", lambda x, w, b: F.conv2d(x, w, b, padding=1)), ("gemm", gemm)):
                f = torch.compile(fn)
                out = f(x, w, b)
                res[f"{name}_{form}"] = {"ms": round(timed(f, x, w, b), 4),
                                         "max_abs_diff": float((out.float() - ref).abs().max())}
                print(name, form, res[f"{name}_{form}"], flush=True)
            del x, ref
            torch.cuda.empty_cache()
    json.dump(res, open(os.path.join(os.environ.get("OUT", "."), "tok_rgb_convs.json"), "w"), indent=1)


if __name__ == "__main__":
    check() if "--check" in sys.argv else main()
