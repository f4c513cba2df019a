"""A variant of regvq_cli.priors.decode_attention_kernel for measuring against it: with an int8 cache, the scores
and the weighted sum of values as fp16 matrix products on the tensor cores (mma), the query (and the softmax
weights) as row 0 of a 16-row tile whose other rows are zero, and each cached byte converted to fp16 by integer
arithmetic. One query per row and head gives the matrix instructions nothing else to multiply: they do 16 times
the arithmetic, with far fewer instructions per cached value than the CUDA cores' multiply and add, where issuing
instructions bounds the kernel (../../../performance.md). For bf16 models: a bf16 query is exact in fp16 (within
fp16's range); the softmax weights are rounded to fp16 (11 bits) as flash attention rounds them.

Counted without a GPU (sass_count.py --mma), it is no improvement as written: 2,592 instructions for a thread's
256 cached values a loop iteration against the kernel's 1,968 (the operands pass through shared memory, with
their address arithmetic), 8.0 a value with 128 keys a block and 12.3 with 4 warps. Its output agrees with the
kernel's to within a bf16 rounding step (Triton's interpreter, `DEVICE=cpu TRITON_INTERPRET=1 ROWS=8 python
probe.py [--mma] --output FILE`: 10% of the outputs one step apart). Not run on a GPU.

`patch()` puts it in place of the kernel before Triton first compiles it (a process of its own). Bf16 queries and
an int8 cache only (the bf16-cache path is the kernel's own, unchanged).
"""
import triton
import triton.language as tl

from regvq_cli.priors.decode_attention_kernel import _int8_to_float, _quantize  # noqa: F401 (the kernel's own)


@triton.jit
def decode_attention_kernel_mma(QKV, ROPE, K, V, KS, VS, O, VALID, LAST, scale,
                            s_qkvb, s_kb, s_kh, s_kl, s_sb, s_sh, s_ob, s_valid,
                            H: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr, HAS_VALID: tl.constexpr,
                            QUANT: tl.constexpr):
    row, head = tl.program_id(0) // H, tl.program_id(0) % H
    last = tl.load(LAST)  # the new key's position: the cache holds positions 0 .. last-1
    d = tl.arange(0, D)
    swapped = (d + D // 2) % D  # (x2, x1): the partner of each feature in its rotation pair
    cos, sin = tl.load(ROPE + last * 2 * D + d), tl.load(ROPE + last * 2 * D + D + d)  # float32, position `last`
    qkv = QKV + row * s_qkvb + head * D  # this row's [3, H, D] projections: q, then k, then v
    # the rotary embedding as layers.apply_rope computes it: x * cos + (x2, x1) * sin in float32, rounded to x's
    # dtype (so the cache holds what the plain step caches)
    q = tl.load(qkv + d)
    q = (q.to(tl.float32) * cos + tl.load(qkv + swapped).to(tl.float32) * sin).to(q.dtype)
    rows16 = tl.arange(0, 16)
    # the query as row 0 of a 16-row fp16 tile (the matrix instructions' smallest), the other rows zero
    q_tile = tl.where(rows16[:, None] == 0, q.to(tl.float16)[None, :], 0.0).to(tl.float16)  # [16, D]
    q = (q.to(tl.float32) * scale).to(tl.float32)  # [D]; scale may come as fp64
    k_new = tl.load(qkv + H * D + d)
    k_new = (k_new.to(tl.float32) * cos + tl.load(qkv + H * D + swapped).to(tl.float32) * sin).to(k_new.dtype)
    v_new = tl.load(qkv + 2 * H * D + d)
    m = tl.full([], float("-inf"), tl.float32)  # running max of the scores
    total = tl.zeros([], tl.float32)  # running sum of exp(score - m)
    acc = tl.zeros([D], tl.float32)  # running sum of exp(score - m) * value
    cache = row * s_kb + head * s_kh  # K and V share their layout
    scales = row * s_sb + head * s_sh  # and their scales theirs (QUANT: int8 values, a float32 scale per position)
    for start in range(0, last, BLOCK):
        pos = start + tl.arange(0, BLOCK)
        inside = pos < last
        keep = inside
        if HAS_VALID:
            keep = keep & (tl.load(VALID + row * s_valid + pos, mask=inside, other=0) != 0)
        k = tl.load(K + cache + pos[:, None] * s_kl + d[None, :], mask=inside[:, None], other=0)
        if QUANT:  # q . (values * scale) = (q . values) * scale
            s = tl.sum(tl.dot(q_tile, tl.trans(_int8_to_half(k))), axis=0)  # [BLOCK]: row 0, the rest zero
            s = s * scale * tl.load(KS + scales + pos, mask=inside, other=0.0)
        else:
            s = tl.sum(k.to(tl.float32) * q[None, :], axis=1)  # [BLOCK]
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=0))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # a block with nothing kept adds nothing
        alpha, p = tl.exp(m - m_ref), tl.exp(s - m_ref)
        v = tl.load(V + cache + pos[:, None] * s_kl + d[None, :], mask=inside[:, None], other=0)
        if QUANT:
            # the weights times 2**10 in fp16, which keeps the small ones out of fp16's subnormal range
            p_v = p * tl.load(VS + scales + pos, mask=inside, other=0.0) * 1024.0
            p_tile = tl.where(rows16[:, None] == 0, p_v[None, :], 0.0).to(tl.float16)  # [16, BLOCK]
            acc = acc * alpha + tl.sum(tl.dot(p_tile, _int8_to_half(v)), axis=0) * (1.0 / 1024.0)
        else:
            acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), axis=0)
        total = total * alpha + tl.sum(p, axis=0)
        m = m_new
    # the new key and value, from registers (never read back from the cache they are written to), as the cache
    # will hold them
    if QUANT:
        k_held, k_scale = _quantize(k_new)
        v_held, v_scale = _quantize(v_new)
        k_att, v_att = k_held.to(tl.float32) * k_scale, v_held.to(tl.float32) * v_scale
        tl.store(KS + scales + last, k_scale)
        tl.store(VS + scales + last, v_scale)
    else:
        k_held, v_held = k_new.to(K.dtype.element_ty), v_new.to(V.dtype.element_ty)
        k_att, v_att = k_held.to(tl.float32), v_held.to(tl.float32)
    s_new = tl.sum(k_att * q, axis=0)
    m_new = tl.maximum(m, s_new)
    alpha, p = tl.exp(m - m_new), tl.exp(s_new - m_new)
    acc = acc * alpha + p * v_att
    total = total * alpha + p
    tl.store(O + row * s_ob + head * D + d, (acc / total).to(O.dtype.element_ty))
    tl.store(K + cache + last * s_kl + d, k_held)
    tl.store(V + cache + last * s_kl + d, v_held)


@triton.jit
def _int8_to_half(x):
    """int8 -> fp16, exactly: x + 0x6480 as 16-bit integer bits is the fp16 1024 + x + 128 (fp16 holds every
    integer up to 2048); subtracting 1152 leaves x."""
    bits = x.to(tl.int16) + 0x6480
    return (bits.to(tl.float16, bitcast=True) - 1152.0).to(tl.float16)


def patch() -> None:
    from regvq_cli.priors import decode_attention_kernel

    decode_attention_kernel.decode_attention_kernel = decode_attention_kernel_mma
