"""Attention of one new query per row over a static KV cache, as a Triton kernel that reads only the written part.

The sampler's decode step attends positions [0, p] of a cache of max_len positions, with p on the device (the
step is a CUDA graph: nothing on the host may depend on p). Through `F.scaled_dot_product_attention` that takes a
fixed window of the cache and an additive mask over the unwritten rest: the kernels then read more of the cache
than the step needs, and a mask costs cuDNN's decode kernel 1.3-1.6x its unmasked time (docs/performance.md).
This kernel instead loads p from device memory and loops over exactly the cached positions before it, so it
needs neither a window nor a mask; padded prefix positions (text) are skipped through the cache's `valid` rows.
It also takes the step's projections as they come out of the qkv layer, rotates q and k (the rotary embedding,
from tables of every position made once per cache), adds the new key and value to the softmax from registers
and writes them to the cache at p: one kernel where the plain step launches about six (the rotation, the copies
that lay q, k and v out per head, two cache writes and the attention), which counts at batch 1, where a step is
a long chain of small kernels.

One program per (row, head): an online softmax (Milakov & Gimelshein 2018; flash-decoding's inner loop, Dao et
al. 2023) over blocks of keys, accumulated in float32.
"""

from __future__ import annotations

import torch

from regvq_cli.engine.device import TRITON_INTERPRETED, cdiv, next_power_of_two
from regvq_cli.engine.device import triton_runs_on as available  # noqa: F401  (whether the kernel can run on a device)
from regvq_cli.priors.layers import rope_cos_sin


def kernel():
    """The Triton kernel (imported on first use: importing Triton takes a third of a second). `sample_ar` calls
    this before torch.compile traces a step, which then finds the module already imported."""
    from regvq_cli.priors.decode_attention_kernel import decode_attention_kernel

    return decode_attention_kernel


def launch_config(programs: int) -> tuple[int, int | None, int | None]:
    """(keys per loop iteration, warps, pipeline stages) for a launch of `programs` (rows x heads) programs, as
    measured on an H200 (`benchmarks/bench_attention.py --triton`): many programs (a large batch) keep the
    GPU's memory busy with one warp each; a few (batch 1) need wide blocks, so each loops fewer times."""
    if programs >= 1024:
        return 64, 1, 2
    return 256, 4, 1


def rope_table(max_len: int, head_dim: int, theta: float, device=None):
    """The rotary embedding's float32 cos and sin of every cache position, [max_len, 2, head_dim], for the kernel
    to index by the step's position (layers.rope_cos_sin's values: the same function, all positions at once)."""
    cos, sin = rope_cos_sin(torch.arange(max_len, device=device), head_dim, theta)
    return torch.stack([cos, sin], 1)


def decode_attention(qkv, rope, k_cache, v_cache, last, valid=None, block: int | None = None,
                     num_warps: int | None = None, num_stages: int | None = None, scales=None, offset: int = 0):
    """One decode step's attention from its projections: rotate q and k (rotary embedding, as
    layers.apply_rope), append k and v at cache position `last`, and return softmax(q k^T / sqrt(hd)) v over
    positions 0 .. last (and, where `valid` [B, max_len] bool is given, only its True ones among the earlier
    positions).

    qkv [B, 3, H, hd]: the step's unrotated q, k and v (the qkv projection's output, a view); rope [max_len, 2,
    hd]: `rope_table`; k_cache, v_cache [B, H, max_len, hd], written in place at `last`; last a 1-element long
    tensor on the device, to which the kernel adds `offset` (a step passes its image position and the prefix's
    length: computing their sum outside, a compiled step made it anew for every argument it was passed as, four
    small kernels a layer). The caches may hold another dtype than qkv's; int8 caches come with `scales`, the
    float32 (k_scale, v_scale) [B, H, max_len] of ar.KVCache, and the new key and value are quantized as
    ar.quantize does before they are attended (a step attends what later steps read back), the query too (its
    products with the keys are then integer dot products, four bytes at a time: the plain path of ar.Attention
    rounds its queries the same way). Returns
    [B, H, hd] in qkv's dtype (contiguous, so `.view(B, 1, H * hd)` is the
    attention's output for the projection). One kernel for what the plain step does in about six (rotation, two
    cache writes, the attention, and the copies between them). hd must be a power of two. `block` (keys per loop
    iteration), `num_warps` and `num_stages` tune the launch (`launch_config`'s when block is None; Triton's
    defaults for warps and stages left None)."""
    B, three, H, D = qkv.shape
    if D & (D - 1):
        raise ValueError(f"the decode kernel needs a power-of-two head size, got {D}")
    if three != 3 or qkv.stride()[1:] != (H * D, D, 1):
        raise ValueError("the decode kernel needs each row's q, k and v projections contiguous, [B, 3, H, hd]")
    if k_cache.stride() != v_cache.stride() or k_cache.stride(-1) != 1:
        raise ValueError("the decode kernel needs keys and values cached alike, the last dimension contiguous")
    if rope.dtype != torch.float32 or not rope.is_contiguous() or rope.shape[1:] != (2, D):
        raise ValueError("the decode kernel needs rope_table's float32 [max_len, 2, hd] tables")
    if k_cache.dtype != v_cache.dtype or (k_cache.dtype == torch.int8) != (scales is not None):
        raise ValueError("the decode kernel needs keys and values cached in one dtype, int8 with their scales")
    if scales is not None and (scales[0].stride() != scales[1].stride() or scales[0].stride(-1) != 1):
        raise ValueError("the decode kernel needs the keys' and values' scales laid out alike, positions contiguous")
    # (the start of the cache itself is not checked: torch.compile cannot trace data_ptr or storage_offset, and
    # ar.KVCache's buffers are allocations of their own)
    if scales is not None and any(s % 4 for s in k_cache.stride()[:3]):
        raise ValueError("the decode kernel reads an int8 cache's keys four bytes at a time: their rows must start "
                         "at multiples of 4 bytes")
    k_scale, v_scale = scales if scales is not None else (last, last)  # unread without int8
    out = qkv.new_empty(B, H, D)
    flag = valid if valid is not None else last  # any tensor: the kernel does not read it without HAS_VALID
    if block is None:
        block, num_warps, num_stages = launch_config(B * H)
    tuning = {k: v for k, v in (("num_warps", num_warps), ("num_stages", num_stages)) if v is not None}
    kernel()[(B * H,)](
        qkv, rope, k_cache, v_cache, k_scale, v_scale, out, flag, last, offset, 1.0 / D ** 0.5,
        qkv.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        k_scale.stride(0) if scales is not None else 0, k_scale.stride(1) if scales is not None else 0,
        out.stride(0), valid.stride(0) if valid is not None else 0,
        H=H, D=D, BLOCK=block, HAS_VALID=valid is not None, QUANT=scales is not None, **tuning)
    return out


