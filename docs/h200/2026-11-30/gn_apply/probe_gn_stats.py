"""GroupNorm's statistics pass over vqgan-f16's widest activation (batch 128, 128 channels, 256 x 256, bf16,
channels-last; the convolution's output plus its bias, as the compiled network reads it) on an H200.

In the compiled network's profile (gn_apply/tok_b128_kernel_fast_math.json) that pass took 0.9 ms where reading
the 2.1 GB takes 0.5. Inductor reduces a variance with Welford's update, a division an element. Forms, compiled
(CUDA events, median of 20 after 3), with the largest relative error of the variance and of the mean against
float64:

- Welford: torch.var_mean over H, W (the network's form)
- shifted sums: sums of d and d * d with d = x - x[.., 0, 0] (each channel shifted by its first pixel, so that
  the sum of squares does not cancel where the mean is far from zero); no division an element
- plain sums of x and x * x (cancels where the mean is far from zero: for reference only)

    OUT=results PYTHONPATH=. python docs/h200/2026-11-30/gn_apply/probe_gn_stats.py
"""
import json, os, sys

import torch
import triton

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from probe_tok_rgb_convs import timed  # noqa: E402  (CUDA events, median of 20 after 3)


def welford(c, b):
    x = c + b.view(1, -1, 1, 1)
    return torch.var_mean(x.float(), dim=(2, 3), correction=0)


def shifted(c, b):
    x = (c + b.view(1, -1, 1, 1)).float()
    d = x - x[:, :, :1, :1]
    n = x.shape[2] * x.shape[3]
    s1, s2 = d.sum((2, 3)) / n, (d * d).sum((2, 3)) / n
    return (s2 - s1 * s1).clamp_min(0), x[:, :, 0, 0] + s1


def plain(c, b):
    x = (c + b.view(1, -1, 1, 1)).float()
    n = x.shape[2] * x.shape[3]
    s1, s2 = x.sum((2, 3)) / n, (x * x).sum((2, 3)) / n
    return (s2 - s1 * s1).clamp_min(0), s1


def main():
    dev = torch.device("cuda")
    res = {"torch": torch.__version__, "triton": triton.__version__, "gpu": torch.cuda.get_device_name(0),
           "rows": {}}
    with torch.inference_mode():
        for label, offset in (("network-like (mean 0.5, std 2)", 0.5), ("mean 40, std 2", 40.0)):
            torch.manual_seed(0)
            c = (torch.randn(128, 128, 256, 256, device=dev) * 2 + offset).to(torch.bfloat16).contiguous(
                memory_format=torch.channels_last)
            b = torch.randn(128, device=dev).to(torch.bfloat16)
            var64, mean64 = torch.var_mean((c + b.view(1, -1, 1, 1)).double(), dim=(2, 3), correction=0)
            for name, fn in (("Welford", welford), ("shifted sums", shifted), ("plain sums", plain)):
                f = torch.compile(fn)
                var, mean = f(c, b)
                ms = timed(lambda f=f, c=c: f(c, b))
                row = {"ms": round(ms, 4), "read_floor_fraction": round(c.numel() * 2 / 4.3e12 / (ms / 1e3), 3),
                       "var_rel_err": float(((var.double() - var64).abs() / var64).max()),
                       "mean_rel_err": float(((mean.double() - mean64).abs() / mean64.abs()).max())}
                res["rows"][f"{name}, {label}"] = row
                print(name, label, row, flush=True)
            del c, var64, mean64
    json.dump(res, open(os.path.join(os.environ.get("OUT", "."), "gn_stats.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
