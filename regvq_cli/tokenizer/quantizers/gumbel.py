"""Gumbel-softmax quantization, as in taming-transformers' Gumbel-VQ (and DALL-E's dVAE).

A 1x1 convolution turns each latent vector into logits over the N codes. In training a code is *sampled*
with the Gumbel-softmax relaxation at temperature t (annealed by step); with ``straight_through`` the decoder
sees the hard one-hot sample in the forward pass and the relaxed sample's gradient in the backward pass,
otherwise the soft mixture itself. The regularizer is taming's: the KL divergence from the per-position
softmax q(z_i) to the uniform distribution, averaged over positions,

    kl_uniform = mean_i sum_n q_in log(N q_in).

That is a different regularizer from RegVQ's prior term, which applies the KL to the histogram averaged over
the whole batch; see regvq.py. At inference the choice is the deterministic argmax (taming samples even at
test time; we do not, so that encoding is reproducible).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import (QuantizerOutput, code_counts, distributed_world, embed_one_hot, lookup,
                   straight_through_one_hot, temperature_at)


def gumbel_softmax(logits: torch.Tensor, temperature: float, dim: int = 1) -> torch.Tensor:
    """softmax((logits + g) / t) with g ~ Gumbel(0, 1); -log(Exp(1)) is Gumbel and never takes log(0)."""
    g = -torch.empty_like(logits).exponential_().log()
    return F.softmax((logits + g) / temperature, dim=dim)


class GumbelQuantizer(nn.Module):
    def __init__(self, codebook_size: int, dim: int, *, straight_through: bool = True, temp_init: float = 1.0,
                 temp_min: float = 1.0 / 16, temp_anneal: float = 0.0):
        super().__init__()
        self.codebook_size = codebook_size
        self.dim = dim
        self.straight_through = straight_through
        self.temp_init, self.temp_min, self.temp_anneal = temp_init, temp_min, temp_anneal
        self.proj = nn.Conv2d(dim, codebook_size, 1)  # latent -> logits
        self.embedding = nn.Embedding(codebook_size, dim)

    def forward(self, z: torch.Tensor, step: int | None = None) -> QuantizerOutput:
        with torch.autocast(z.device.type, enabled=False):
            logits = self.proj(z.float())  # [B, N, h, w]
            codebook = self.embedding.weight  # [N, D]
            indices = logits.argmax(1)  # [B, h, w] deterministic choice
            temp = temperature_at(step, self.temp_init, self.temp_min, self.temp_anneal)
            if self.training:
                soft = gumbel_softmax(logits, temp)
                sampled = soft.argmax(1)
                one_hot = straight_through_one_hot(sampled, soft) if self.straight_through else soft
                mask = torch.ones_like(sampled, dtype=torch.bool)  # every position is stochastic
            else:
                sampled = indices
                one_hot = F.one_hot(indices, self.codebook_size).permute(0, 3, 1, 2).float()
                mask = torch.zeros_like(indices, dtype=torch.bool)
            codes = embed_one_hot(one_hot, codebook)  # [B, D, h, w]
            q = F.softmax(logits, dim=1)
            kl = (q * torch.log(q * self.codebook_size + 1e-10)).sum(1).mean()
            counts = code_counts(indices, self.codebook_size, self.training and distributed_world() > 1)
        return QuantizerOutput(
            codes=codes, indices=indices, losses={"kl_uniform": kl},
            stats={"counts": counts, "temperature": torch.tensor(temp)},
            sampled_codes=lookup(sampled, codebook).detach(), argmax_codes=lookup(indices, codebook).detach(),
            mask=mask, logits=logits,
        )

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, D, h, w] -> indices [B, h, w] (argmax of the logits)."""
        with torch.autocast(z.device.type, enabled=False):
            return self.proj(z.float()).argmax(1)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """indices [B, h, w] -> codes [B, D, h, w]."""
        return lookup(indices, self.embedding.weight)
