"""A 3x3 convolution that applies GroupNorm's scale and shift and SiLU to its input as it loads it, against cuDNN's
convolution after inductor's normalising pass, at vqgan-f16's widest layer (batch 128, 256 x 256, 128 -> 128
channels, bf16, channels-last, H200).

The kernel is an implicit GEMM in Triton: a program computes BM output pixels (all in one image) by BN output
channels; its K loop runs over the 9 taps and the input channels BK at a time, loading each tap's [BM, BK] input
block (zero outside the image), and, with PROLOGUE, normalising it (x * scale + shift per image and channel, as
nets.group_norm_scale_shift makes them) and applying SiLU before tl.dot. Every input value is loaded and
normalised once per tap, 9 times; SILU picks how the sigmoid is computed: 0 exactly (exp and a division, two
special-function instructions an element), 1 as 0.5 + 0.5 * tanh.approx.f32(y / 2) (one), 2 with tanh.approx.bf16x2
(one for two elements). Rows: cuDNN alone, the normalising pass alone, the Triton kernel without the prologue, and
with it in each SILU form, for a sweep of block shapes; the largest difference of each prologue form from float32
on 4 images.
    OUT=results PYTHONPATH=. python docs/h200/2026-11-30/prologue_conv/probe.py
    TRITON_INTERPRET=1 python docs/h200/2026-11-30/prologue_conv/probe.py --check   # on a CPU, tiny shapes"""
import json
import os
import sys

import torch
import torch.nn.functional as F
import triton
import triton.language as tl


@triton.jit
def tanh_approx(x, BF16X2: tl.constexpr):
    if BF16X2:
        return tl.inline_asm_elementwise("tanh.approx.bf16x2 $0, $1;", "=r,r", [x.to(tl.bfloat16)],
                                         dtype=tl.bfloat16, is_pure=True, pack=2).to(tl.float32)
    return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def normalise(a, ok, SCALE, SHIFT, SILU: tl.constexpr):
    # silu(a * scale + shift) in float32 for a [BM, BK] block of one image's pixels (SCALE, SHIFT: its BK channels'
    # pointers); zero where ok [BM] is false: the padding is zero after the norm
    y = a.to(tl.float32) * tl.load(SCALE)[None, :] + tl.load(SHIFT)[None, :]
    if SILU == 0:
        y = y * tl.sigmoid(y)
    else:
        y = y * (0.5 + 0.5 * tanh_approx(0.5 * y, SILU == 2))
    return tl.where(ok[:, None], y, 0.0)


@triton.jit
def conv3x3_kernel(X, WT, BIAS, SCALE, SHIFT, Y, H, W, CI: tl.constexpr, CO: tl.constexpr, BM: tl.constexpr,
                   BN: tl.constexpr, BK: tl.constexpr, PROLOGUE: tl.constexpr, SILU: tl.constexpr,
                   STAGES: tl.constexpr):
    # X [B, H, W, CI] and Y [B, H, W, CO] channels-last; WT [9 * CI, CO] (tap-major rows); SCALE, SHIFT [B, CI]
    # float32. BM divides H * W, so a program's pixels are in one image.
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    HW = H * W
    b = (pid_m * BM) // HW
    m = pid_m * BM + tl.arange(0, BM)  # [BM] flat output pixels
    p = m % HW
    h, w = p // W, p % W
    n = pid_n * BN + tl.arange(0, BN)
    k = tl.arange(0, BK)
    KC: tl.constexpr = CI // BK
    acc = tl.zeros((BM, BN), tl.float32)
    for it in tl.range(0, 9 * KC, num_stages=STAGES):
        tap = it // KC
        c0 = (it % KC) * BK
        hh, ww = h + tap // 3 - 1, w + tap % 3 - 1
        ok = (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)  # zero padding
        a = tl.load(X + ((b * H + hh) * W + ww)[:, None] * CI + (c0 + k)[None, :], mask=ok[:, None], other=0.0)
        if PROLOGUE:
            a = normalise(a, ok, SCALE + b * CI + c0 + k, SHIFT + b * CI + c0 + k, SILU).to(X.dtype.element_ty)
        wt = tl.load(WT + (tap * CI + c0 + k)[:, None] * CO + n[None, :])
        acc = tl.dot(a, wt, acc)
    acc += tl.load(BIAS + n).to(tl.float32)[None, :]
    tl.store(Y + m[:, None] * CO + n[None, :], acc.to(Y.dtype.element_ty))


