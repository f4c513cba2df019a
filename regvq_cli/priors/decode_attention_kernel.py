"""The Triton kernel of decode_attention.py (which explains it), apart so that Triton is imported only when used."""

import triton
import triton.language as tl


@triton.jit
def decode_attention_kernel(QKV, ROPE, K, V, KS, VS, O, VALID, LAST, scale,
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
            s = tl.sum(_int8_to_float(k) * q[None, :], axis=1) * tl.load(KS + scales + pos, mask=inside, other=0.0)
        else:
            s = tl.sum(k.to(tl.float32) * q[None, :], axis=1)  # [BLOCK]
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=0))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # a block with nothing kept adds nothing
        alpha, p = tl.exp(m - m_ref), tl.exp(s - m_ref)
        v = tl.load(V + cache + pos[:, None] * s_kl + d[None, :], mask=inside[:, None], other=0)
        if QUANT:
            p_v = p * tl.load(VS + scales + pos, mask=inside, other=0.0)
            acc = acc * alpha + tl.sum(p_v[:, None] * _int8_to_float(v), axis=0)
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
def _int8_to_float(x):
    """int8 -> float32 without the GPU's slow integer-to-float conversion: x + 128 (0..255) as the low mantissa
    bits of 2**23 is the float 2**23 + x + 128, exactly; subtracting 2**23 + 128 leaves x. Those bits are the
    integer x + 0x4B000080 (x + 128 never carries into the exponent): one integer addition per value after the
    byte is unpacked (integer operations take, by count, nearly as long as the kernel's reads)."""
    bits = x.to(tl.int32) + 0x4B000080
    return bits.to(tl.float32, bitcast=True) - 8388736.0


@triton.jit
def _quantize(x):
    """ar.quantize of one vector [D] with the same float32 operations: (int8 values, float32 scale)."""
    x = x.to(tl.float32)
    scale = tl.maximum(tl.max(tl.abs(x), axis=0), 1e-12) / 127.0
    r = x / scale
    r = (r + 12582912.0) - 12582912.0  # to the nearest integer, half to even (1.5 * 2**23: float32 rounds there)
    return tl.clamp(r, -127.0, 127.0).to(tl.int8), scale


@triton.jit
def add_rms_norm_kernel(X, Y, W, S, N, eps, s_x, s_y, s_s, s_n, D: tl.constexpr, BLOCK: tl.constexpr):
    """One row: s = x + y (the residual stream, rounded to its dtype as torch's add is) and n = rms_norm(s) * w
    (F.rms_norm's order: normalise in float32, round to s's dtype, then the gain)."""
    row = tl.program_id(0)
    d = tl.arange(0, BLOCK)
    inside = d < D
    x = tl.load(X + row * s_x + d, mask=inside, other=0.0)
    # the arithmetic in float32, each result rounded to x's dtype where torch's ops round theirs
    s = (x.to(tl.float32) + tl.load(Y + row * s_y + d, mask=inside, other=0.0).to(tl.float32)).to(x.dtype)
    tl.store(S + row * s_s + d, s, mask=inside)
    sf = s.to(tl.float32)
    normed = (sf * tl.rsqrt(tl.sum(sf * sf, axis=0) / D + eps)).to(x.dtype).to(tl.float32)
    gain = tl.load(W + d, mask=inside, other=0.0).to(tl.float32)
    tl.store(N + row * s_n + d, (normed * gain).to(x.dtype), mask=inside)
