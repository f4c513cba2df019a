"""Transformer pieces shared by the priors: RMSNorm, SwiGLU MLP, rotary position embedding, attention.

RMSNorm: Zhang & Sennrich 2019. SwiGLU: Shazeer 2020, "GLU Variants Improve Transformer". RoPE: Su et al. 2021,
"RoFormer". Linear layers carry no biases (as in LLaMA / LlamaGen).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


# on a CPU, matmuls of 2 to this many rows compute W @ x^T (see Linear)
CPU_FEW_ROWS = 16


class Linear(nn.Linear):
    """nn.Linear, but for a few rows on a CPU (an AR decode step: 1-2 rows per image) computed as (W @ x^T)^T.

    With a few rows, MKL's kernel for F.linear's x @ W^T read a weight that is not in the cache at about 3.4 GB/s on
    the 2-core machine, and W @ x^T at 8.8 (1536 x 512 fp32, 2 rows: 909 against 357 us; 2.5x at 2 to 4 rows, 1.3x
    at 8 to 16, the same at 1). `regvq sample --prompt` with the default text prior, the whole command: 14.4-16.1
    s before, 9.7-10.1 after; `-n 4` (8 rows with guidance) 21.3 -> 17.6 s; 24 rows gained nothing. The same
    products summed in another order: close to F.linear's, not always the same bits."""

    def forward(self, x):
        rows = x.numel() // x.shape[-1]
        if x.device.type != "cpu" or not 2 <= rows <= CPU_FEW_ROWS:
            return F.linear(x, self.weight, self.bias)
        y = (self.weight @ x.reshape(rows, -1).t()).t().contiguous()  # [rows, out]
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)  # in the product's dtype, as F.linear under autocast
        return y.view(*x.shape[:-1], y.shape[-1])


class RMSNorm(nn.Module):
    """x / rms(x), computed in float32, times a learned gain (or no gain with `affine=False`)."""

    def __init__(self, dim: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x):
        # F.rms_norm does exactly this (upcast, normalise, cast back, then the gain) in one call: one fused
        # kernel on CUDA instead of eight, which counts when a decode step is launch-bound. Its fused kernel
        # wants the gain in x's dtype; under autocast (fp32 gain, bf16 x) the gain is applied after, promoting.
        if self.weight is None or self.weight.dtype == x.dtype:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return F.rms_norm(x, (x.shape[-1],), None, self.eps) * self.weight


def mlp_hidden(dim: int, ratio: float, multiple_of: int = 64) -> int:
    """Hidden width of the SwiGLU MLP, rounded up to a multiple (2/3 * 4 * dim keeps the usual 4x MLP's cost)."""
    hidden = int(dim * ratio)
    return multiple_of * math.ceil(hidden / multiple_of)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.gate_up = Linear(dim, 2 * hidden, bias=False)
        self.down = Linear(hidden, dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.dropout(self.down(F.silu(gate) * up))


def rope_cos_sin(positions, head_dim: int, theta: float = 10000.0):
    """cos, sin tables [n, head_dim] for integer positions [n], in float32, laid out for `apply_rope`: each feature
    pair's cos in both halves, its sin negated in the first half.

    Computed on the fly rather than kept in a buffer: a buffer would be cast to bf16 with the model and lose
    the precision that long sequences need.
    """
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[:, None] * inv_freq[None, :]  # [n, head_dim / 2]: one angle per feature pair
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)


def apply_rope(x, cos, sin):
    """Rotate the feature pairs (x1_i, x2_i) = (x_i, x_{i + head_dim/2}) of x [..., n, head_dim] by their angles,
    (x1 cos - x2 sin, x2 cos + x1 sin), given cos, sin [n, head_dim] from `rope_cos_sin`.

    As x * cos + (x2, x1) * sin: a swap of the halves, a multiply and an addcmul, in float32 (three kernels where
    the halves apart take seven; this runs twice per layer and token step).
    """
    xf = x.float()
    swapped = xf.roll(x.shape[-1] // 2, dims=-1)  # (x2, x1)
    return torch.addcmul(xf * cos, swapped, sin).to(x.dtype)


class CrossAttention(nn.Module):
    """Queries from x [B, n, dim], keys/values from a context [B, L, dim]; `mask` [B, L] bool (True = attend)."""

    def __init__(self, dim: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        self.n_heads = n_heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.dropout = dropout

    def forward(self, x, context, mask=None):
        B, n, dim = x.shape
        L = context.shape[1]
        hd = dim // self.n_heads
        q = self.q(x).view(B, n, self.n_heads, hd).transpose(1, 2)  # [B, H, n, hd]
        k, v = self.kv(context).view(B, L, 2, self.n_heads, hd).permute(2, 0, 3, 1, 4)  # each [B, H, L, hd]
        attn_mask = None if mask is None else mask[:, None, None, :]  # [B, 1, 1, L]
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        return self.proj(y.transpose(1, 2).reshape(B, n, dim))


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """GPT-style init: normal(0, std) for linear and embedding weights, zeros for biases."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
