"""What every quantizer returns, and helpers they share.

Interface of a quantizer module (vq, gumbel, regvq):

- ``forward(z, step=None) -> QuantizerOutput`` for training (z [B, D, h, w]);
- ``encode(z) -> indices`` [B, h, w], deterministic (argmin / argmax);
- ``decode_indices(indices) -> codes`` [B, D, h, w].

In training mode, when ``torch.distributed`` is initialised with more than one process, quantizers all-reduce
their code histograms so that usage statistics and RegVQ's prior KL describe the global batch. Those
collectives run inside ``forward``, so every rank must call ``forward`` the same number of times. ``encode``
and ``decode_indices`` never communicate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F


@dataclass
class QuantizerOutput:
    codes: torch.Tensor  # [B, D, h, w] what goes to the decoder (straight-through in training)
    indices: torch.Tensor  # [B, h, w] long, the deterministic choice (argmin / argmax)
    losses: dict[str, torch.Tensor] = field(default_factory=dict)  # named, unweighted loss terms
    # detached statistics for logging: "counts" [N] histogram of the deterministic choices over the
    # (global) batch; quantizer-specific scalars such as "temperature"
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    # For the probabilistic contrastive loss (stochastic quantizers only, detached):
    sampled_codes: torch.Tensor | None = None  # [B, D, h, w] embedding of the code actually used
    argmax_codes: torch.Tensor | None = None  # [B, D, h, w] embedding of the argmax code
    mask: torch.Tensor | None = None  # [B, h, w] bool, True where a stochastic (sampled) code was used
    logits: torch.Tensor | None = None  # [B, N, h, w] per-position logits over the codebook


def distributed_world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over all ranks (forward); backward passes ``world_size * grad`` to the local ``x``.

    Used for a loss computed from a global statistic that every rank computes identically (the RegVQ prior
    KL on the global code histogram). Let J(s) be that loss with s = sum_r x_r. The gradient of the global
    objective with respect to x_r is dJ/ds. DDP averages parameter gradients over the W ranks, so each rank
    must contribute W * dJ/ds to come out exact; a differentiable all-reduce would give the same numbers,
    but costs a second collective in the backward pass. This version needs none.
    """
    world = distributed_world()
    if world == 1:
        return x
    total = x.detach().clone()
    dist.all_reduce(total)
    scaled = x * world
    return total + (scaled - scaled.detach())


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Detached sum over ranks (identity with one process)."""
    x = x.detach().clone()
    if distributed_world() > 1:
        dist.all_reduce(x)
    return x


def code_counts(indices: torch.Tensor, n: int, sync: bool) -> torch.Tensor:
    """Histogram [n] (float) of ``indices``, summed over ranks when ``sync``."""
    counts = torch.bincount(indices.reshape(-1), minlength=n).float()
    return all_reduce_sum(counts) if sync else counts


def straight_through_one_hot(indices: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """One-hot of ``indices`` [B, h, w] in the forward pass, gradient of ``probs`` [B, N, h, w] in the
    backward pass (the straight-through estimator)."""
    hard = F.one_hot(indices, probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)  # [B, N, h, w]
    return hard + (probs - probs.detach())  # exactly `hard` in the forward pass


def embed_one_hot(one_hot: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """[B, N, h, w] weights over codes x codebook [N, D] -> codes [B, D, h, w]."""
    return torch.einsum("bnhw,nd->bdhw", one_hot, codebook)


def lookup(indices: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """indices [B, h, w] -> codes [B, D, h, w]."""
    return F.embedding(indices, codebook).permute(0, 3, 1, 2).contiguous()


def temperature_at(step: int | None, init: float, minimum: float, anneal_rate: float) -> float:
    """Gumbel-softmax temperature: init * exp(-anneal_rate * step), floored at ``minimum`` (DALL-E style).
    ``step=None`` (inference, or a caller without a schedule) gives ``init``."""
    if step is None or anneal_rate == 0.0:
        return init
    return max(minimum, init * math.exp(-anneal_rate * step))