def add_rms_norm(x, y, weight, eps: float):
    """(x + y, rms_norm(x + y) * weight) in one kernel, for rows of x, y [..., D] (the residual stream and a
    branch's output) and a gain [D] of their dtype: the decode step's residual add and the next norm, which
    inductor leaves as two kernels."""
    D = x.shape[-1]
    x2, y2 = x.reshape(-1, D), y.reshape(-1, D)
    if x2.stride(-1) != 1 or y2.stride(-1) != 1 or weight.dtype != x.dtype or y.dtype != x.dtype:
        raise ValueError("add_rms_norm needs rows with a contiguous last dimension and one dtype throughout")
    s, n = torch.empty_like(x2), torch.empty_like(x2)
    add_norm_kernel()[(x2.shape[0],)](x2, y2, weight, s, n, eps, x2.stride(0), y2.stride(0), s.stride(0), n.stride(0),
                                     D=D, BLOCK=next_power_of_two(D))
    return s.view(x.shape), n.view(x.shape)


def add_norm_kernel():
    from regvq_cli.priors.decode_attention_kernel import add_rms_norm_kernel

    return add_rms_norm_kernel


# decode steps of at most this many rows (one image with guidance: 2) run their linear layers through rows_linear;
# at 4 rows, cuBLAS after add_rms_norm took less time for qkv and gate_up than rows_linear did, and the layers
# together about as long (`benchmarks/bench_decode_linear.py`, docs/performance.md)
FEW_ROWS = 2


def rows_linear(x, weight, *, norm=None, add=None, eps: float = 1e-5, glu: bool = False,
                block_n: int | None = None, block_k: int = 512, num_warps: int = 4):
    """weight [N, K] times each of a few rows a [R, K] (a step's, up to FEW_ROWS), in one kernel: a decode step's
    linear layer at batch 1, with the work before it folded in. a is x [R, K]; with `norm` (a gain [K])
    rms_norm(x + add) * norm, as add_rms_norm makes it but for rounding (the kernel divides the products by the
    rms, see the kernel; `add` may be None: the norm of x); with `glu`, silu(gate) * up of x [R, 2K] = (gate, up),
    the SwiGLU's.
    Returns out [R, N], and with `norm` first x + add (the residual stream: x itself without `add`).

    Why: at batch 1 a step reads each weight once, a few MB in a few microseconds, and a chain of about 150 small
    kernels (cuBLAS's GEMV, the residual add and norm, SiLU times up) spends more time starting and ending kernels
    than reading. cuBLAS's kernels for one or two rows also use few of the GPU's SMs: BLOCK_N outputs a program
    spreads a layer over hundreds (measured on an H200, docs/performance.md; the launch defaults are the best of
    that sweep: 4 outputs a program, 512 inputs an iteration, 4 warps). All rows, weight and gain of one dtype,
    contiguous rows."""
    R, K = x.shape[0], weight.shape[1]
    N = weight.shape[0]
    # (Triton's interpreter, which runs the kernels in the CPU tests, runs programs one by one: one there)
    block_n = block_n or (next_power_of_two(N) if TRITON_INTERPRETED else 4)
    if x.dim() != 2 or x.shape[1] != (2 * K if glu else K) or x.stride(-1) != 1:
        raise ValueError(f"rows_linear takes rows of {2 * K if glu else K} values, contiguous")
    if not weight.is_contiguous() or weight.dtype != x.dtype or (norm is not None and norm.dtype != x.dtype):
        raise ValueError("rows_linear needs a contiguous weight and one dtype throughout")
    if add is not None and (norm is None or add.shape != x.shape or add.stride(-1) != 1 or add.dtype != x.dtype):
        raise ValueError("rows_linear adds `add` (x's shape and dtype) only before a norm")
    out = x.new_empty(R, N)
    stream = x.new_empty(R, K) if add is not None else x
    other = add if add is not None else x  # unread without `add`
    linear_kernel()[(cdiv(N, block_n),)](
        x, other, norm if norm is not None else weight, weight, out, stream, R, N, eps,
        x.stride(0), other.stride(0), out.stride(0), stream.stride(0),
        K=K, RP=next_power_of_two(R), BLOCK_N=block_n,
        BLOCK_K=min(block_k, next_power_of_two(K)), NORM=norm is not None, ADD=add is not None, GLU=glu,
        num_warps=num_warps)
    return (stream, out) if norm is not None else out


def linear_kernel():
    from regvq_cli.priors.decode_attention_kernel import rows_linear_kernel

    return rows_linear_kernel
