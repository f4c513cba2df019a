"""Discrete diffusion prior: VQ-Diffusion's mask-and-replace process (Gu et al., CVPR 2022, arXiv 2111.14822).

Each token is in one of K + 1 states: a code 0..K-1 or [MASK] (id K). One forward step s -> t keeps a code with
probability alpha + beta, replaces it by each code with probability beta (so alpha + K beta + gamma = 1), and
masks it with probability gamma; [MASK] is absorbing. Composed from 0 to t this is again mask-and-replace with
cumulative abar_t, bbar_t = (1 - abar_t - gbar_t) / K, gbar_t, so

    q(x_t | x_0) = abar_t [x_t = x_0] + bbar_t [x_t < K] + gbar_t [x_t = K].

The schedule (the paper's): abar falls linearly from 0.99999 (t=1) to 0.000009 (t=T) and gbar rises linearly
from 0.000009 to 0.99999, so x_T is all [MASK] up to 1e-5 per token. The network predicts p(x_0 | x_t, c)
(never [MASK]); the reverse step is the posterior averaged over that prediction (the "reparametrised" form),

    p(x_s | x_t) = sum_{x_0} q(x_s | x_t, x_0) p(x_0 | x_t),   s < t,

which needs no change to skip steps (s = t - k), because a composition of mask-and-replace steps is one.
Computed in log space as q(x_t | x_s) * sum_{x_0} q(x_s | x_0) p(x_0 | x_t) / q(x_t | x_0), O(K) per token.

Loss: the variational bound term KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) (the decoder NLL at t = 1) plus
lambda * the cross-entropy of p(x_0 | x_t) ("auxiliary" loss), lambda = `aux_weight` (the paper: 5e-4, with
its adaptive factor 1 + (1 - t/T) when `adaptive_aux`). t is drawn uniformly from 1..T.

Denoiser: a bidirectional transformer with adaLN-Zero timestep modulation (Peebles & Xie 2023, DiT),
cross-attention to the condition tokens (class, text), segmentation-map embeddings added per position.
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
from regvq_cli.priors.layers import CrossAttention, RMSNorm, SwiGLU, init_weights, mlp_hidden

LOG_EPS = 1e-30  # probabilities are clamped here before log: log(0) would turn KL terms into NaN


@dataclass
class DiffusionConfig(PriorConfig):
    dim: int = 512
    n_layers: int = 12
    n_heads: int = 8
    mlp_ratio: float = 8 / 3
    dropout: float = 0.0
    norm_eps: float = 1e-5
    num_timesteps: int = 100
    abar_1: float = 0.99999  # cumulative keep probability after step 1 ...
    abar_T: float = 0.000009  # ... and after step T
    gbar_1: float = 0.000009  # cumulative mask probability after step 1 ...
    gbar_T: float = 0.99999  # ... and after step T
    aux_weight: float = 5e-4  # lambda of the x_0 cross-entropy
    adaptive_aux: bool = True  # scale lambda by 1 + (1 - t/T)

    def __post_init__(self):
        super().__post_init__()
        if self.dim % self.n_heads:
            raise RegvqError(f"dim {self.dim} must split into {self.n_heads} heads")
        if self.num_timesteps < 2:
            raise RegvqError("num_timesteps must be at least 2")
        for a, g in ((self.abar_1, self.gbar_1), (self.abar_T, self.gbar_T)):
            if a < 0 or g < 0 or a + g > 1:
                raise RegvqError("schedule ends need abar, gbar >= 0 and abar + gbar <= 1")


def _schedule(cfg: DiffusionConfig):
    """Cumulative abar_t, gbar_t for t = 0..T in float64 (t = 0 is the identity)."""
    T = cfg.num_timesteps
    f64 = dict(dtype=torch.float64, device="cpu")  # explicit: also right under a meta-device context
    frac = torch.arange(T, **f64) / (T - 1)
    abar = torch.cat([torch.ones(1, **f64), cfg.abar_1 + frac * (cfg.abar_T - cfg.abar_1)])
    gbar = torch.cat([torch.zeros(1, **f64), cfg.gbar_1 + frac * (cfg.gbar_T - cfg.gbar_1)])
    return abar, gbar


def _log_coefs(abar_s, gbar_s, abar_t, gbar_t, K: int):
    """Log coefficients for one posterior step s -> t (float64 in, float32 [..., 10] out).

    Columns: cumulative at t (log abar, log bbar, log gbar, log(abar + bbar)), cumulative at s (log abar,
    log bbar, log gbar), and the one-step s -> t transition (log beta, log gamma, log(alpha + beta)).
    """
    bbar_t = (1 - abar_t - gbar_t) / K
    bbar_s = (1 - abar_s - gbar_s) / K
    alpha = abar_t / abar_s
    gamma = 1 - (1 - gbar_t) / (1 - gbar_s)
    beta = (1 - alpha - gamma) / K
    if bool((beta < -1e-12).any()):
        raise RegvqError("this abar / gbar schedule is not a valid mask-and-replace process (negative beta)")
    cols = [abar_t, bbar_t, gbar_t, abar_t + bbar_t, abar_s, bbar_s, gbar_s, beta, gamma, alpha + beta]
    return torch.stack([torch.as_tensor(c, dtype=torch.float64).clamp(min=LOG_EPS).log() for c in cols],
                       dim=-1).float()


def timestep_embedding(t, dim: int, max_period: float = 10000.0):
    """Sinusoidal embedding [B, dim] of (integer) timesteps t [B]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([args.cos(), args.sin()], dim=-1)
    return F.pad(emb, (0, dim % 2))


