"""A candidate Triton GEMV for decode steps (1-2 rows): y[r] = W x[r], W [N, K] bf16 as nn.Linear holds it.
Each program makes BLOCK_N outputs, looping over K in BLOCK_K chunks, accumulating in float32."""
import torch
import triton
import triton.language as tl


@triton.jit
def gemv_kernel(X, W, Y, N, s_x, s_y, K: tl.constexpr, R: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_K: tl.constexpr):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_in = n < N
    acc0 = tl.zeros([BLOCK_N], tl.float32)
    acc1 = tl.zeros([BLOCK_N], tl.float32)
    for k0 in tl.static_range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        w = tl.load(W + n[:, None] * K + k[None, :], mask=rows_in[:, None], other=0.0).to(tl.float32)
        acc0 += tl.sum(w * tl.load(X + k).to(tl.float32)[None, :], axis=1)
        if R == 2:
            acc1 += tl.sum(w * tl.load(X + s_x + k).to(tl.float32)[None, :], axis=1)
    tl.store(Y + n, acc0.to(Y.dtype.element_ty), mask=rows_in)
    if R == 2:
        tl.store(Y + s_y + n, acc1.to(Y.dtype.element_ty), mask=rows_in)


def gemv(x, w, block_n=8, block_k=256, num_warps=4, num_stages=None, out=None):
    R, K = x.shape
    N = w.shape[0]
    y = out if out is not None else torch.empty(R, N, dtype=x.dtype, device=x.device)
    extra = {} if num_stages is None else {"num_stages": num_stages}
    gemv_kernel[(triton.cdiv(N, block_n),)](x, w, y, N, x.stride(0), y.stride(0), K=K, R=R, BLOCK_N=block_n,
                                            BLOCK_K=block_k, num_warps=num_warps, **extra)
    return y