@triton.jit
def conv3x3_tma_kernel(XD, WD, BIAS, SCALE, SHIFT, Y, H, W, CI: tl.constexpr, CO: tl.constexpr, BM: tl.constexpr,
                       BN: tl.constexpr, BK: tl.constexpr, PROLOGUE: tl.constexpr, SILU: tl.constexpr,
                       STAGES: tl.constexpr, WS: tl.constexpr):
    # The same through tensor descriptors (TMA): XD over x as [B, H, W, CI] with [1, 1, BM, BK] blocks, a program's
    # BM pixels a stretch of one image row; coordinates outside the image (the taps' padding) read as zeros.
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    tiles_w = W // BM
    b, r = pid_m // (H * tiles_w), pid_m % (H * tiles_w)
    h, w0 = r // tiles_w, (r % tiles_w) * BM
    n = pid_n * BN + tl.arange(0, BN)
    k = tl.arange(0, BK)
    KC: tl.constexpr = CI // BK
    acc = tl.zeros((BM, BN), tl.float32)
    for it in tl.range(0, 9 * KC, num_stages=STAGES, warp_specialize=WS):
        tap = it // KC
        c0 = (it % KC) * BK
        hh, wl = h + tap // 3 - 1, w0 + tap % 3 - 1
        a = XD.load([b, hh, wl, c0]).reshape(BM, BK)
        if PROLOGUE:
            ww = wl + tl.arange(0, BM)
            ok = (ww >= 0) & (ww < W) & (hh >= 0) & (hh < H)
            a = normalise(a, ok, SCALE + b * CI + c0 + k, SHIFT + b * CI + c0 + k, SILU).to(XD.dtype)
        wt = WD.load([tap * CI + c0, pid_n * BN])
        acc = tl.dot(a, wt, acc)
    acc += tl.load(BIAS + n).to(tl.float32)[None, :]
    m = (b * H + h) * W + w0 + tl.arange(0, BM)
    tl.store(Y + m[:, None] * CO + n[None, :], acc.to(Y.dtype.element_ty))


