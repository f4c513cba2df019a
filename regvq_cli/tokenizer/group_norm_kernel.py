"""The Triton kernel of nets.group_norm_scale_shift (which explains it), apart so that Triton is imported only
when used."""

import triton
import triton.language as tl


@triton.jit
def group_norm_scale_shift_kernel(VAR, MEAN, WEIGHT, BIAS, SCALE, SHIFT, eps, G: tl.constexpr, K: tl.constexpr,
                                  GP: tl.constexpr, KP: tl.constexpr):
    # One program a sample. VAR, MEAN [B, G * K] float32: each channel's statistics over its pixels (G groups of K
    # channels); WEIGHT, BIAS [G * K] the norm's gain and bias; SCALE, SHIFT [B, G * K] float32 out. GP, KP: G and
    # K rounded up to powers of two (the padding masked).
    n = tl.program_id(0)
    g, k = tl.arange(0, GP)[:, None], tl.arange(0, KP)[None, :]
    used = (g < G) & (k < K)
    c = g * K + k  # [GP, KP] channel
    mean_c = tl.load(MEAN + n * G * K + c, mask=used, other=0.0)
    var_c = tl.load(VAR + n * G * K + c, mask=used, other=0.0)
    mean = tl.sum(mean_c, 1) / K  # [GP]: the group's mean, the mean of its channels' (equal counts)
    spread = tl.where(used, mean_c - mean[:, None], 0.0)
    var = tl.sum(var_c + spread * spread, 1) / K  # the mean of the variances plus the spread of the means
    scale = tl.rsqrt(var + eps)[:, None] * tl.load(WEIGHT + c, mask=used, other=0.0).to(tl.float32)
    shift = tl.load(BIAS + c, mask=used, other=0.0).to(tl.float32) - mean[:, None] * scale
    tl.store(SCALE + n * G * K + c, scale, mask=used)
    tl.store(SHIFT + n * G * K + c, shift, mask=used)
