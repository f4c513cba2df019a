"""The Triton kernel of image_conv.py (which explains it), apart so that Triton is imported only when used."""

import triton
import triton.language as tl


@triton.jit
def image_conv_kernel(X, WT, BIAS, Y, H, W, s_xb, s_xc, s_xh, s_xw, C: tl.constexpr, CO: tl.constexpr,
                      BM: tl.constexpr, CHANNELS_LAST: tl.constexpr):
    b = tl.program_id(1)  # the image
    hw = tl.program_id(0) * BM + tl.arange(0, BM)  # [BM] pixel indices within it
    inside = hw < H * W
    h, w = hw // W, hw % W
    t = tl.arange(0, 32)  # (channel, tap row, tap column) in the weight's order: C * 9 <= 32 used
    c, i, j = t // 9, (t % 9) // 3 - 1, t % 3 - 1
    hh, ww = h[:, None] + i[None, :], w[:, None] + j[None, :]  # [BM, 32]: where each pixel's taps read
    ok = inside[:, None] & (t[None, :] < C * 9) & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)  # zero padding
    a = tl.load(X + b * s_xb + c[None, :] * s_xc + hh * s_xh + ww * s_xw, mask=ok, other=0.0)  # [BM, 32]
    co = tl.arange(0, CO)
    wt = tl.load(WT + t[:, None] * CO + co[None, :])  # [32, CO], the rows past C * 9 zero
    acc = tl.dot(a.to(WT.dtype.element_ty), wt) + tl.load(BIAS + co).to(tl.float32)[None, :]  # float32 [BM, CO]
    if CHANNELS_LAST:  # y [B, H, W, CO] as it lies: each pixel's channels contiguous
        out = Y + (b * H * W + hw)[:, None] * CO + co[None, :]
    else:  # NCHW: each channel's pixels contiguous
        out = Y + b * CO * H * W + hw[:, None] + co[None, :] * (H * W)
    tl.store(out, acc.to(Y.dtype.element_ty), mask=inside[:, None])