def conv3x3_tma(x, weight, bias, scale=None, shift=None, silu=0, bm=128, bn=128, bk=64, warps=4, stages=3, ws=False):
    from triton.tools.tensor_descriptor import TensorDescriptor

    B, CI, H, W = x.shape
    CO = weight.shape[0]
    assert W % bm == 0 and CI % bk == 0 and CO % bn == 0
    wt = weight.permute(2, 3, 1, 0).reshape(9 * CI, CO).contiguous()
    xd = TensorDescriptor.from_tensor(x.permute(0, 2, 3, 1), [1, 1, bm, bk])
    wd = TensorDescriptor.from_tensor(wt, [bk, bn])
    y = torch.empty_strided((B, CO, H, W), (H * W * CO, 1, W * CO, CO), device=x.device, dtype=x.dtype)
    pro = scale is not None
    conv3x3_tma_kernel[(B * H * W // bm, CO // bn)](
        xd, wd, bias, scale if pro else bias, shift if pro else bias, y, H, W, CI=CI, CO=CO, BM=bm, BN=bn, BK=bk,
        PROLOGUE=pro, SILU=silu, STAGES=stages, WS=ws, num_warps=warps)
    return y


def conv3x3(x, weight, bias, scale=None, shift=None, silu=0, bm=128, bn=128, bk=64, warps=4, stages=3):
    """x [B, CI, H, W] channels-last -> [B, CO, H, W] channels-last; with scale/shift [B, CI] float32 the input is
    silu(x * scale + shift) first."""
    B, CI, H, W = x.shape
    CO = weight.shape[0]
    assert (H * W) % bm == 0 and CI % bk == 0 and CO % bn == 0
    wt = weight.permute(2, 3, 1, 0).reshape(9 * CI, CO).contiguous()  # [(tap, ci), co]
    y = torch.empty_strided((B, CO, H, W), (H * W * CO, 1, W * CO, CO), device=x.device, dtype=x.dtype)
    pro = scale is not None
    conv3x3_kernel[(B * H * W // bm, CO // bn)](
        x, wt, bias, scale if pro else bias, shift if pro else bias, y, H, W, CI=CI, CO=CO, BM=bm, BN=bn, BK=bk,
        PROLOGUE=pro, SILU=silu, STAGES=stages, num_warps=warps)
    return y


def reference(x, weight, bias, scale, shift):
    a = x.float() if scale is None else F.silu(x.float() * scale[:, :, None, None] + shift[:, :, None, None])
    return F.conv2d(a, weight.float(), bias.float(), padding=1)


def make(B, C, CO, H, dtype, device):
    g = torch.Generator(device="cpu").manual_seed(0)
    x = (torch.randn(B, C, H, H, generator=g) * 2 + 0.5).to(device, dtype).contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(CO, C, 3, 3, generator=g) / (3 * C ** 0.5)).to(device, dtype)
    bias = (torch.randn(CO, generator=g) * 0.1).to(device, dtype)
    scale = (torch.rand(B, C, generator=g) * 0.5 + 0.25).to(device)
    shift = (torch.randn(B, C, generator=g) * 0.5).to(device)
    return x, weight, bias, scale, shift


def check():
    x, weight, bias, scale, shift = make(2, 32, 32, 8, torch.float32, "cpu")
    for fn in (conv3x3, conv3x3_tma):
        for pro in (False, True):
            y = fn(x, weight, bias, *((scale, shift) if pro else (None, None)), bm=8 if fn is conv3x3_tma else 32, bn=32,
                   bk=16)
            ref = reference(x, weight, bias, *((scale, shift) if pro else (None, None)))
            print(fn.__name__, "prologue" if pro else "plain", "largest difference", (y - ref).abs().max().item())


def bench(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def main():
    out = os.environ.get("OUT", "results")
    os.makedirs(out, exist_ok=True)
    dev = torch.device("cuda")
    B, C, H = 128, 128, 256
    x, weight, bias, scale, shift = make(B, C, C, H, torch.bfloat16, dev)
    gflop = 2 * B * H * H * C * C * 9 / 1e9
    rows = []

    def row(name, ms, **extra):
        r = {"variant": name, "ms": round(ms, 4), "tflops": round(gflop / ms, 1) if ms else None, **extra}
        rows.append(r)
        print(json.dumps(r), flush=True)
        json.dump({"torch": torch.__version__, "triton": triton.__version__, "batch": B, "size": H,
                   "channels": C, "gflop": gflop, "rows": rows}, open(f"{out}/prologue_conv.json", "w"), indent=1)

    w_cl = weight.contiguous(memory_format=torch.channels_last)
    row("cuDNN conv, weight contiguous", bench(lambda: F.conv2d(x, weight, bias, padding=1)))
    row("cuDNN conv, weight channels-last", bench(lambda: F.conv2d(x, w_cl, bias, padding=1)))
    row("cuDNN conv, weight channels-last, no bias", bench(lambda: F.conv2d(x, w_cl, None, padding=1)))
    apply = torch.compile(lambda x, s, t: F.silu(x.float() * s[:, :, None, None] + t[:, :, None, None]).to(x.dtype))
    apply(x, scale, shift)
    row("normalising pass (inductor)", bench(lambda: apply(x, scale, shift)))
    row("normalising pass + cuDNN conv", bench(lambda: F.conv2d(apply(x, scale, shift), w_cl, bias, padding=1)))
    y_ref = F.conv2d(x, w_cl, bias, padding=1)
    small = [x[:4], weight, bias, scale[:4], shift[:4]]
    ref_small = reference(*small)
    base = F.conv2d(apply(small[0], small[3], small[4]), small[1], small[2], padding=1)
    row("normalising pass + cuDNN conv, 4 images", 0.0, largest_difference=(base.float() - ref_small).abs().max().item())

    pointer = [dict(bm=128, bk=32, warps=4, stages=3), dict(bm=128, bk=64, warps=4, stages=3),
               dict(bm=256, bk=64, warps=8, stages=3)]
    # warp_specialize=True hung on the first start (torch 2.11's Triton 3.6), so it is left out
    tma = [dict(bm=128, bk=64, warps=4, stages=3), dict(bm=128, bk=64, warps=4, stages=4),
           dict(bm=128, bk=64, warps=8, stages=3), dict(bm=256, bk=64, warps=8, stages=3),
           dict(bm=256, bk=64, warps=8, stages=4)]
    for silu in (None, 2, 1, 0):
        for fn, configs in ((conv3x3_tma, tma), (conv3x3, pointer[1:2])):
            for cfg in configs if silu != 0 else configs[:2]:
                args = (None, None, 0) if silu is None else (scale, shift, silu)
                try:
                    ms = bench(lambda: fn(x, weight, bias, *args, **cfg))
                    if silu is None:  # against cuDNN, both bf16
                        err = (fn(x, weight, bias, **cfg).float() - y_ref.float()).abs().max().item()
                    else:  # against float32, on 4 images
                        err = (fn(*small[:3], small[3], small[4], silu, **cfg).float() - ref_small).abs().max().item()
                except Exception as e:  # a config that does not compile or fit
                    print("skip", fn.__name__, silu, cfg, type(e).__name__, str(e)[:300], flush=True)
                    continue
                row(f"{fn.__name__} " + ("plain" if silu is None else f"prologue silu={silu}"), ms, **cfg,
                    largest_difference=err)
    torch.cuda.synchronize()


if __name__ == "__main__":
    check() if "--check" in sys.argv else main()
