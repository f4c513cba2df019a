"""Autoregressive prior: a decoder-only transformer over raster-order image tokens.

LLaMA-style blocks (RMSNorm, SwiGLU, rotary position embedding, no biases) as in LlamaGen (Sun et al. 2024,
arXiv 2406.06525), which showed this plain recipe works for image tokens. The sequence is

    [condition prefix (Lc tokens)] [start] x_0 x_1 ... x_{N-2}

and the output at [start] predicts x_0, the output at x_i predicts x_{i+1}. The condition prefix (see
conditioning.py) is empty for `none`, one class embedding, the projected text states (padded positions are
never attended), or the h*w segmentation-map embeddings. RoPE runs over the whole 1D sequence; relative
positions are all it needs. Input embedding and output head are separate matrices (not tied): the output
distribution over codes need not mirror the input embedding geometry, and at these vocab sizes tying saves
little.

Inference uses a static KV cache, preallocated per batch: `[layers, 2, B, heads, max_len, head_dim]`. `forward`
fills it (the prefix, or any chunk at a Python-int position); `decode_step` advances it one token at a position held
in a tensor, with the same shapes and kernels at every step, so a sampler can record the step as a CUDA graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from regvq_cli.errors import RegvqError
from regvq_cli.priors.conditioning import CondStates, ConditionEncoder
from regvq_cli.priors.config import PriorConfig
from regvq_cli.priors.decode_attention import FEW_ROWS, add_rms_norm, decode_attention, rope_table, rows_linear
from regvq_cli.priors.layers import Linear, RMSNorm, SwiGLU, apply_rope, init_weights, mlp_hidden, rope_cos_sin


@dataclass
class ARConfig(PriorConfig):
    dim: int = 768
    n_layers: int = 12
    n_heads: int = 12
    mlp_ratio: float = 8 / 3  # SwiGLU hidden = 8/3 * dim (rounded up to a multiple of 64)
    dropout: float = 0.0
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self):
        super().__post_init__()
        if self.dim % self.n_heads or (self.dim // self.n_heads) % 2:
            raise RegvqError(f"dim {self.dim} must split into {self.n_heads} heads of even width")


class KVCache:
    """Static key/value cache for one batch: per layer, k[layer] and v[layer], each [B, heads, max_len, head_dim].

    Every layer's keys and values are a tensor of their own, not a view into one shared buffer: a compiled decode
    step then writes its one position in place, where a write into a view of a shared buffer is turned into a
    copy of the whole buffer per layer (torch.compile's functionalization), which made compiled sampling at batch
    256 slower than eager. `length` counts the sequence positions written so far; `valid` [B, max_len] marks
    padded prefix positions (text) that must never be attended; `prefix_len` is where image token 0 sits
    (condition + start token). `kernel`: decode steps attend through decode_attention.py's Triton kernel, which
    reads exactly the written positions, instead of SDPA over a masked window; `rope` [max_len, 2, head_dim] is
    then its rotary tables (`use_kernel` sets both).

    `dtype` is what attention computes in (the model's); `storage` what the cache holds, by default the same.
    torch.int8 stores each key and value vector (one position of one head) quantized on its own, the symmetric
    int8 of `quantize`: int8 values and a float32 scale, 68 bytes per 64 features where bf16 takes 128. That nearly
    halves the bytes decode steps read, which bound sampling at large batches; the plain path and the Triton
    kernel both attend the stored (quantized) keys and values, with each query vector quantized the same way
    (the kernel's scores are then integer dot products, four byte products an instruction). Its scales are
    `k_scale[layer]` and `v_scale[layer]`, [B, heads, max_len].
    """

    def __init__(self, n_layers, batch, n_heads, max_len, head_dim, device=None, dtype=None, storage=None):
        self.dtype = dtype or torch.get_default_dtype()
        storage = storage or self.dtype
        if not (storage.is_floating_point or storage == torch.int8):
            raise ValueError(f"a KV cache holds a floating dtype or torch.int8, not {storage}")

        def buffers(shape, dtype):
            return [torch.zeros(batch, n_heads, max_len, *shape, device=device, dtype=dtype) for _ in range(n_layers)]

        self.k, self.v = buffers([head_dim], storage), buffers([head_dim], storage)
        quantized = storage == torch.int8
        self.k_scale = buffers([], torch.float32) if quantized else None
        self.v_scale = buffers([], torch.float32) if quantized else None
        self.valid = torch.ones(batch, max_len, dtype=torch.bool, device=device)
        self.padded = False
        self.length = 0
        self.prefix_len = 0
        self.kernel = False
        self.rope = None

    def use_kernel(self, theta: float) -> None:
        """Decode steps attend through the Triton kernel (its rotary tables made now, for every position)."""
        self.kernel = True
        self.rope = rope_table(self.max_len, self.k[0].shape[-1], theta, self.valid.device)

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    @property
    def storage(self) -> torch.dtype:
        return self.k[0].dtype

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.k + self.v + (self.k_scale or []) + (self.v_scale or []))

    def reset(self) -> None:
        self.length, self.prefix_len, self.padded = 0, 0, False
        self.valid.fill_(True)

    def store(self, layer: int, pos0, k, v, window: int | None = None):
        """Write k, v [B, H, n, hd] at cache positions pos0 .. pos0+n-1 and return the keys and values to attend,
        as the cache holds them, in `dtype`.

        pos0 an int: returns positions [0, pos0+n). pos0 a position tensor [1] (decode_step, n = 1): written in
        place, returns positions [0, window) whatever pos0 holds, so the shapes never depend on it.
        """
        end = window if torch.is_tensor(pos0) else pos0 + k.shape[2]
        out = []
        for x, cache, scales in ((k, self.k, self.k_scale), (v, self.v, self.v_scale)):
            if scales is None:
                _write(cache[layer], pos0, x)
                out.append(cache[layer][:, :, :end].to(self.dtype))
            else:
                values, scale = quantize(x)
                _write(cache[layer], pos0, values)
                _write(scales[layer], pos0, scale)
                out.append(dequantize(cache[layer][:, :, :end], scales[layer][:, :, :end], self.dtype))
        return out[0], out[1]  # [B, H, end, hd] each


def _write(cache, pos0, x):
    """cache[:, :, pos0 .. pos0+n-1] = x: in place at a position tensor [1] (index_copy_: no host read), or a slice."""
    if torch.is_tensor(pos0):
        cache.index_copy_(2, pos0, x.to(cache.dtype))
    else:
        cache[:, :, pos0:pos0 + x.shape[2]] = x


def quantize(x):
    """Symmetric int8 of each vector of x [..., hd] (a key or value of one position and head): its scale is the
    vector's largest |value| / 127 in float32 and its values round(x / scale) (half to even), so the largest is
    +-127. Returns (int8 [..., hd], float32 scale [...]). The Triton kernel quantizes the step's query, new key
    and value with the same float32 operations."""
    x = x.float()
    scale = x.abs().amax(-1).clamp_min(1e-12) / 127
    return torch.round(x / scale[..., None]).clamp_(-127, 127).to(torch.int8), scale


def dequantize(values, scale, dtype):
    """`quantize`'s inverse, up to its rounding: values [..., hd] int8 times scale [...], in dtype."""
    return (values.float() * scale[..., None]).to(dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ARConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.proj = Linear(cfg.dim, cfg.dim, bias=False)
        self.dropout = cfg.dropout

    def attend_step(self, qkv, cache: KVCache, layer: int, pos):
        """A decode step's attention through the Triton kernel (`cache.kernel`): from the qkv projections [B, 3 *
        dim] of image token x_pos (pos a 0-d or [1] position tensor; its cache position is prefix_len + pos), rotate
        q and k, write k and v to the cache and attend: [B, dim], as the heads' outputs lie."""
        B = qkv.shape[0]
        hd = qkv.shape[1] // (3 * self.n_heads)
        scales = None if cache.k_scale is None else (cache.k_scale[layer], cache.v_scale[layer])
        y = decode_attention(qkv.view(B, 3, self.n_heads, hd), cache.rope, cache.k[layer], cache.v[layer], pos,
                             cache.valid if cache.padded else None, scales=scales, offset=cache.prefix_len)
        return y.view(B, self.n_heads * hd)

    def forward(self, x, cos, sin, mask, is_causal, cache, layer, pos0, window=None):
        """x [B, n, dim] at cache positions pos0 .. pos0+n-1 (an int), or one decode step's token (pos0 a position
        tensor [1]: its cache position, or with `cache.kernel` the image position, see attend_step)."""
        B, n, dim = x.shape
        hd = dim // self.n_heads
        qkv = self.qkv(x)  # [B, n, 3 * dim]
        if cache is not None and cache.kernel and torch.is_tensor(pos0):  # a decode step (n = 1) through the kernel
            return self.proj(self.attend_step(qkv.view(B, 3 * dim), cache, layer, pos0).view(B, n, dim))
        qkv = qkv.view(B, n, 3, self.n_heads, hd).permute(2, 0, 3, 1, 4)  # [3, B, H, n, hd]
        q, k = apply_rope(qkv[:2], cos, sin)  # q and k rotated together (half the kernels); each [B, H, n, hd]
        v = qkv[2]
        if cache is not None:
            k, v = cache.store(layer, pos0, k, v, window)
            if cache.k_scale is not None:  # int8: the query is rounded as a key is (the kernel's integer products)
                q = dequantize(*quantize(q), q.dtype)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=p)
        return self.proj(y.transpose(1, 2).reshape(B, n, dim))


class Block(nn.Module):
    def __init__(self, cfg: ARConfig):
        super().__init__()
        self.norm1 = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.dim, mlp_hidden(cfg.dim, cfg.mlp_ratio), cfg.dropout)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, mask, is_causal, cache, layer, pos0, window=None):
        x = x + self.resid_dropout(self.attn(self.norm1(x), cos, sin, mask, is_causal, cache, layer, pos0, window))
        return x + self.mlp(self.norm2(x))


class ARPrior(nn.Module):
    model_type = "ar"
    config_class = ARConfig

    def __init__(self, config: ARConfig):
        super().__init__()
        self.config = config
        self.cond = ConditionEncoder(config, config.dim, segmap_as="prefix")
        self.tok_emb = nn.Embedding(config.codebook_size, config.dim)
        self.start = nn.Parameter(torch.zeros(config.dim))
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.head = Linear(config.dim, config.codebook_size, bias=False)
        init_weights(self)
        nn.init.normal_(self.start, std=0.02)
        for block in self.blocks:  # residual branches scaled down with depth (GPT-2)
            nn.init.normal_(block.attn.proj.weight, std=0.02 / math.sqrt(2 * config.n_layers))
            nn.init.normal_(block.mlp.down.weight, std=0.02 / math.sqrt(2 * config.n_layers))

    @property
    def prefix_len(self) -> int:
        """Condition tokens before the start token (an upper bound for text: its padded length)."""
        cfg = self.config
        return {"none": 0, "class": 1, "text": cfg.text_max_tokens, "segmap": cfg.seq_len}[cfg.cond]

    @property
    def max_seq_len(self) -> int:
        # condition + start + x_0 .. x_{N-2}
        return self.prefix_len + self.config.seq_len

    def new_cache(self, batch: int, device=None, dtype=None, storage=None) -> KVCache:
        """An empty KVCache for `batch` rows computing in `dtype` (default the parameters') and holding `storage`
        (default `dtype`; torch.int8 for about half the bytes, see KVCache)."""
        p = next(self.parameters())
        cfg = self.config
        return KVCache(cfg.n_layers, batch, cfg.n_heads, self.max_seq_len, cfg.dim // cfg.n_heads,
                       device=device or p.device, dtype=dtype or p.dtype, storage=storage)

    def forward(self, tokens, cond=None, *, cond_drop=None, cache: KVCache | None = None, start_pos: int = 0):
        """Next-token logits.

        tokens: [B, n] image token ids x_{start_pos} .. x_{start_pos+n-1} (n may be 0).
        cond: the raw condition (or already encoded CondStates); only read when the prefix is processed.
        cond_drop: [B] bool, rows that get the null condition (classifier-free guidance training).
        cache: a KVCache from `new_cache`; the first call on an empty cache processes the prefix.

        When the prefix is processed (no cache, or an empty one; start_pos must be 0), returns [B, n+1, V]:
        row j predicts x_j. Otherwise returns [B, n, V]: row j predicts x_{start_pos+j+1}.
        """
        B, n = tokens.shape
        cfg = self.config
        prefill = cache is None or cache.length == 0
        key_valid = None
        if prefill:
            if start_pos != 0:
                raise ValueError("the first call (no cache or an empty one) must start at image token 0")
            states = cond if isinstance(cond, CondStates) else self.cond(cond, B, drop=cond_drop)
            parts = [] if states.tokens is None else [states.tokens.to(self.start.dtype)]
            x = torch.cat(parts + [self.start.expand(B, 1, -1), self.tok_emb(tokens)], dim=1)
            n_cond = states.length
            pos0 = 0
            if states.mask is not None:  # padded text positions are never attended
                key_valid = torch.cat([states.mask, states.mask.new_ones(B, x.shape[1] - n_cond)], dim=1)
        else:
            x = self.tok_emb(tokens)
            pos0 = cache.prefix_len + start_pos
            if pos0 > cache.length:
                raise ValueError(f"image token {start_pos} comes after a gap in the cache")
        L = x.shape[1]
        Lk = pos0 + L
        if cache is not None:
            if Lk > cache.max_len:
                raise ValueError(f"sequence of {Lk} positions exceeds the cache ({cache.max_len})")
            if prefill:
                cache.valid[:, :L] = True if key_valid is None else key_valid
                cache.padded = key_valid is not None
                cache.prefix_len = n_cond + 1
            key_valid = cache.valid[:, :Lk] if cache.padded else None
        positions = torch.arange(pos0, Lk, device=x.device)
        cos, sin = rope_cos_sin(positions, cfg.dim // cfg.n_heads, cfg.rope_theta)
        # attention mask: causal over absolute positions, and no padded keys; SDPA's fast paths when possible
        mask, is_causal = None, False
        if key_valid is None and pos0 == 0:
            is_causal = L > 1
        elif key_valid is not None or L > 1:
            keep = torch.arange(Lk, device=x.device)[None, :] <= positions[:, None]  # [L, Lk]
            mask = keep[None, None]
            if key_valid is not None:
                mask = mask & key_valid[:, None, None, :]  # [B, 1, L, Lk]
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, mask, is_causal, cache, i, pos0)
        if cache is not None:
            cache.length = Lk
        if prefill:
            x = x[:, n_cond:]  # from the start token on
        return self.head(self.norm(x))

    def decode_step(self, tokens, pos, cache: KVCache, window: int | None = None):
        """Logits [B, V] for x_{pos+1} from tokens [B, 1] = x_pos, on a cache holding the prefix and x_<pos.

        pos: 0-d long tensor on the model's device. Nothing on the host depends on its value: k/v are written in
        place at cache position prefix_len + pos and attention reads the first `window` cache positions (default
        all; must exceed prefix_len + pos) with later ones masked (with `cache.kernel`, exactly positions 0 ..
        prefix_len + pos, read by the Triton kernel; `window` is then unused), so every call runs the same kernels
        on the same buffers and can be recorded as a CUDA graph. Inference only (no dropout); `cache.length` is not
        updated.
        """
        cfg = self.config
        window = window or cache.max_len
        x = self.tok_emb(tokens)  # [B, 1, dim]
        if cache.kernel:  # the kernel rotates from its tables and reads positions 0 .. prefix_len + pos itself
            p = pos.reshape(1)  # the image position: the kernel adds prefix_len (Attention.attend_step)
            if self.norm.weight.dtype != x.dtype:  # (autocast: the layers' own ops)
                for i, block in enumerate(self.blocks):
                    x = block(x, None, None, None, False, cache, i, p)
                return self.head(self.norm(x))[:, 0]
            if x.shape[0] <= FEW_ROWS:
                return self._few_rows_blocks(x[:, 0], cache, p)
            return self.head(self._kernel_blocks(x, cache, p))[:, 0]
        p = (pos + cache.prefix_len).reshape(1)  # [1] cache position of x_pos
        cos, sin = rope_cos_sin(p, cfg.dim // cfg.n_heads, cfg.rope_theta)  # [1, hd] each
        keep = cache.valid[:, :window] & (torch.arange(window, device=p.device) <= p)  # [B, window]
        # additive [B, 1, 1, window]: 0 at written positions but padded text, -inf elsewhere (SDPA would
        # convert a bool mask in every layer; this is built once per step)
        mask = torch.zeros(keep.shape, dtype=cache.dtype, device=p.device).masked_fill_(~keep, float("-inf"))
        mask = mask[:, None, None, :]
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, mask, False, cache, i, p, window)
        return self.head(self.norm(x))[:, 0]

    def _few_rows_blocks(self, x, cache: KVCache, p):
        """The blocks, final norm and head of a decode step of a few rows x [B, dim] (B <= FEW_ROWS) through the
        Triton kernels: five a layer (qkv, attention, proj, gate_up, down), each residual add and norm folded into
        the linear layer after it and SwiGLU's silu(gate) * up into `down` (Block.forward's sums, rounded as its
        ops round them). Returns the logits [B, V]."""
        eps = self.config.norm_eps
        branch = None  # the last branch's output, not yet added to the residual stream x
        for i, block in enumerate(self.blocks):
            x, qkv = rows_linear(x, block.attn.qkv.weight, norm=block.norm1.weight, add=branch, eps=eps)
            y = rows_linear(block.attn.attend_step(qkv, cache, i, p), block.attn.proj.weight)
            x, h = rows_linear(x, block.mlp.gate_up.weight, norm=block.norm2.weight, add=y, eps=eps)
            branch = rows_linear(h, block.mlp.down.weight, glu=True)
        return rows_linear(x, self.head.weight, norm=self.norm.weight, add=branch, eps=eps)[1]

    def _kernel_blocks(self, x, cache: KVCache, p):
        """The blocks of a decode step through the Triton kernels: Block.forward's sums, with each residual add
        and the norm after it (the block's second norm, the next block's first, or the final one) in one kernel.
        Returns the final norm's output [B, 1, dim]."""
        eps = self.config.norm_eps
        h = self.blocks[0].norm1(x)
        for i, block in enumerate(self.blocks):
            x, h = add_rms_norm(x, block.attn(h, None, None, None, False, cache, i, p), block.norm2.weight, eps)
            after = self.blocks[i + 1].norm1 if i + 1 < len(self.blocks) else self.norm
            x, h = add_rms_norm(x, block.mlp(h), after.weight, eps)
        return h

    def loss(self, x, cond=None, *, drop=None, net=None):
        """Teacher-forced cross-entropy of token grids x [B, h, w] (or [B, N]); returns (loss, parts).

        `drop` [B] bool replaces conditions by the null; by default, in training mode, each row is dropped with
        probability `cond_dropout`. `net` runs the network instead of self (e.g. its DistributedDataParallel
        wrapper, so gradients synchronise).
        """
        x = x.flatten(1).long()
        B = x.shape[0]
        if drop is None and self.training and self.config.cond != "none" and self.config.cond_dropout > 0:
            drop = torch.rand(B, device=x.device) < self.config.cond_dropout
        logits = (net or self)(x[:, :-1], cond, cond_drop=drop)  # [B, N, V]
        ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x.reshape(-1))
        return ce, {"ce": ce.detach()}
