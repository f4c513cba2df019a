"""The Triton kernel of decode_attention.py (which explains it), apart so that Triton is imported only when used."""

import triton
import triton.language as tl

from regvq_cli.engine.device import TRITON_INTERPRETED

# Triton's interpreter (tests on the CPU) cannot run inline PTX: there the int8 helpers take their plain forms,
# which give the same numbers
INTERPRETED = tl.constexpr(TRITON_INTERPRETED)


@triton.jit
def decode_attention_kernel(QKV, ROPE, K, V, KS, VS, O, VALID, LAST, OFFSET, scale,
                            s_qkvb, s_kb, s_kh, s_kl, s_sb, s_sh, s_ob, s_valid,
                            H: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr, HAS_VALID: tl.constexpr,
                            QUANT: tl.constexpr):
    row, head = tl.program_id(0) // H, tl.program_id(0) % H
    last = tl.load(LAST) + OFFSET  # the new key's position: the cache holds positions 0 .. last-1
    d = tl.arange(0, D)
    swapped = (d + D // 2) % D  # (x2, x1): the partner of each feature in its rotation pair
    cos, sin = tl.load(ROPE + last * 2 * D + d), tl.load(ROPE + last * 2 * D + D + d)  # float32, position `last`
    qkv = QKV + row * s_qkvb + head * D  # this row's [3, H, D] projections: q, then k, then v
    # the rotary embedding as layers.apply_rope computes it: x * cos + (x2, x1) * sin in float32, rounded to x's
    # dtype (so the cache holds what the plain step caches)
    q = tl.load(qkv + d)
    q = (q.to(tl.float32) * cos + tl.load(qkv + swapped).to(tl.float32) * sin).to(q.dtype)
    if QUANT:  # the query quantized as a key is (ar.Attention does the same): scores are integer dot products
        q_held, q_scale = _quantize(q)  # int8 [D], float32
        q_scale = (q_scale * scale).to(tl.float32)  # scale may come as fp64 (a compiled step): the loop's stay fp32
        q_words = _pack4(q_held)  # [D // 4] int32
        d4 = tl.arange(0, D // 4)
        K32 = K.to(tl.pointer_type(tl.int32))  # the keys' bytes four at a time (decode_attention checks the strides)
    else:
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
        if QUANT:  # (q_values * q_scale) . (values * k_scale) = (q_values . values) * q_scale * k_scale
            k = tl.load(K32 + (cache + pos[:, None] * s_kl) // 4 + d4[None, :], mask=inside[:, None], other=0)
            dots = tl.sum(_dp4a(k, tl.broadcast_to(q_words[None, :], (BLOCK, D // 4))), axis=1)  # [BLOCK] int32
            s = dots.to(tl.float32) * q_scale * tl.load(KS + scales + pos, mask=inside, other=0.0)
        else:
            k = tl.load(K + cache + pos[:, None] * s_kl + d[None, :], mask=inside[:, None], other=0)
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
        s_new = tl.sum(k_held.to(tl.int32) * q_held.to(tl.int32), axis=0).to(tl.float32) * q_scale * k_scale
        v_att = v_held.to(tl.float32) * v_scale
        tl.store(KS + scales + last, k_scale)
        tl.store(VS + scales + last, v_scale)
    else:
        k_held, v_held = k_new.to(K.dtype.element_ty), v_new.to(V.dtype.element_ty)
        s_new = tl.sum(k_held.to(tl.float32) * q, axis=0)
        v_att = v_held.to(tl.float32)
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
    integer x + 0x4B000080 (x + 128 never carries into the exponent). On the GPU four bytes at a time, without
    unpacking them: x ^ 0x80 is the byte x + 128, and one byte permute (prmt) per value places it under 0x4B0000
    (integer operations take, by count, nearly as long as the kernel's reads)."""
    if INTERPRETED:
        bits = x.to(tl.int32) + 0x4B000080
    else:
        bits = tl.inline_asm_elementwise(
            asm="""{
            .reg .b32 t;
            xor.b32 t, $4, 0x80808080;
            prmt.b32 $0, t, 0x4B000000, 0x7540;
            prmt.b32 $1, t, 0x4B000000, 0x7541;
            prmt.b32 $2, t, 0x4B000000, 0x7542;
            prmt.b32 $3, t, 0x4B000000, 0x7543;
            }""",
            constraints="=r,=r,=r,=r,r", args=[x], dtype=tl.int32, is_pure=True, pack=4)
    return bits.to(tl.float32, bitcast=True) - 8388736.0


@triton.jit
def _pack4(x):
    """int8 [D] -> int32 [D // 4], four values to a word, the first in the low byte (as they lie in memory)."""
    D: tl.constexpr = x.shape[0]
    bytes4 = tl.reshape(x.to(tl.int32) & 0xFF, (D // 4, 4))
    return tl.sum(bytes4 << (8 * tl.arange(0, 4))[None, :], axis=1)  # disjoint bytes: the sum is their OR


@triton.jit
def _dp4a(a, b):
    """Per pair of int32 words: the sum of the products of their four signed bytes (one dp4a instruction)."""
    if INTERPRETED:
        out = tl.zeros(a.shape, tl.int32)
        for j in tl.static_range(4):
            out += ((a << (24 - 8 * j)) >> 24) * ((b << (24 - 8 * j)) >> 24)
        return out
    else:
        return tl.inline_asm_elementwise("dp4a.s32.s32 $0, $1, $2, 0;", "=r,r,r", [a, b], dtype=tl.int32,
                                         is_pure=True, pack=1)


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


@triton.jit
def rows_linear_kernel(X, Y, G, W, O, S, R, N, eps, s_x, s_y, s_o, s_s,
                       K: tl.constexpr, RP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       NORM: tl.constexpr, ADD: tl.constexpr, GLU: tl.constexpr):
    """out[r] = W a[r] for a few rows r < R (RP: R's power of two), BLOCK_N outputs a program, K inputs in
    BLOCK_K chunks, accumulated in float32 and rounded to X's dtype once. a is x; or with NORM rms_norm(s) * g of
    s = x (+ y with ADD, rounded to x's dtype as torch's add is; program 0 stores it in S: the residual stream);
    or with GLU silu(x[:, :K]) * x[:, K:] (each rounded to x's dtype, as torch's silu and mul are).

    The norm's 1 / rms(s) scales the sums at the end, W (s * g) / rms(s), rather than each input: its sum of
    squares then accrues over the same chunks as the products, with no pass over the row before them (which,
    before any weight was read, made the kernel half again slower at two rows). Exact in real arithmetic; in
    float32 it rounds differently from F.rms_norm's normalised input, which torch rounds to x's dtype (bf16)."""
    dtype = X.dtype.element_ty
    r = tl.arange(0, RP)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_in, n_in = r < R, n < N
    acc = tl.zeros([RP, BLOCK_N], tl.float32)
    squares = tl.zeros([RP], tl.float32)
    for k0 in tl.static_range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_in = k < K
        chunk = rows_in[:, None] & k_in[None, :]
        w = tl.load(W + n[:, None] * K + k[None, :], mask=n_in[:, None] & k_in[None, :], other=0.0)
        a = tl.load(X + r[:, None] * s_x + k[None, :], mask=chunk, other=0.0)
        if NORM:
            if ADD:
                a = (a.to(tl.float32) + tl.load(Y + r[:, None] * s_y + k[None, :], mask=chunk, other=0.0)
                     .to(tl.float32)).to(dtype)
                if tl.program_id(0) == 0:
                    tl.store(S + r[:, None] * s_s + k[None, :], a, mask=chunk)
            a = a.to(tl.float32)
            squares += tl.sum(a * a, axis=1)
            a = a * tl.load(G + k, mask=k_in, other=0.0).to(tl.float32)[None, :]
        if GLU:
            gate = a.to(tl.float32)
            gate = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
            a = (gate * tl.load(X + r[:, None] * s_x + K + k[None, :], mask=chunk, other=0.0).to(tl.float32)).to(dtype)
        acc += tl.sum(a.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :], axis=2)
    if NORM:
        acc = acc * tl.rsqrt(squares / K + eps)[:, None]
    tl.store(O + r[:, None] * s_o + n[None, :], acc.to(dtype), mask=rows_in[:, None] & n_in[None, :])
