"""The encoder's first convolution (vqgan-f16: 3 -> 128 channels, 3x3, 256 px, batch 128, bf16) through cuDNN and
as a Triton kernel of its own, on an H200.

The layer writes a 2.1 GB activation at batch 128 (0.5 ms at 4.3 TB/s) from a 50 MB image; in the networks' profile
cuDNN took 1.26 ms for it at batch 64. The kernel: each program takes BM pixels, gathers each pixel's 27
neighbourhood values (3 channels x 3 x 3 taps, zero outside the image, padded to 32) straight from the NCHW image,
multiplies them by the [32, 128] weight on the tensor cores and writes the 128 channels channels-last (the layout
the compiled network's next layers read; the kernel of regvq_cli/tokenizer/image_conv.py). Timed from CUDA
events (median of 20 after 3), each form with its largest difference from F.conv2d in float32. `--check` runs the kernel through Triton's interpreter against F.conv2d in
float32 on a small image (no GPU needed). `--nchw` adds the kernel writing NCHW (the layout eager networks read)
and writes conv_in_triton_nchw.json instead.

    OUT=results PYTHONPATH=. python docs/h200/2026-11-30/probe_conv_in_triton.py [--nchw]
    TRITON_INTERPRET=1 PYTHONPATH=. python docs/h200/2026-11-30/probe_conv_in_triton.py --check
"""
import json, os, sys

import torch
import torch.nn.functional as F
import triton

from regvq_cli.tokenizer.image_conv import image_conv as conv_in

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from probe_tok_rgb_convs import timed  # noqa: E402  (CUDA events, median of 20 after 3)


def check():
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 3, 9, 13), torch.randn(128, 3, 3, 3), torch.randn(128)
    diff = (conv_in(x, w, b, block=32) - F.conv2d(x, w, b, padding=1)).abs().max().item()
    print("largest difference from F.conv2d (float32):", diff)
    assert diff < 1e-4


def main():
    dev, dt, B = torch.device("cuda"), torch.bfloat16, 128
    res = {"torch": torch.__version__, "triton": triton.__version__, "gpu": torch.cuda.get_device_name(0),
           "batch": B, "rows": {}}
    torch.manual_seed(0)
    x = torch.randn(B, 3, 256, 256).to(dev, dt)
    w, b = (torch.randn(128, 3, 3, 3) * 0.2).to(dev, dt), torch.randn(128).to(dev, dt)
    with torch.inference_mode():
        ref = F.conv2d(x.float(), w.float(), b.float(), padding=1)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        forms = {"cudnn, NCHW image": lambda: F.conv2d(x, w, b, padding=1),
                 "cudnn, channels-last image": lambda: F.conv2d(x_cl, w, b, padding=1)}
        for bm, warps in ((64, 4), (128, 4), (128, 8), (256, 8)):
            forms[f"triton BM={bm} warps={warps}"] = lambda bm=bm, warps=warps: conv_in(x, w, b, bm, warps)
        if "--nchw" in sys.argv:  # the kernel writing NCHW, as eager networks read it
            for bm in (64, 128):
                forms[f"triton BM={bm} warps=4, NCHW"] = lambda bm=bm: conv_in(x, w, b, bm, 4, channels_last=False)
        for name, fn in forms.items():
            out = fn()
            row = {"ms": round(timed(fn), 4), "max_abs_diff": float((out.float() - ref).abs().max()),
                   "out_channels_last": out.is_contiguous(memory_format=torch.channels_last)}
            row["write_floor_fraction"] = round(out.numel() * 2 / 4.3e12 / (row["ms"] / 1e3), 3)
            res["rows"][name] = row
            print(name, row, flush=True)
    name = "conv_in_triton_nchw.json" if "--nchw" in sys.argv else "conv_in_triton.json"
    json.dump(res, open(os.path.join(os.environ.get("OUT", "."), name), "w"), indent=1)


if __name__ == "__main__":
    check() if "--check" in sys.argv else main()
