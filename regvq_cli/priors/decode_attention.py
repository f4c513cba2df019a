"""Attention of one new query per row over a static KV cache, as a Triton kernel that reads only the written part.

The sampler's decode step attends positions [0, p] of a cache of max_len positions, with p on the device (the
step is a CUDA graph: nothing on the host may depend on p). Through `F.scaled_dot_product_attention` that takes a
fixed window of the cache and an additive mask over the unwritten rest: the kernels then read more of the cache
than the step needs, and a mask costs cuDNN's decode kernel 1.3-1.6x its unmasked time (docs/performance.md).
This kernel instead loads p from device memory and loops over exactly the cached positions before it, so it
needs neither a window nor a mask; padded prefix positions (text) are skipped through the cache's `valid` rows.
It also takes the step's new key and value, adds them to the softmax from registers and writes them to the cache
at p: one kernel where the plain step launches three (two cache writes and the attention).

One program per (row, head): an online softmax (Milakov & Gimelshein 2018; flash-decoding's inner loop, Dao et
al. 2023) over blocks of keys, accumulated in float32.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the kernel is optional: without Triton the samplers use SDPA
    triton = None

if triton is not None:

    @triton.jit
    def _decode_attention_kernel(Q, KN, VN, K, V, O, VALID, LAST, scale,
                                 s_qb, s_qh, s_nb, s_nh, s_kb, s_kh, s_kl, s_ob, s_oh, s_valid,
                                 H: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr, HAS_VALID: tl.constexpr):
        row, head = tl.program_id(0) // H, tl.program_id(0) % H
        last = tl.load(LAST)  # the new key's position: the cache holds positions 0 .. last-1
        d = tl.arange(0, D)
        q = tl.load(Q + row * s_qb + head * s_qh + d).to(tl.float32) * scale  # [D]
        m = tl.full([], float("-inf"), tl.float32)  # running max of the scores
        total = tl.zeros([], tl.float32)  # running sum of exp(score - m)
        acc = tl.zeros([D], tl.float32)  # running sum of exp(score - m) * value
        cache = row * s_kb + head * s_kh  # K and V share their layout
        for start in range(0, last, BLOCK):
            pos = start + tl.arange(0, BLOCK)
            inside = pos < last
            keep = inside
            if HAS_VALID:
                keep = keep & (tl.load(VALID + row * s_valid + pos, mask=inside, other=0) != 0)
            k = tl.load(K + cache + pos[:, None] * s_kl + d[None, :], mask=inside[:, None], other=0.0)
            s = tl.where(keep, tl.sum(k.to(tl.float32) * q[None, :], axis=1), float("-inf"))  # [BLOCK]
            m_new = tl.maximum(m, tl.max(s, axis=0))
            m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # a block with nothing kept adds nothing
            alpha, p = tl.exp(m - m_ref), tl.exp(s - m_ref)
            v = tl.load(V + cache + pos[:, None] * s_kl + d[None, :], mask=inside[:, None], other=0.0)
            acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), axis=0)
            total = total * alpha + tl.sum(p, axis=0)
            m = m_new
        # the new key and value, from their own tensors (never read back from the cache they are written to)
        k_new = tl.load(KN + row * s_nb + head * s_nh + d)
        v_new = tl.load(VN + row * s_nb + head * s_nh + d)
        s_new = tl.sum(k_new.to(tl.float32) * q, axis=0)
        m_new = tl.maximum(m, s_new)
        alpha, p = tl.exp(m - m_new), tl.exp(s_new - m_new)
        acc = acc * alpha + p * v_new.to(tl.float32)
        total = total * alpha + p
        tl.store(O + row * s_ob + head * s_oh + d, (acc / total).to(O.dtype.element_ty))
        tl.store(K + cache + last * s_kl + d, k_new.to(K.dtype.element_ty))
        tl.store(V + cache + last * s_kl + d, v_new.to(V.dtype.element_ty))


def available(device) -> bool:
    """Whether the kernel can run for tensors on `device`: Triton is installed and the device is CUDA (or Triton's
    interpreter is on, which runs it on the CPU, for tests)."""
    return triton is not None and (torch.device(device).type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")


def decode_attention(q, k, v, k_cache, v_cache, last, valid=None, block: int = 64):
    """Append k, v at cache position `last` and return softmax(q k^T / sqrt(hd)) v over positions 0 .. last (and,
    where `valid` [B, max_len] bool is given, only its True ones among the earlier positions): q, k, v [B, H, 1,
    hd]; k_cache, v_cache [B, H, max_len, hd], written in place at `last`; last a 1-element long tensor on the
    device. One kernel for what the plain step does in three (two cache writes and the attention). Returns [B, H,
    1, hd] in q's dtype. hd must be a power of two."""
    B, H, _, D = q.shape
    if D & (D - 1):
        raise ValueError(f"the decode kernel needs a power-of-two head size, got {D}")
    if k_cache.stride() != v_cache.stride() or k_cache.stride(-1) != 1:
        raise ValueError("the decode kernel needs keys and values cached alike, the last dimension contiguous")
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    if k.stride() != v.stride():
        raise ValueError("the decode kernel needs the new keys and values laid out alike")
    out = torch.empty_like(q)
    flag = valid if valid is not None else last  # any tensor: the kernel does not read it without HAS_VALID
    _decode_attention_kernel[(B * H,)](
        q, k, v, k_cache, v_cache, out, flag, last, 1.0 / D ** 0.5,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k_cache.stride(0), k_cache.stride(1),
        k_cache.stride(2), out.stride(0), out.stride(1), valid.stride(0) if valid is not None else 0,
        H=H, D=D, BLOCK=block, HAS_VALID=valid is not None)
    return out
