"""The decoder's upsampling (nearest x2, then a 3x3 convolution) as one transposed convolution, on an H200.

Nearest upsampling followed by a 3x3 convolution is, exactly, a stride-2 transposed convolution with a 4x4 kernel:
along each axis the output's even rows take the 3x3 kernel's taps (w0, w1 + w2) from input rows (i - 1, i), the
odd rows (w0 + w1, w2) from (i, i + 1), so the 4 taps are (w2, w1 + w2, w0 + w1, w0) in conv_transpose2d's order.
That is 4 of 9 multiply-adds per output value, and the 4x larger upsampled map is never written. Timed compiled,
bf16, channels-last, batch 128, for vqgan-f16 decoder's four upsamplers (median of 20 after 3; the largest
difference from the float32 upsample + convolution). `--check` compares the forms in float32 on the CPU.

    OUT=results PYTHONPATH=. python docs/h200/2026-11-30/upsample/probe_upsample_transposed.py
    PYTHONPATH=. python docs/h200/2026-11-30/upsample/probe_upsample_transposed.py --check
"""
import json, os, sys

import torch
import torch.nn.functional as F

from regvq_cli.tokenizer.nets import upsample_nearest_2x, upsampling_weight

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def plain(x, w, b):
    return F.conv2d(upsample_nearest_2x(x), w, b, padding=1)


def transposed(x, w, b):
    return F.conv_transpose2d(x, upsampling_weight(w), b, stride=2, padding=1)


def check():
    torch.manual_seed(0)
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2, 8, 5, 7).contiguous(memory_format=fmt)
        w, b = torch.randn(6, 8, 3, 3), torch.randn(6)
        diff = (plain(x, w, b) - transposed(x, w, b)).abs().max().item()
        print("largest difference (float32):", diff)
        assert diff < 1e-4


def main():
    from probe_tok_rgb_convs import timed  # CUDA events, median of 20 after 3

    dev, dt, B = torch.device("cuda"), torch.bfloat16, 128
    res = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0), "batch": B, "rows": {}}
    fp, ft = torch.compile(plain), torch.compile(transposed)
    with torch.inference_mode():
        for C, R in ((512, 16), (256, 32), (256, 64), (128, 128)):
            torch.manual_seed(0)
            x = torch.randn(B, C, R, R, device=dev).to(dt).contiguous(memory_format=torch.channels_last)
            w, b = (torch.randn(C, C, 3, 3, device=dev) / (3 * C ** 0.5)).to(dt), torch.randn(C, device=dev).to(dt)
            ref = plain(x.float(), w.float(), b.float())
            for name, f in (("upsample + conv3x3", fp), ("transposed conv 4x4 stride 2", ft)):
                y = f(x, w, b)
                ms = timed(lambda f=f: f(x, w, b))
                flop = 2 * B * C * C * (2 * R) ** 2 * (9 if name.startswith("up") else 4)
                row = {"ms": round(ms, 4), "tflops": round(flop / ms / 1e9, 1),
                       "max_abs_diff": float((y.float() - ref).abs().max()),
                       "channels_last_out": y.is_contiguous(memory_format=torch.channels_last)}
                res["rows"][f"{name}, {C} ch, {R} -> {2 * R}"] = row
                print(name, C, R, row, flush=True)
    json.dump(res, open(os.path.join(os.environ.get("OUT", "."), "upsample_transposed.json"), "w"), indent=1)


if __name__ == "__main__":
    check() if "--check" in sys.argv else main()
