"""resize_batch on a GPU, kernels against matrix products, over 128 pictures of 256-512 px (bench_resize.py's): ms
per batch of each (median of 20, synchronised) and how many pixels differ."""
import sys
import time

import torch

import regvq_cli.engine.jpeg as jpeg

sys.path.insert(0, "benchmarks")
from bench_resize import pictures  # noqa: E402

batch = pictures(128, 256, 512, torch.device("cuda"))


def ms(n=20):
    out, times = jpeg.resize_batch(batch, 256, 256), []
    for _ in range(n):
        torch.cuda.synchronize()
        t = time.perf_counter()
        jpeg.resize_batch(batch, 256, 256)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return out, sorted(times)[n // 2] * 1e3


kernels, t_kernels = ms()
jpeg.triton_runs_on = lambda device: False
matrices, t_matrices = ms()
d = (kernels.int() - matrices.int()).abs()
print(f"kernels {t_kernels:.2f} ms, matrix products {t_matrices:.2f} ms a batch of 128; {int((d > 0).sum())} of "
      f"{d.numel()} values differ, by at most {int(d.max())}")
