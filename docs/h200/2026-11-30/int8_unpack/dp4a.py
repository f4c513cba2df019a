"""A variant of regvq_cli.priors.decode_attention_kernel for measuring against it (int8 caches only): the query
quantized per vector as a key is (ar.quantize), so that each key's score is an integer dot product of int8 values,
four products an instruction (dp4a) on the cached bytes as they are loaded, with no conversion to float; the
values' half is the kernel's own. Int8 caches without padding masks (class-conditional priors, as the
benchmarks run). What the int8 query costs in the predictions is measured by
query_int8_quality.py (docs/performance.md). Under Triton's interpreter (which cannot run PTX) dp4a is computed
with shifts and multiplies instead, the same integers.

`patch()` puts it in place of the kernel before Triton first compiles it (a process of its own).
"""
import os

import triton
import triton.language as tl

from regvq_cli.priors.decode_attention_kernel import _int8_to_float, _quantize

INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")


@triton.jit
def decode_attention_kernel_dp4a(QKV, ROPE, K, V, KS, VS, O, VALID, LAST, scale,
                                 s_qkvb, s_kb, s_kh, s_kl, s_sb, s_sh, s_ob, s_valid,
                                 H: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr, HAS_VALID: tl.constexpr,
                                 QUANT: tl.constexpr):
    tl.static_assert(QUANT and not HAS_VALID, "the dp4a variant reads int8 caches, without padding masks")
    row, head = tl.program_id(0) // H, tl.program_id(0) % H
    last = tl.load(LAST)
    d, d4 = tl.arange(0, D), tl.arange(0, D // 4)
    swapped = (d + D // 2) % D
    cos, sin = tl.load(ROPE + last * 2 * D + d), tl.load(ROPE + last * 2 * D + D + d)
    qkv = QKV + row * s_qkvb + head * D
    q = tl.load(qkv + d)
    q = (q.to(tl.float32) * cos + tl.load(qkv + swapped).to(tl.float32) * sin).to(q.dtype)
    q_held, q_scale = _quantize(q)  # int8 [D], the float32 scale
    q_words = tl.sum((tl.reshape(q_held.to(tl.int32) & 0xFF, (D // 4, 4)) << (8 * tl.arange(0, 4))[None, :]),
                     axis=1)  # [D // 4]: four int8 to an int32, the first in the low byte
    k_new = tl.load(qkv + H * D + d)
    k_new = (k_new.to(tl.float32) * cos + tl.load(qkv + H * D + swapped).to(tl.float32) * sin).to(k_new.dtype)
    v_new = tl.load(qkv + 2 * H * D + d)
    m = tl.full([], float("-inf"), tl.float32)
    total = tl.zeros([], tl.float32)
    acc = tl.zeros([D], tl.float32)
    cache = row * s_kb + head * s_kh
    scales = row * s_sb + head * s_sh
    K32 = K.to(tl.pointer_type(tl.int32))  # the keys' bytes four at a time (the cache's offsets are multiples of 4)
    for start in range(0, last, BLOCK):
        pos = start + tl.arange(0, BLOCK)
        inside = pos < last
        k = tl.load(K32 + (cache + pos[:, None] * s_kl) // 4 + d4[None, :], mask=inside[:, None], other=0)
        dots = tl.sum(_dp4a(k, tl.broadcast_to(q_words[None, :], (BLOCK, D // 4))), axis=1)  # [BLOCK] int32
        s = dots.to(tl.float32) * (q_scale * scale) * tl.load(KS + scales + pos, mask=inside, other=0.0)
        s = tl.where(inside, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=0))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha, p = tl.exp(m - m_ref), tl.exp(s - m_ref)
        v = tl.load(V + cache + pos[:, None] * s_kl + d[None, :], mask=inside[:, None], other=0)
        p_v = p * tl.load(VS + scales + pos, mask=inside, other=0.0)
        acc = acc * alpha + tl.sum(p_v[:, None] * _int8_to_float(v), axis=0)
        total = total * alpha + tl.sum(p, axis=0)
        m = m_new
    k_held, k_scale = _quantize(k_new)
    v_held, v_scale = _quantize(v_new)
    tl.store(KS + scales + last, k_scale)
    tl.store(VS + scales + last, v_scale)
    s_new = tl.sum(k_held.to(tl.int32) * q_held.to(tl.int32), axis=0).to(tl.float32) * (q_scale * scale) * k_scale
    m_new = tl.maximum(m, s_new)
    alpha, p = tl.exp(m - m_new), tl.exp(s_new - m_new)
    acc = acc * alpha + p * (v_held.to(tl.float32) * v_scale)
    total = total * alpha + p
    tl.store(O + row * s_ob + head * D + d, (acc / total).to(O.dtype.element_ty))
    tl.store(K + cache + last * s_kl + d, k_held)
    tl.store(V + cache + last * s_kl + d, v_held)


@triton.jit
def _dp4a(a, b):
    """Per int32 pair: the sum of the products of their four signed bytes."""
    if INTERPRETED:
        out = tl.zeros(a.shape, tl.int32)
        for j in tl.static_range(4):
            out += ((a << (24 - 8 * j)) >> 24) * ((b << (24 - 8 * j)) >> 24)
        return out
    else:
        return tl.inline_asm_elementwise("dp4a.s32.s32 $0, $1, $2, 0;", "=r,r,r", [a, b], dtype=tl.int32,
                                         is_pure=True, pack=1)


def patch() -> None:
    """Also takes the values' conversion the kernel module has now: permute.patch() first gives permute's."""
    from regvq_cli.priors import decode_attention_kernel

    globals()["_int8_to_float"] = decode_attention_kernel._int8_to_float
    decode_attention_kernel.decode_attention_kernel = decode_attention_kernel_dp4a
