"""GroupNorm's normalising pass + SiLU over vqgan-f16's widest activation (batch 128, 128 channels, 256 x 256,
bf16, channels-last, as the compiled network stores it) on an H200: what inductor makes of it and what bounds it.

In the compiled encoder's profile that pass ran at about half the memory bandwidth (1.0 ms at batch 64 for 2.1 GB
read and written). Inductor's code for it (image_conv/output_code.txt.gz) computes per element the group's rsqrt,
an exp and a division for the sigmoid: three special-function instructions an element, which an H200 issues at 16
a clock per SM, about as long as the memory traffic takes. Forms timed (CUDA events, median of 20 after 3):

- copy: the activation copied (the bytes floor in practice)
- inductor, network form: the network's formula from per-channel statistics (group combination per element)
- inductor, scale/shift given: silu(x * scale + shift) with per-(sample, channel) scale and shift made beforehand
- the same with inductor's use_fast_math
- Triton, one program per (pixel block, image) over all 128 channels, scale and shift loaded once, the sigmoid as
  tl.sigmoid, as exp2 with an approximate division, or as tanh.approx (one special-function instruction)
- inductor, statistics and normalising (the whole GroupNorm + SiLU of the network, both passes)

each with its largest difference from the float32 result.

    OUT=results PYTHONPATH=. python docs/h200/2026-11-30/gn_apply/probe_gn_apply.py
    TRITON_INTERPRET=1 PYTHONPATH=. python docs/h200/2026-11-30/gn_apply/probe_gn_apply.py --check
"""
import json, os, sys

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from regvq_cli.tokenizer.nets import group_norm_by_channels

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from probe_tok_rgb_convs import timed  # noqa: E402  (CUDA events, median of 20 after 3)

GROUPS, EPS = 32, 1e-6


@triton.jit
def _tanh(x, INTERPRETED: tl.constexpr):
    if INTERPRETED:
        return 2 * tl.sigmoid(2 * x) - 1
    return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True,
                                     pack=1)


@triton.jit
def norm_silu_kernel(x_ptr, bias_ptr, scale_ptr, shift_ptr, y_ptr, HW, C: tl.constexpr, BP: tl.constexpr,
                     SIGMOID: tl.constexpr, INTERPRETED: tl.constexpr):
    # x, y [B, H*W, C] (channels-last); bias [C]; scale, shift [B, C] float32. One program: BP pixels of image n.
    n = tl.program_id(1).to(tl.int64)
    p = tl.program_id(0) * BP + tl.arange(0, BP)
    c = tl.arange(0, C)
    offs = n * HW * C + p[:, None] * C + c[None, :]
    mask = p[:, None] < HW
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32) + tl.load(bias_ptr + c).to(tl.float32)[None, :]
    y = x * tl.load(scale_ptr + n * C + c)[None, :] + tl.load(shift_ptr + n * C + c)[None, :]
    y = y.to(tl.bfloat16).to(tl.float32)  # the norm's output is bf16 in the network, SiLU reads it
    if SIGMOID == 0:
        out = y * tl.sigmoid(y)
    elif SIGMOID == 1:
        out = tl.fdiv(y, 1 + tl.exp2(y * -1.4426950408889634))
    else:
        h = 0.5 * y
        out = h + h * _tanh(h, INTERPRETED)
    tl.store(y_ptr + offs, out.to(y_ptr.dtype.element_ty), mask=mask)


def norm_silu(x, bias, scale, shift, sigmoid, bp=64, warps=4):
    B, C, H, W = x.shape
    y = torch.empty_like(x)
    norm_silu_kernel[(triton.cdiv(H * W, bp), B)](x, bias, scale, shift, y, H * W, C=C, BP=bp, SIGMOID=sigmoid,
                                                  INTERPRETED=os.environ.get("TRITON_INTERPRET") == "1",
                                                  num_warps=warps)
    return y


def scale_shift(var_c, mean_c, weight, beta):
    """Per (sample, channel) scale and shift of GroupNorm from per-channel statistics [B, C]."""
    B, C = var_c.shape
    vc, mc = var_c.view(B, GROUPS, -1), mean_c.view(B, GROUPS, -1)
    mean = mc.mean(-1, keepdim=True)
    var = (vc + (mc - mean).square()).mean(-1, keepdim=True)
    scale = torch.rsqrt(var + EPS) * weight.float().view(GROUPS, -1)
    return scale.reshape(B, C), (beta.float().view(GROUPS, -1) - mean * scale).reshape(B, C)


