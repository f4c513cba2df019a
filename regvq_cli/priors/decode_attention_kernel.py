"""The Triton kernel of decode_attention.py (which explains it), apart so that Triton is imported only when used."""

import triton
import triton.language as tl


@triton.jit
def decode_attention_kernel(QKV, ROPE, K, V, O, VALID, LAST, scale,
                            s_qkvb, s_kb, s_kh, s_kl, s_ob, s_valid,
                            H: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr, HAS_VALID: tl.constexpr):
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
    # the new key and value, from registers (never read back from the cache they are written to)
    s_new = tl.sum(k_new.to(tl.float32) * q, axis=0)
    m_new = tl.maximum(m, s_new)
    alpha, p = tl.exp(m - m_new), tl.exp(s_new - m_new)
    acc = acc * alpha + p * v_new.to(tl.float32)
    total = total * alpha + p
    tl.store(O + row * s_ob + head * D + d, (acc / total).to(O.dtype.element_ty))
    tl.store(K + cache + last * s_kl + d, k_new.to(K.dtype.element_ty))
    tl.store(V + cache + last * s_kl + d, v_new.to(V.dtype.element_ty))


@triton.jit
def add_rms_norm_kernel(X, Y, W, S, N, eps, s_x, s_y, s_s, s_n, D: tl.constexpr, BLOCK: tl.constexpr):
    """One row: s = x + y (the residual stream, rounded to its dtype as torch's add is) and n = rms_norm(s) * w
    (F.rms_norm's order: normalise in float32, round to s's dtype, then the gain)."""
    row = tl.program_id(0)
    d = tl.arange(0, BLOCK)
    inside = d < D
    s = tl.load(X + row * s_x + d, mask=inside, other=0.0) + tl.load(Y + row * s_y + d, mask=inside, other=0.0)
    tl.store(S + row * s_s + d, s, mask=inside)
    sf = s.to(tl.float32)
    normed = (sf * tl.rsqrt(tl.sum(sf * sf, axis=0) / D + eps)).to(s.dtype)
    tl.store(N + row * s_n + d, normed * tl.load(W + d, mask=inside, other=0.0), mask=inside)
