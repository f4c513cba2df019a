"""Regularized Vector Quantization (RegVQ): Zhang, Zhan, Theobalt, Lu, "Regularized Vector Quantization for
Tokenized Image Synthesis", CVPR 2023, arXiv 2303.06424.

Per latent position the quantizer predicts logits over the N codes: a 1x1 projection (as in Gumbel-VQ), or,
with ``logits="distance"``, the negative squared distance to each code, -||z - e_n||^2 / t. Two
regularizers act on them:

1. Prior distribution regularization (``use_prior``). The predicted token distribution is the histogram of
   the argmax choices over *all* positions of the (global) batch, made differentiable with the
   straight-through estimator (forward: one-hot; backward: softmax):

       P_post = 1/M sum_i onehot_i,   L_kl = KL(P_post || U) = sum_n p_n log(N p_n) = log N - H(P_post),

   with 0 log 0 = 0. The average comes *before* the KL: per-position KL to uniform (taming's Gumbel-VQ,
   gumbel.py) pushes every position towards maximal uncertainty, while this term only asks that codes be
   used equally often overall, which is what prevents codebook collapse. We regularize the histogram of the
   deterministic (argmax) choices, the ones encoding uses at inference, so that the codebook usage that
   matters downstream is the one made uniform. Under DDP the histogram is summed over ranks
   (``all_reduce_sum_with_grad``), so the KL is that of the global batch and its gradient is exact.
   Implementation detail: the log uses p clamped at 1e-10, so unused codes (p = 0) contribute 0 to the value
   and a large finite pull, log(N * 1e-10), to the gradient instead of -inf.

2. Stochastic mask regularization (``use_mask``, ``mask_ratio``; 0.4 in the paper). Each training call draws a
   fresh Bernoulli mask M over positions. Masked positions take a Gumbel-sampled code (straight-through with
   the Gumbel-softmax backward), the others the argmax code (straight-through with the softmax backward);
   the decoder sees Xargmax * (1 - M) + Xgumbel * M. This trades the train/inference misalignment of
   purely stochastic quantization against the unperturbed reconstruction objective of purely deterministic
   quantization. ``mask_warmup`` (ours; 0 by default, the paper's setting) ramps the ratio up from 0 over that
   many steps: while the code distributions are still nearly flat a Gumbel sample is almost never the argmax
   code (``sample_agreement`` in the stats), so early masking feeds the decoder near-random codes.

The output carries the embeddings of the code used and of the argmax code at every position, and the mask,
so that the probabilistic contrastive loss (losses.py) can weight positions by how far the sampled code
moved from the argmax one. Outside training (``model.eval()``) and in ``encode`` the choice is the
deterministic argmax.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import (QuantizerOutput, all_reduce_sum_with_grad, distributed_world, embed_one_hot,
                   lookup, straight_through_one_hot, temperature_at)
from .gumbel import gumbel_softmax


def kl_to_uniform(p: torch.Tensor) -> torch.Tensor:
    """KL(p || U) = sum_n p_n log(N p_n) for a distribution p [N], with 0 log 0 = 0 (finite gradient at 0)."""
    n = p.shape[-1]
    return (p * torch.log(n * p.clamp_min(1e-10))).sum(-1)


class RegVQuantizer(nn.Module):
    def __init__(self, codebook_size: int, dim: int, *, logits: str = "linear", distance_temp: float = 1.0,
                 logit_init: float = 1.0,
                 use_prior: bool = True, use_mask: bool = True, mask_ratio: float = 0.4, mask_warmup: int = 0,
                 temp_init: float = 1.0,
                 temp_min: float = 1.0 / 16, temp_anneal: float = 0.0):
        super().__init__()
        if logits not in ("linear", "distance"):
            raise ValueError(f"logits must be 'linear' or 'distance', got {logits!r}")
        if not 0.0 <= mask_ratio <= 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1], got {mask_ratio}")
        self.codebook_size = codebook_size
        self.dim = dim
        self.logits_kind = logits
        self.distance_temp = distance_temp
        self.use_prior = use_prior
        self.use_mask = use_mask
        self.mask_ratio = mask_ratio
        self.mask_warmup = mask_warmup
        self.temp_init, self.temp_min, self.temp_anneal = temp_init, temp_min, temp_anneal
        self.embedding = nn.Embedding(codebook_size, dim)
        if logits == "linear":
            self.proj = nn.Conv2d(dim, codebook_size, 1)
            with torch.no_grad():  # logit_init > 1: sharper distributions from the start (docs/results.md)
                self.proj.weight.mul_(logit_init)

    def compute_logits(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, D, h, w] (float32) -> logits [B, N, h, w]."""
        if self.logits_kind == "linear":
            return self.proj(z)
        e = self.embedding.weight  # [N, D]
        # -||z - e||^2 / t = (2 z.e - |z|^2 - |e|^2) / t
        ze = torch.einsum("bdhw,nd->bnhw", z, e)
        d = z.pow(2).sum(1, keepdim=True) - 2 * ze + e.pow(2).sum(1)[None, :, None, None]
        return -d / self.distance_temp

    def forward(self, z: torch.Tensor, step: int | None = None) -> QuantizerOutput:
        B, _, h, w = z.shape
        with torch.autocast(z.device.type, enabled=False):
            z = z.float()
            codebook = self.embedding.weight  # [N, D]
            logits = self.compute_logits(z)  # [B, N, h, w]
            probs = F.softmax(logits, dim=1)
            argmax = logits.argmax(1)  # [B, h, w]
            onehot_argmax = straight_through_one_hot(argmax, probs)  # forward one-hot, backward softmax

            temp = temperature_at(step, self.temp_init, self.temp_min, self.temp_anneal)
            ratio = self.mask_ratio_at(step)
            if self.training and self.use_mask and ratio > 0:
                soft = gumbel_softmax(logits, temp)
                sampled = soft.argmax(1)
                onehot_sampled = straight_through_one_hot(sampled, soft)  # backward: Gumbel-softmax
                mask = torch.rand(B, h, w, device=z.device) < ratio  # fresh every call
                m = mask[:, None].to(probs.dtype)  # [B, 1, h, w]
                onehot = onehot_argmax * (1 - m) + onehot_sampled * m
                used = torch.where(mask, sampled, argmax)
                agreement = (sampled == argmax).float().mean()
            else:
                mask = torch.zeros_like(argmax, dtype=torch.bool)
                onehot = onehot_argmax
                used = argmax
                agreement = None
            codes = embed_one_hot(onehot, codebook)  # [B, D, h, w]

            # Prior distribution regularization on the global batch's histogram of argmax choices.
            counts = onehot_argmax.sum(dim=(0, 2, 3))  # [N]: value = histogram, gradient = summed softmax
            if self.training and distributed_world() > 1:
                counts = all_reduce_sum_with_grad(counts)
            # every position is counted once, so the counts sum to the (global) number of positions: no collective
            # of its own, and no host sync
            kl = kl_to_uniform(counts / counts.detach().sum())

        losses: dict[str, torch.Tensor] = {}
        # How peaked the code distributions are: mean top-1 probability, and how often a Gumbel sample is the
        # argmax code. While they are low, masked positions get near-random codes (the decoder learns to hedge).
        stats = {"counts": counts.detach(), "temperature": torch.tensor(temp), "mask_fraction": mask.float().mean(),
                 "max_prob": probs.detach().amax(1).mean()}
        if agreement is not None:
            stats["sample_agreement"] = agreement
        if self.use_prior:
            losses["prior_kl"] = kl
        else:
            stats["prior_kl"] = kl.detach()
        return QuantizerOutput(
            codes=codes, indices=argmax, losses=losses, stats=stats,
            sampled_codes=lookup(used, codebook).detach(), argmax_codes=lookup(argmax, codebook).detach(),
            mask=mask, logits=logits,
        )

    def mask_ratio_at(self, step: int | None) -> float:
        """The mask ratio at a training step: ramps linearly from 0 over ``mask_warmup`` steps, then holds."""
        if not self.mask_warmup or step is None:
            return self.mask_ratio
        return self.mask_ratio * min(1.0, step / self.mask_warmup)

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, D, h, w] -> indices [B, h, w] (argmax of the logits; deterministic)."""
        with torch.autocast(z.device.type, enabled=False):
            return self.compute_logits(z.float()).argmax(1)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """indices [B, h, w] -> codes [B, D, h, w]."""
        return lookup(indices, self.embedding.weight)