def network_form(c, b, var_c, mean_c, weight, beta):
    x = c + b.view(1, -1, 1, 1)
    B, C = x.shape[:2]
    scale, shift = scale_shift(var_c, mean_c, weight, beta)
    return F.silu((x.float() * scale.view(B, C, 1, 1) + shift.view(B, C, 1, 1)).to(x.dtype))


def given_form(c, b, scale, shift):
    B, C = c.shape[:2]
    x = c + b.view(1, -1, 1, 1)
    return F.silu((x.float() * scale.view(B, C, 1, 1) + shift.view(B, C, 1, 1)).to(x.dtype))


def whole_form(c, b, weight, beta):
    return F.silu(group_norm_by_channels(c + b.view(1, -1, 1, 1), GROUPS, weight, beta, EPS))


def inputs(B, C, H, W, dev):
    torch.manual_seed(0)
    c = (torch.randn(B, C, H, W, device=dev) * 2 + 0.5).to(torch.bfloat16).contiguous(
        memory_format=torch.channels_last)
    b, weight, beta = (torch.randn(C, device=dev).to(torch.bfloat16) for _ in range(3))
    var_c, mean_c = torch.var_mean((c + b.view(1, -1, 1, 1)).float(), dim=(2, 3), correction=0)
    return c, b, weight, beta, var_c, mean_c


def check():
    c, b, weight, beta, var_c, mean_c = inputs(2, 128, 5, 7, "cpu")
    scale, shift = scale_shift(var_c, mean_c, weight, beta)
    want = network_form(c, b, var_c, mean_c, weight, beta).float()
    for sigmoid in (0, 1, 2):
        got = norm_silu(c, b, scale, shift, sigmoid, bp=16).float()
        print(sigmoid, (got - want).abs().max().item())
        assert (got - want).abs().max() <= want.abs().max() / 64


def main():
    dev = torch.device("cuda")
    c, b, weight, beta, var_c, mean_c = inputs(128, 128, 256, 256, dev)
    scale, shift = scale_shift(var_c, mean_c, weight, beta)
    res = {"torch": torch.__version__, "triton": triton.__version__, "gpu": torch.cuda.get_device_name(0),
           "shape": list(c.shape), "rows": {}}
    with torch.inference_mode():
        ref = F.silu((c.float() + b.float().view(1, -1, 1, 1)) * scale.view(128, 128, 1, 1)
                     + shift.view(128, 128, 1, 1))
        out = torch.empty_like(c)
        forms = {"copy": lambda: out.copy_(c),
                 "inductor, network form": lambda f=torch.compile(network_form): f(c, b, var_c, mean_c, weight, beta),
                 "inductor, scale/shift given": lambda f=torch.compile(given_form): f(c, b, scale, shift)}
        try:
            fast = torch.compile(given_form, options={"use_fast_math": True})
            forms["inductor, scale/shift given, use_fast_math"] = lambda: fast(c, b, scale, shift)
        except Exception as e:  # the option may not exist in this torch
            res["use_fast_math"] = repr(e)
        for sigmoid, name in ((0, "tl.sigmoid"), (1, "exp2 + approximate division"), (2, "tanh.approx")):
            for bp, warps in ((32, 4), (64, 4), (64, 8), (128, 8)):
                forms[f"triton {name} BP={bp} warps={warps}"] = (
                    lambda s=sigmoid, bp=bp, w=warps: norm_silu(c, b, scale, shift, s, bp, w))
        forms["inductor, statistics and normalising"] = lambda f=torch.compile(whole_form): f(c, b, weight, beta)
        for name, fn in forms.items():
            try:
                y = fn()
                row = {"ms": round(timed(fn), 4)}
                if name != "copy":
                    row["max_abs_diff"] = float((y.float() - ref).abs().max())
                row["bytes_floor_fraction"] = round(c.numel() * 4 / 4.3e12 / (row["ms"] / 1e3), 3)
            except Exception as e:
                row = {"error": repr(e)[:300]}
            res["rows"][name] = row
            print(name, row, flush=True)
    json.dump(res, open(os.path.join(os.environ.get("OUT", "."), "gn_apply.json"), "w"), indent=1)


if __name__ == "__main__":
    check() if "--check" in sys.argv else main()