class Block(nn.Module):
    """Self-attention, optional cross-attention, SwiGLU MLP; each sublayer modulated and gated by adaLN-Zero."""

    def __init__(self, cfg: DiffusionConfig, cross: bool):
        super().__init__()
        dim = cfg.dim
        self.cross = cross
        self.norm1 = RMSNorm(dim, cfg.norm_eps, affine=False)
        self.attn = CrossAttention(dim, cfg.n_heads, cfg.dropout)  # attending x itself: bidirectional
        if cross:
            self.norm2 = RMSNorm(dim, cfg.norm_eps, affine=False)
            self.cross_attn = CrossAttention(dim, cfg.n_heads, cfg.dropout)
        self.norm3 = RMSNorm(dim, cfg.norm_eps, affine=False)
        self.mlp = SwiGLU(dim, mlp_hidden(dim, cfg.mlp_ratio), cfg.dropout)
        self.ada = nn.Linear(dim, (9 if cross else 6) * dim)  # shift, scale, gate per sublayer

    def forward(self, x, temb, context=None, context_mask=None):
        # modulation shift + h * (1 + scale) and gated residual x + gate * y, each one addcmul: one pass over the
        # [B, N, dim] activations instead of two (eagerly these elementwise passes cost as much as the matmuls)
        mods = self.ada(F.silu(temb))[:, None, :].chunk(9 if self.cross else 6, dim=-1)  # each [B, 1, dim]
        h = torch.addcmul(mods[0], self.norm1(x), 1 + mods[1])
        x = torch.addcmul(x, mods[2], self.attn(h, h))
        if self.cross:
            h = torch.addcmul(mods[3], self.norm2(x), 1 + mods[4])
            x = torch.addcmul(x, mods[5], self.cross_attn(h, context, context_mask))
        h = torch.addcmul(mods[-3], self.norm3(x), 1 + mods[-2])
        return torch.addcmul(x, mods[-1], self.mlp(h))


