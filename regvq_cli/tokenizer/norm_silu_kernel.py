"""The Triton kernels of nets.group_norm_channels_last (which explains them), apart so that Triton is imported only
when used.

Both read an activation stored channels-last, [B, P, C] in memory (P = H * W pixels, C contiguous), a tile of
[BP pixels, CP channels] at a time: neighbouring threads read neighbouring channels of one pixel, so every load is
contiguous. CP is C rounded up to a power of two (the padding masked). With OFFSET, both read x + OFFSET [C] per
channel, rounded to x's dtype (a preceding convolution's bias, folded into these passes)."""

import triton
import triton.language as tl


@triton.jit
def plus_bias(x, BIAS, c, used, dtype: tl.constexpr):
    # x [..., CP] plus BIAS [C] per channel, the bias first rounded to dtype (as a half-precision convolution adds
    # it), the sum taken in float32 and rounded to dtype: what PyTorch's add of the two gives, bit for bit
    b = tl.load(BIAS + c, mask=used, other=0.0).to(dtype).to(tl.float32)
    return (x.to(tl.float32) + b).to(dtype)


@triton.jit
def add_shifted(total, squares, x, first, inside):
    # a tile x [BP, CP] added to the running sums [BP, CP] of d and d * d, d = x - first (float32; zero outside)
    d = tl.where(inside, x.to(tl.float32) - first[None, :], 0.0)
    return total + d, squares + d * d


@triton.jit
def store_sums(SUMS, b, s, S, C, c, used, total, squares):
    # the running sums, each summed over its tile's pixels, into SUMS [B, S, 2, C] at (sample b, span s)
    out = SUMS + ((b * S + s) * 2) * C + c
    tl.store(out, tl.sum(total, 0), mask=used)
    tl.store(out + C, tl.sum(squares, 0), mask=used)


@triton.jit
def channel_sums_kernel(X, OFFSET, SUMS, P, C, SPAN, S, CP: tl.constexpr, BP: tl.constexpr,
                        HAS_OFFSET: tl.constexpr):
    # One program a (sample b, span s of SPAN pixels). SUMS [B, S, 2, C] float32 out: over the span's pixels, the sum
    # of d and of d * d, d = x - x[b, pixel 0] (each channel shifted by its first value, so that the sum of squares
    # does not cancel where a channel's mean is far from zero).
    b, s = tl.program_id(0), tl.program_id(1)
    c = tl.arange(0, CP)
    used = c < C
    base = X + b.to(tl.int64) * P * C
    first = tl.load(base + c, mask=used, other=0.0)  # [CP]
    if HAS_OFFSET:
        first = plus_bias(first, OFFSET, c, used, X.dtype.element_ty)
    first = first.to(tl.float32)
    total, squares = tl.zeros([BP, CP], tl.float32), tl.zeros([BP, CP], tl.float32)
    start = s * SPAN
    stop = tl.minimum(start + SPAN, P)
    for p0 in range(start, stop, BP):
        p = p0 + tl.arange(0, BP)
        inside = (p < stop)[:, None] & used[None, :]
        x = tl.load(base + p.to(tl.int64)[:, None] * C + c[None, :], mask=inside, other=0.0)
        if HAS_OFFSET:
            x = plus_bias(x, OFFSET, c, used, X.dtype.element_ty)
        total, squares = add_shifted(total, squares, x, first, inside)
    store_sums(SUMS, b, s, S, C, c, used, total, squares)


@triton.jit
def scale_shift_kernel(X, OFFSET, SCALE, SHIFT, Y, P, C, CP: tl.constexpr, BP: tl.constexpr, SILU: tl.constexpr,
                       HAS_OFFSET: tl.constexpr):
    # One program a (sample b, block of BP pixels): y = x * scale[b] + shift[b] per channel, in float32, then SiLU
    # if asked, stored in Y's dtype, laid out as X. SCALE, SHIFT [B, C] float32.
    b, blk = tl.program_id(0), tl.program_id(1)
    c = tl.arange(0, CP)
    used = c < C
    scale = tl.load(SCALE + b * C + c, mask=used, other=0.0)
    shift = tl.load(SHIFT + b * C + c, mask=used, other=0.0)
    p = blk * BP + tl.arange(0, BP)
    inside = (p < P)[:, None] & used[None, :]
    at = b.to(tl.int64) * P * C + p.to(tl.int64)[:, None] * C + c[None, :]
    x = tl.load(X + at, mask=inside, other=0.0)
    if HAS_OFFSET:
        x = plus_bias(x, OFFSET, c, used, X.dtype.element_ty)
    y = x.to(tl.float32) * scale[None, :] + shift[None, :]
    if SILU:
        y = y * tl.sigmoid(y)
    tl.store(Y + at, y.to(Y.dtype.element_ty), mask=inside)
