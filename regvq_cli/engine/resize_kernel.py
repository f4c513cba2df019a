"""The Triton kernels of jpeg.resize_batch on a GPU (jpeg._resize_in_kernels explains them), apart so that Triton is
imported only when used.

Both passes make their taps themselves from each picture's geometry row, GEO [n, 15] float64 as resize_batch lays
it out ((w, h), the box (x0, y0, x1, y1), the resized size (rw, rh), the crop (cx0, cy0, cx1, cy1), the offset
(ox, oy), its place): for output position j of an axis, the first source pixel `lo` it reads and the weights of
that pixel and the next ones, with the same float64 operations in the same order as jpeg._axis_taps (the CPU's
path), so that the two agree but where a sum of the weights in another order breaks an exact tie. Sums are float64,
products added tap by tap in order. `taps` changes from batch to batch: Triton would compile a kernel again for each
new divisibility of such an argument (by 16, or equal to 1), inside a run, so it is not specialised on.

META [n, 4] int64 holds, for picture i, where it starts in SRC, its height h and width w, and where its rows start in
TMP, the horizontal pass's output: uint8 [3, h, OUT_W] a picture, one after another (as much memory as the pictures
take when they are at least OUT_W wide, whatever the batch's tallest)."""

import triton
import triton.language as tl

@triton.jit
def _axis(GEO, i, axis: tl.constexpr, pos):
    # Picture i's resampling along `axis` (0: x, 1: y) at canvas positions pos (int [B]), as jpeg._axis_taps makes
    # it: lo, the first source pixel a position reads, and hi, one past its last (float64 [B]); the kernel's centre
    # in source coordinates [B] and its width factor; whether each position lies in the pasted part.
    g = GEO + i * 15  # the picture's geometry row (15 fields, above)
    n_in, box0, box1 = tl.load(g + axis), tl.load(g + 2 + axis), tl.load(g + 4 + axis)
    n_resized, first, offset = tl.load(g + 6 + axis), tl.load(g + 8 + axis), tl.load(g + 12 + axis)
    n_kept = tl.load(g + 10 + axis) - first
    p = pos.to(tl.float64)
    pasted = (p >= offset) & (p < offset + n_kept)
    scale = (box1 - box0) / n_resized  # source pixels per resized pixel
    widen = tl.maximum(scale, 1.0)
    center = box0 + (p - offset + first + 0.5) * scale
    support = 2.0 * widen
    lo = tl.maximum(tl.floor(center - support + 0.5), 0.0)  # Pillow's xmin, inclusive
    hi = tl.minimum(tl.floor(center + support + 0.5), n_in)  # its xmax, exclusive
    return lo, hi, center, widen, pasted


@triton.jit
def _weight(x, hi, center, widen):
    # The unnormalised weight of source pixel x (float64 [B]) for kernels centred at `center`: Pillow's bicubic
    # (Keys, a = -0.5) of the distance over `widen`, zero from hi on; jpeg._bicubic's operations in its order.
    d = tl.abs((x + 0.5 - center) / widen)
    near = (1.5 * d - 2.5) * d * d + 1.0
    far = ((-0.5 * d + 2.5) * d - 4.0) * d + 2.0
    w = tl.where(d < 1.0, near, tl.where(d < 2.0, far, 0.0))
    return tl.where(x < hi, w, 0.0)


@triton.jit
def _total(lo, hi, center, widen, taps):
    # The sum of a position's unnormalised weights (float64 [B]), tap by tap.
    total = tl.zeros(lo.shape, dtype=tl.float64)
    for k in range(taps):
        total += _weight(lo + k, hi, center, widen)
    return total


@triton.jit
def _normalised(w, total, pasted):
    # A weight divided by its position's total (where that is not zero), and zero outside the pasted part.
    return tl.where(pasted, tl.where(total != 0.0, w / total, w), 0.0)