class DiffusionPrior(nn.Module):
    model_type = "diffusion"
    config_class = DiffusionConfig

    def __init__(self, config: DiffusionConfig):
        super().__init__()
        self.config = config
        K, dim = config.codebook_size, config.dim
        self.mask_id = K
        self.cond = ConditionEncoder(config, dim, segmap_as="spatial")
        self.tok_emb = nn.Embedding(K + 1, dim)  # codes and [MASK]
        self.pos_emb = nn.Parameter(torch.zeros(1, config.seq_len, dim))
        self.time_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        cross = config.cond in ("class", "text")
        self.blocks = nn.ModuleList(Block(config, cross) for _ in range(config.n_layers))
        self.norm_out = RMSNorm(dim, config.norm_eps, affine=False)
        self.ada_out = nn.Linear(dim, 2 * dim)
        self.head = nn.Linear(dim, K, bias=False)
        init_weights(self)
        nn.init.normal_(self.pos_emb, std=0.02)
        for m in [b.ada for b in self.blocks] + [self.ada_out, self.head]:  # adaLN-Zero: blocks start as identity
            nn.init.zeros_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        # The schedule is derived from the config, kept as plain float64 tensors (not buffers: a buffer would be
        # cast to bf16 with the weights, and these logs need float32 at least).
        self._abar, self._gbar = _schedule(config)
        self._step_table = _log_coefs(self._abar[:-1], self._gbar[:-1], self._abar[1:], self._gbar[1:], K)
        self._step_table = torch.cat([self._step_table[:1], self._step_table])  # row t = step t-1 -> t
        self._tables: dict = {}

    @property
    def num_timesteps(self) -> int:
        return self.config.num_timesteps

    # --- the forward process ------------------------------------------------------------------------------

    def coefs(self, t, s=None):
        """Log coefficients [B, 10] (or [1, 10]) for the posterior step s -> t.

        t: LongTensor [B] with s = t - 1 (training), or ints t > s >= 0 (sampling, any skip).
        """
        if torch.is_tensor(t) and s is None:
            return self._on_device("_step_table", t.device)[t]
        t, s = int(t), (int(t) - 1 if s is None else int(s))
        if not 0 <= s < t <= self.num_timesteps:
            raise ValueError(f"need 0 <= s < t <= {self.num_timesteps}, got s={s}, t={t}")
        K = self.config.codebook_size
        return _log_coefs(self._abar[s], self._gbar[s], self._abar[t], self._gbar[t], K)[None]

    def _on_device(self, name: str, device):
        """A schedule table (`_step_table`, `_abar`, `_gbar`) in float32 on `device`, copied there once: a copy
        per training step would make the host wait for the device each time."""
        key = (name, str(device))
        if key not in self._tables:
            self._tables[key] = getattr(self, name).to(torch.float32).to(device)
        return self._tables[key]

    def q_sample(self, x0, t, generator=None):
        """Draw x_t ~ q(x_t | x_0) for x0 [B, N] and t [B] (1..T)."""
        abar = self._on_device("_abar", x0.device)[t][:, None]  # [B, 1]
        gbar = self._on_device("_gbar", x0.device)[t][:, None]
        u = torch.rand(x0.shape, device=x0.device, generator=generator)
        rand_tok = torch.randint(0, self.config.codebook_size, x0.shape, device=x0.device, generator=generator)
        xt = torch.where(u < abar, x0, rand_tok)  # replaced tokens are uniform over all K codes (x0 included)
        return torch.where((u >= abar) & (u < abar + gbar), torch.full_like(x0, self.mask_id), xt)

    def q_posterior(self, log_x0, x_t, coefs):
        """log p(x_s | x_t) [B, N, K+1] = log sum_{x_0} q(x_s | x_t, x_0) p(x_0 | x_t).

        log_x0: [B, N, K] log p(x_0 | x_t) (a one-hot for the true posterior); x_t: [B, N] ids in 0..K;
        coefs: from `coefs(t, s)`.
        """
        K = self.config.codebook_size
        c = coefs.to(log_x0.device)[:, None, :]  # [B or 1, 1, 10]
        log_bbar_t, log_gbar_t, log_abar_bbar_t = c[..., 1:2], c[..., 2:3], c[..., 3:4]  # column 0 (abar_t) unused
        log_abar_s, log_bbar_s, log_gbar_s = c[..., 4:5], c[..., 5:6], c[..., 6:7]
        log_beta, log_gamma, log_alpha_beta = c[..., 7:8], c[..., 8:9], c[..., 9:10]
        log_x0 = log_x0.float()
        is_mask = (x_t == K)[..., None]  # [B, N, 1]
        same = F.one_hot(x_t.clamp(max=K - 1), K).bool() & ~is_mask  # [B, N, K]: x_0 (or x_s) == x_t
        # q(x_t | x_0) as a function of x_0
        log_q_t = torch.where(is_mask, log_gbar_t, torch.where(same, log_abar_bbar_t, log_bbar_t))
        log_v = log_x0 - log_q_t  # p(x_0 | x_t) / q(x_t | x_0)
        total = torch.logsumexp(log_v, dim=-1, keepdim=True)  # [B, N, 1]
        # sum_{x_0} q(x_s | x_0) v(x_0), for x_s = each code, then x_s = [MASK]
        m = torch.cat([torch.logaddexp(log_abar_s + log_v, log_bbar_s + total), log_gbar_s + total], dim=-1)
        # q(x_t | x_s) as a function of x_s
        log_eps = math.log(LOG_EPS)
        step_tok = torch.where(is_mask, log_gamma, torch.where(same, log_alpha_beta, log_beta))  # [B, N, K]
        step_mask = torch.where(is_mask, torch.zeros_like(log_gamma), torch.full_like(log_gamma, log_eps))
        out = m + torch.cat([step_tok, step_mask.expand(*step_tok.shape[:-1], 1)], dim=-1)
        return out - torch.logsumexp(out, dim=-1, keepdim=True)

    def log_onehot(self, x0):
        """log of one-hot x0 [B, N] over K codes, with LOG_EPS for the zeros: [B, N, K]."""
        K = self.config.codebook_size
        out = torch.full((*x0.shape, K), math.log(LOG_EPS), device=x0.device)
        return out.scatter_(-1, x0[..., None], 0.0)

    def t_for_mask_ratio(self, ratio: float) -> int:
        """The timestep whose cumulative mask probability is nearest `ratio` (for the MaskGIT sampler)."""
        return int((self._gbar[1:] - ratio).abs().argmin()) + 1

    # --- the network ---------------------------------------------------------------------------------------

    def forward(self, x_t, t, cond=None, *, cond_drop=None):
        """Logits [B, N, K] of p(x_0 | x_t, c) for x_t [B, N] (or [B, h, w]) ids in 0..K and t [B] in 1..T.

        cond: the raw condition or already encoded CondStates; cond_drop [B] bool gives those rows the null.
        """
        x_t = x_t.flatten(1)
        B = x_t.shape[0]
        states = cond if isinstance(cond, CondStates) else self.cond(cond, B, drop=cond_drop)
        x = self.tok_emb(x_t) + self.pos_emb
        if states.spatial is not None:
            x = x + states.spatial.to(x.dtype)
        temb = self.time_mlp(timestep_embedding(t, self.config.dim).to(x.dtype))
        context = None if states.tokens is None else states.tokens.to(x.dtype)
        for block in self.blocks:
            x = block(x, temb, context, states.mask)
        shift, scale = self.ada_out(F.silu(temb))[:, None, :].chunk(2, dim=-1)
        return self.head(torch.addcmul(shift, self.norm_out(x), 1 + scale))

    def loss(self, x0, cond=None, *, drop=None, net=None, t=None):
        """VLB + lambda * x_0 cross-entropy for token grids x0 [B, h, w] (or [B, N]); returns (loss, parts).

        `drop` / `net` as in ARPrior.loss; `t` [B] fixes the timesteps (default: uniform in 1..T).
        """
        cfg = self.config
        x0 = x0.flatten(1).long()
        B, T = x0.shape[0], cfg.num_timesteps
        if drop is None and self.training and cfg.cond != "none" and cfg.cond_dropout > 0:
            drop = torch.rand(B, device=x0.device) < cfg.cond_dropout
        if t is None:
            t = torch.randint(1, T + 1, (B,), device=x0.device)
        x_t = self.q_sample(x0, t)
        logits = (net or self)(x_t, t, cond, cond_drop=drop)
        log_x0 = F.log_softmax(logits.float(), dim=-1)  # [B, N, K]
        nll = -log_x0.gather(-1, x0[..., None])[..., 0]  # [B, N]
        coefs = self.coefs(t)
        log_true = self.q_posterior(self.log_onehot(x0), x_t, coefs)
        log_model = self.q_posterior(log_x0, x_t, coefs)
        kl = (log_true.exp() * (log_true - log_model)).sum(-1)  # [B, N]
        vlb = torch.where((t == 1)[:, None], nll, kl).mean(1)  # [B]
        aux = nll.mean(1)
        weight = cfg.aux_weight * ((1 + (1 - t.float() / T)) if cfg.adaptive_aux else torch.ones_like(aux))
        loss = (vlb + weight * aux).mean()
        return loss, {"vlb": vlb.mean().detach(), "ce": aux.mean().detach()}
