"""The Triton kernels of nets.add_biases_ and nets.pad_right_bottom (which explain them), apart so that Triton is
imported only when used.

Both work on activations stored channels-last, [B, P, C] in memory (P = H * W pixels, C contiguous), so every load
and store is contiguous. CP is C rounded up to a power of two (the padding masked). add_biases_kernel sums its
result with norm_silu_kernel's own functions, so that its sums are channel_sums_kernel's."""

import triton
import triton.language as tl

from regvq_cli.tokenizer.norm_silu_kernel import add_shifted, plus_bias, store_sums


@triton.jit
def add_biases_kernel(Y, Y_BIAS, S, S_BIAS, FIRST, SUMS, P, C, SPAN, NS, CP: tl.constexpr, BP: tl.constexpr,
                      SKIP: tl.constexpr, SKIP_BIAS: tl.constexpr):
    # One program a (sample b, span s of SPAN pixels), as norm_silu_kernel.channel_sums_kernel: Y = Y + Y_BIAS, then
    # + S (+ S_BIAS) with SKIP, in place (Y, S [B, P, C]; the biases [C]); and the result's sums as that kernel
    # makes them, in the same order, into SUMS [B, NS, 2, C], from the result's first pixel FIRST [B, C] float32.
    b, s = tl.program_id(0), tl.program_id(1)
    c = tl.arange(0, CP)
    used = c < C
    base = b.to(tl.int64) * P * C
    dtype = Y.dtype.element_ty
    first = tl.load(FIRST + b * C + c, mask=used, other=0.0)
    total, squares = tl.zeros([BP, CP], tl.float32), tl.zeros([BP, CP], tl.float32)
    start = s * SPAN
    stop = tl.minimum(start + SPAN, P)
    for p0 in range(start, stop, BP):
        p = p0 + tl.arange(0, BP)
        inside = (p < stop)[:, None] & used[None, :]
        at = base + p.to(tl.int64)[:, None] * C + c[None, :]
        y = plus_bias(tl.load(Y + at, mask=inside, other=0.0), Y_BIAS, c, used, dtype)
        if SKIP:
            x = tl.load(S + at, mask=inside, other=0.0)
            if SKIP_BIAS:
                x = plus_bias(x, S_BIAS, c, used, dtype)
            y = (y.to(tl.float32) + x.to(tl.float32)).to(dtype)
        tl.store(Y + at, y, mask=inside)
        total, squares = add_shifted(total, squares, y, first, inside)
    store_sums(SUMS, b, s, NS, C, c, used, total, squares)


@triton.jit
def pad_right_bottom_kernel(X, Y, H, W, C, BLOCK: tl.constexpr):
    # One program a (block of BLOCK values of an output row, row r of H + 1, sample b). X [B, H, W, C] in, Y [B, H + 1,
    # W + 1, C] out: x where r < H and the value's pixel < W, zero in the last row and the last pixel of every row.
    j = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    r, b = tl.program_id(1), tl.program_id(2).to(tl.int64)
    read = tl.where(r < H, W * C, 0)  # values of x in this row: none in the last
    x = tl.load(X + (b * H + r) * W * C + j, mask=j < read, other=0.0)
    tl.store(Y + (b * (H + 1) + r) * (W + 1) * C + j, x, mask=j < (W + 1) * C)
