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

import importlib.util
import os

import torch


def kernel():
    """The Triton kernel (imported on first use: importing Triton takes a third of a second). `sample_ar` calls
    this before torch.compile traces a step, which then finds the module already imported."""
    from regvq_cli.priors.decode_attention_kernel import decode_attention_kernel

    return decode_attention_kernel


def available(device) -> bool:
    """Whether the kernel can run for tensors on `device`: Triton is installed and the device is CUDA (or Triton's
    interpreter is on, which runs it on the CPU, for tests)."""
    if importlib.util.find_spec("triton") is None:
        return False
    return torch.device(device).type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


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
    q, k, v = [t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v)]  # views as they come, mostly
    out = torch.empty_like(q)
    flag = valid if valid is not None else last  # any tensor: the kernel does not read it without HAS_VALID
    kernel()[(B * H,)](
        q, k, v, k_cache, v_cache, out, flag, last, 1.0 / D ** 0.5,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), out.stride(0), out.stride(1),
        valid.stride(0) if valid is not None else 0,
        H=H, D=D, BLOCK=block, HAS_VALID=valid is not None)
    return out
