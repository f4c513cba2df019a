"""The Triton kernel of nets.few_channels_conv (which explains it), apart so that Triton is imported only when
used."""

import triton
import triton.language as tl


@triton.jit
def few_channels_conv_kernel(X, WT, BIAS, Y, H, W, C, O: tl.constexpr, BM: tl.constexpr, CK: tl.constexpr,
                             CHANNELS_LAST: tl.constexpr):
    # One program a (block of BM pixels, image b). X [B, H, W, C] (channels-last); WT [9, C, 16]: tap (row, column)
    # by input channel by output, the outputs past O zero; BIAS [O]; Y [B, O, H, W], channels-last or NCHW.
    b = tl.program_id(1).to(tl.int64)
    hw = tl.program_id(0) * BM + tl.arange(0, BM)  # [BM] pixel indices within the image
    inside = hw < H * W
    h, w = hw // W, hw % W
    k = tl.arange(0, CK)
    o = tl.arange(0, 16)
    acc = tl.zeros([BM, 16], tl.float32)
    for t in tl.static_range(9):  # each tap: the neighbours' channels [BM, CK] at a time times its weights [CK, 16]
        hh, ww = h + (t // 3 - 1), w + (t % 3 - 1)
        ok = inside & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)  # zero padding
        pixel = X + (b * H * W + hh * W + ww) * C  # [BM]
        for c0 in range(0, C, CK):
            c = c0 + k
            a = tl.load(pixel[:, None] + c[None, :], mask=ok[:, None] & (c < C)[None, :], other=0.0)
            wt = tl.load(WT + (t * C + c)[:, None] * 16 + o[None, :], mask=(c < C)[:, None], other=0.0)
            acc = tl.dot(a, wt, acc)
    acc += tl.load(BIAS + o, mask=o < O, other=0.0).to(tl.float32)[None, :]
    if CHANNELS_LAST:  # y [B, H, W, O] as it lies
        out = Y + (b * H * W + hw)[:, None] * O + o[None, :]
    else:  # NCHW
        out = Y + b * O * H * W + hw[:, None] + o[None, :] * (H * W)
    tl.store(out, acc.to(Y.dtype.element_ty), mask=inside[:, None] & (o < O)[None, :])