@triton.jit(do_not_specialize=["taps"])
def resize_rows_kernel(SRC, META, GEO, TMP, taps, OUT_W, BR: tl.constexpr, BJ: tl.constexpr):
    # The horizontal pass. One program a (picture i, block of BR source rows; the blocks past h do nothing). SRC:
    # every picture's uint8 [3, h, w] one after another. TMP out: each source row resized along x, rounded half up
    # to 8 bits as Pillow stores its first pass.
    i, block = tl.program_id(0).to(tl.int64), tl.program_id(1)  # offsets in int64: a batch can pass 2**31 bytes
    start, h = tl.load(META + i * 4), tl.load(META + i * 4 + 1)
    w, rows_at = tl.load(META + i * 4 + 2), tl.load(META + i * 4 + 3)
    r = block * BR + tl.arange(0, BR)  # [BR] source rows
    j = tl.arange(0, BJ)  # [BJ] output columns
    rows, cols = r < h, j < OUT_W
    lo, hi, center, widen, pasted = _axis(GEO, i, 0, j)  # [BJ] each
    total = _total(lo, hi, center, widen, taps)
    first = lo.to(tl.int64)
    for c in range(3):
        acc = tl.zeros([BR, BJ], dtype=tl.float64)
        for k in range(taps):
            weight = _normalised(_weight(lo + k, hi, center, widen), total, pasted)  # [BJ]
            x = first + k  # [BJ] the source column this tap reads
            seen = rows[:, None] & (cols & (x < w))[None, :]
            pixel = tl.load(SRC + start + (c * h + r[:, None]) * w + x[None, :], mask=seen, other=0)
            acc += pixel.to(tl.float64) * weight[None, :]
        t = tl.minimum(tl.maximum(tl.floor(acc + 0.5), 0.0), 255.0)
        tl.store(TMP + rows_at + (c * h + r[:, None]) * OUT_W + j[None, :], t.to(tl.uint8),
                 mask=rows[:, None] & cols[None, :])


@triton.jit(do_not_specialize=["taps"])
def resize_columns_kernel(TMP, META, GEO, BG, OUT, taps, OUT_H, OUT_W, BI: tl.constexpr, BJ: tl.constexpr):
    # The vertical pass. One program a (picture i, block of BI output rows), over TMP's rows. The canvas the
    # picture covers (the positions along each axis whose weights sum to more than zero: pasted, with a nonzero
    # total) takes its pixels; elsewhere it takes BG [3] float64. OUT [n, 3, OUT_H, OUT_W] uint8, the picture
    # written at the index its geometry row's last field gives, rounded half up.
    i, block = tl.program_id(0).to(tl.int64), tl.program_id(1)
    h, rows_at = tl.load(META + i * 4 + 1), tl.load(META + i * 4 + 3)
    o = block * BI + tl.arange(0, BI)  # [BI] output rows
    j = tl.arange(0, BJ)  # [BJ] output columns
    rows, cols = o < OUT_H, j < OUT_W
    lo, hi, center, widen, pasted = _axis(GEO, i, 1, o)  # [BI] each
    total = _total(lo, hi, center, widen, taps)
    lo_x, hi_x, center_x, widen_x, pasted_x = _axis(GEO, i, 0, j)  # [BJ] each: which columns are covered
    total_x = _total(lo_x, hi_x, center_x, widen_x, taps)
    covered = (pasted & (total != 0.0))[:, None] & (pasted_x & (total_x != 0.0))[None, :]
    first = lo.to(tl.int64)
    dest = tl.load(GEO + i * 15 + 14).to(tl.int64)
    for c in range(3):
        acc = tl.zeros([BI, BJ], dtype=tl.float64)
        for k in range(taps):
            weight = _normalised(_weight(lo + k, hi, center, widen), total, pasted)  # [BI]
            y = first + k  # [BI] the resized row of TMP this tap reads
            seen = (rows & (y < h))[:, None] & cols[None, :]
            t = tl.load(TMP + rows_at + (c * h + y[:, None]) * OUT_W + j[None, :], mask=seen, other=0)
            acc += t.to(tl.float64) * weight[:, None]
        value = tl.where(covered, acc, tl.load(BG + c))
        value = tl.minimum(tl.maximum(tl.floor(value + 0.5), 0.0), 255.0)
        tl.store(OUT + ((dest * 3 + c) * OUT_H + o[:, None]) * OUT_W + j[None, :], value.to(tl.uint8),
                 mask=rows[:, None] & cols[None, :])
