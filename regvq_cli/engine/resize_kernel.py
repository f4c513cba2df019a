"""The Triton kernels of jpeg.resize_batch on a GPU (jpeg._resize_by_taps explains them), apart so that Triton is
imported only when used.

Both passes read a picture's taps: for output position j of an axis, the first source pixel LO[j] it reads and the
weights W[j, 0..taps) of that pixel and the next ones (zero past the source's last pixel and for positions outside
the pasted region). Sums are float64, products added tap by tap in order. `taps` changes from batch to batch: Triton
would compile a kernel again for each new divisibility of such an argument (by 16, or equal to 1), inside a run, so
it is not specialised on.

META [n, 4] int64 holds, for picture i, where it starts in SRC, its height h and width w, and where its rows start in
TMP, the horizontal pass's output: uint8 [3, h, OUT_W] a picture, one after another (as much memory as the pictures
take when they are at least OUT_W wide, whatever the batch's tallest)."""

import triton
import triton.language as tl


@triton.jit(do_not_specialize=["taps"])
def resize_rows_kernel(SRC, META, LO, W, TMP, taps, OUT_W, BR: tl.constexpr, BJ: tl.constexpr):
    # The horizontal pass. One program a (picture i, block of BR source rows; the blocks past h do nothing). SRC:
    # every picture's uint8 [3, h, w] one after another. LO [n, OUT_W] int64 and W [n, OUT_W, taps] float64: the
    # taps along x. TMP out: each source row resized along x, rounded half up to 8 bits as Pillow stores its first
    # pass.
    i, block = tl.program_id(0).to(tl.int64), tl.program_id(1)  # offsets in int64: a batch can pass 2**31 bytes
    start, h = tl.load(META + i * 4), tl.load(META + i * 4 + 1)
    w, rows_at = tl.load(META + i * 4 + 2), tl.load(META + i * 4 + 3)
    r = block * BR + tl.arange(0, BR)  # [BR] source rows
    j = tl.arange(0, BJ)  # [BJ] output columns
    rows, cols = r < h, j < OUT_W
    lo = tl.load(LO + i * OUT_W + j, mask=cols, other=0)
    for c in range(3):
        acc = tl.zeros([BR, BJ], dtype=tl.float64)
        for k in range(taps):
            weight = tl.load(W + (i * OUT_W + j) * taps + k, mask=cols, other=0.0)  # [BJ]
            x = lo + k  # [BJ] the source column this tap reads
            seen = rows[:, None] & (cols & (x < w))[None, :]
            pixel = tl.load(SRC + start + (c * h + r[:, None]) * w + x[None, :], mask=seen, other=0)
            acc += pixel.to(tl.float64) * weight[None, :]
        t = tl.minimum(tl.maximum(tl.floor(acc + 0.5), 0.0), 255.0)
        tl.store(TMP + rows_at + (c * h + r[:, None]) * OUT_W + j[None, :], t.to(tl.uint8),
                 mask=rows[:, None] & cols[None, :])


@triton.jit(do_not_specialize=["taps"])
def resize_columns_kernel(TMP, META, LO, W, PASTED_Y, PASTED_X, BG, PLACE, OUT, taps, OUT_H, OUT_W,
                          BI: tl.constexpr, BJ: tl.constexpr):
    # The vertical pass. One program a (picture i, block of BI output rows). LO [n, OUT_H] int64 and W [n, OUT_H,
    # taps] float64: the taps along y, over TMP's rows. PASTED_Y [n, OUT_H] and PASTED_X [n, OUT_W] uint8: the rows
    # and columns the picture covers; elsewhere the canvas takes BG [3] float64. OUT [n, 3, OUT_H, OUT_W] uint8, the
    # picture written at index PLACE[i], rounded half up.
    i, block = tl.program_id(0).to(tl.int64), tl.program_id(1)
    h, rows_at = tl.load(META + i * 4 + 1), tl.load(META + i * 4 + 3)
    o = block * BI + tl.arange(0, BI)  # [BI] output rows
    j = tl.arange(0, BJ)  # [BJ] output columns
    rows, cols = o < OUT_H, j < OUT_W
    lo = tl.load(LO + i * OUT_H + o, mask=rows, other=0)
    covered = ((tl.load(PASTED_Y + i * OUT_H + o, mask=rows, other=0) != 0)[:, None]
               & (tl.load(PASTED_X + i * OUT_W + j, mask=cols, other=0) != 0)[None, :])
    dest = tl.load(PLACE + i)
    for c in range(3):
        acc = tl.zeros([BI, BJ], dtype=tl.float64)
        for k in range(taps):
            weight = tl.load(W + (i * OUT_H + o) * taps + k, mask=rows, other=0.0)  # [BI]
            y = lo + k  # [BI] the resized row of TMP this tap reads
            seen = (rows & (y < h))[:, None] & cols[None, :]
            t = tl.load(TMP + rows_at + (c * h + y[:, None]) * OUT_W + j[None, :], mask=seen, other=0)
            acc += t.to(tl.float64) * weight[:, None]
        value = tl.where(covered, acc, tl.load(BG + c))
        value = tl.minimum(tl.maximum(tl.floor(value + 0.5), 0.0), 255.0)
        tl.store(OUT + ((dest * 3 + c) * OUT_H + o[:, None]) * OUT_W + j[None, :], value.to(tl.uint8),
                 mask=rows[:, None] & cols[None, :])
