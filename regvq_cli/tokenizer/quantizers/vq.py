"""Deterministic vector quantization (VQ-VAE, van den Oord et al. 2017; as used by VQGAN).

Each latent vector takes its nearest codebook entry (argmin of the squared L2 distance). The decoder sees
the code through the straight-through estimator, z + (e - z).detach(), so reconstruction gradients reach
the encoder unchanged. The codebook learns either from the codebook loss ||sg[z] - e||^2 or, with
``use_ema``, from exponential moving averages of the vectors assigned to each code (VQ-VAE-2 style; the
codebook is then not a trained parameter). The commitment loss ||z - sg[e]||^2 keeps the encoder near its
codes; the trainer weights it by beta. With ``l2_norm`` both latents and codes live on the unit sphere
(cosine-similarity lookup, as in ViT-VQGAN), which is known to help codebook usage.

This is the "VQGAN" baseline the RegVQ paper compares against; it is prone to codebook collapse.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import QuantizerOutput, all_reduce_sum, code_counts, distributed_world, lookup


class VectorQuantizer(nn.Module):
    def __init__(self, codebook_size: int, dim: int, *, use_ema: bool = False, ema_decay: float = 0.99,
                 l2_norm: bool = False, eps: float = 1e-5):
        super().__init__()
        self.codebook_size = codebook_size
        self.dim = dim
        self.use_ema = use_ema
        self.ema_decay = ema_decay
        self.l2_norm = l2_norm
        self.eps = eps
        self.embedding = nn.Embedding(codebook_size, dim)
        if l2_norm:
            nn.init.normal_(self.embedding.weight)
            with torch.no_grad():
                self.embedding.weight.copy_(F.normalize(self.embedding.weight, dim=1))
        else:
            nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        if use_ema:
            self.embedding.weight.requires_grad_(False)
            # Start as if every code had been assigned once to itself: unused codes then stay where they are
            # instead of drifting (sum and size decay at the same rate).
            self.register_buffer("ema_cluster_size", torch.ones(codebook_size))
            self.register_buffer("ema_embed_sum", self.embedding.weight.detach().clone())

    def codebook(self) -> torch.Tensor:
        """[N, D] code vectors as used for lookup."""
        w = self.embedding.weight
        return F.normalize(w, dim=1) if self.l2_norm else w

    def _nearest(self, flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        # ||z - e||^2 = |z|^2 - 2 z.e + |e|^2; flat [M, D], codebook [N, D] -> indices [M]
        d = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codebook.t() + codebook.pow(2).sum(1)[None]
        return d.argmin(1)

    def _prepare(self, z: torch.Tensor) -> torch.Tensor:
        flat = z.float().permute(0, 2, 3, 1).reshape(-1, self.dim)  # [B*h*w, D]
        return F.normalize(flat, dim=1) if self.l2_norm else flat

    def forward(self, z: torch.Tensor, step: int | None = None) -> QuantizerOutput:
        B, D, h, w = z.shape
        with torch.autocast(z.device.type, enabled=False):
            flat = self._prepare(z)
            codebook = self.codebook()
            idx = self._nearest(flat.detach(), codebook.detach())  # [M]
            quant = codebook[idx]  # [M, D]
            sync = self.training and distributed_world() > 1
            counts = code_counts(idx, self.codebook_size, sync)
            if self.training and self.use_ema:
                self._ema_update(flat.detach(), idx)
            losses = {"commitment": F.mse_loss(flat, quant.detach())}
            if not self.use_ema:
                losses["codebook"] = F.mse_loss(quant, flat.detach())
            st = quant.detach() + (flat - flat.detach())  # straight-through: forward quant, backward identity
            codes = st.reshape(B, h, w, D).permute(0, 3, 1, 2).contiguous()
        return QuantizerOutput(codes=codes, indices=idx.reshape(B, h, w), losses=losses, stats={"counts": counts})

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, idx: torch.Tensor) -> None:
        n = torch.bincount(idx, minlength=self.codebook_size).float()  # [N]
        sums = torch.zeros_like(self.ema_embed_sum).index_add_(0, idx, flat)  # [N, D]
        if distributed_world() > 1:  # every rank applies the same update from the global batch
            n, sums = all_reduce_sum(n), all_reduce_sum(sums)
        self.ema_cluster_size.lerp_(n, 1 - self.ema_decay)
        self.ema_embed_sum.lerp_(sums, 1 - self.ema_decay)
        # Laplace smoothing keeps every size positive before dividing.
        total = self.ema_cluster_size.sum()
        size = (self.ema_cluster_size + self.eps) / (total + self.codebook_size * self.eps) * total
        new = self.ema_embed_sum / size[:, None]
        self.embedding.weight.copy_(F.normalize(new, dim=1) if self.l2_norm else new)

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, D, h, w] -> indices [B, h, w] (nearest code)."""
        B, _, h, w = z.shape
        with torch.autocast(z.device.type, enabled=False):
            return self._nearest(self._prepare(z), self.codebook()).reshape(B, h, w)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """indices [B, h, w] -> codes [B, D, h, w]."""
        return lookup(indices, self.codebook())
