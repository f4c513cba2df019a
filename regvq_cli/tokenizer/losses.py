"""Tokenizer training losses, as pure functions.

- ``l1_loss``: pixel reconstruction.
- ``perceptual_loss``: sum over layers of the mean (over batch and positions) squared distance between
  channel-normalised features of a frozen network; with LPIPS' per-channel weights it is LPIPS.
- ``hinge_d_loss`` / ``hinge_g_loss`` / ``gan_objective`` / ``gan_factor``: VQGAN's PatchGAN objective, its
  generator weight lambda = ||grad_L(rec)|| / (||grad_L(gan)|| + 1e-4) at the decoder's last layer L (clamped),
  and a start step before which the GAN is off.
- ``contrastive_loss``: PatchNCE (Park et al., "Contrastive Learning for Unpaired Image-to-Image Translation",
  ECCV 2020) between features of the reconstruction (queries) and of the input (keys), and, given weights,
  RegVQ's probabilistic contrastive loss (PCL; Zhang et al., CVPR 2023, arXiv 2303.06424).

The contrastive loss at one feature layer. Sample S positions (the same for every image of the batch);
q_i, k_i are the unit-normalised feature vectors of the reconstruction and of the input at position i. With
s_ij = q_i . k_j / tau and L = S - 1 negatives (the other sampled positions of the same image):

    l_i = -log( exp(s_ii) / (exp(s_ii) + (1/L) sum_{j != i} exp(s_ij)) )

The 1/L on the negatives follows the paper; it is a constant shift of the negative logits by -log L, and keeps
the loss scale independent of S. We use it for the vanilla loss (CL) as well, so that CL and PCL differ only
by the weights. The vanilla loss is mean_i l_i; summed over layers.

PCL weights. At latent position i, w_i = ||e_sampled_i - e_argmax_i||^2: how far the stochastic code the
decoder actually saw moved from the deterministic one (0 wherever the argmax code was used). The map w is
resized (bilinear) to each feature layer, read at the sampled positions, and normalised over all of them, the
batch's images together (mean_BS: an image whose sampled positions were none of them perturbed keeps ``floor``
there, while the others carry more):

    w'_i = floor + (1 - floor) * w_i / mean_BS(w),        PCL = mean_i w'_i l_i

so that mean_i w'_i = 1 (the loss keeps the vanilla loss's scale) and all-equal weights give exactly the
vanilla loss. The w_i = 0 case: positions whose code was not perturbed get weight ``floor`` (0.1 by default;
0 restricts PCL to the perturbed positions), and if no sampled position of a layer is perturbed in the whole
batch (mean_BS(w) = 0: mask off, eval, or every Gumbel sample equal to the argmax), the weights fall back to 1,
i.e. the vanilla loss. The loss is therefore always finite. The weights are detached: they calibrate where the
contrastive loss pulls, and a gradient through them would let the quantizer lower the loss by making its
samples agree with the argmax, which defeats the stochastic regularization.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def l1_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x.float() - y.float()).abs().mean()


def _unit(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    # channel normalisation as in LPIPS: f / sqrt(sum_c f^2 + eps), over dim 1
    return f * torch.rsqrt(f.pow(2).sum(1, keepdim=True) + eps)


def perceptual_loss(feats_x: list[torch.Tensor], feats_y: list[torch.Tensor],
                    channel_weights: list[torch.Tensor] | None = None) -> torch.Tensor:
    """sum_l mean_{b,h,w} sum_c w_lc (x_hat - y_hat)^2 over channel-normalised feature maps [B, C, H, W]
    (w = 1 without ``channel_weights``; each unweighted layer term lies in [0, 4])."""
    total = feats_x[0].new_zeros((), dtype=torch.float32)
    for i, (fx, fy) in enumerate(zip(feats_x, feats_y)):
        d = (_unit(fx.float()) - _unit(fy.float())).pow(2)  # [B, C, H, W]
        if channel_weights is not None and channel_weights[i] is not None:
            d = d * channel_weights[i].float().view(1, -1, 1, 1)
        total = total + d.sum(1).mean()
    return total


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(G(z)))])."""
    return 0.5 * (F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """-E[D(G(z))]."""
    return -logits_fake.float().mean()


def gan_factor(step: int, start: int) -> float:
    """1 once ``step >= start``, else 0 (VQGAN starts the discriminator late)."""
    return 1.0 if step >= start else 0.0


def gan_objective(recon: torch.Tensor, rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                  gan_weight: float, max_weight: float = 1e4) -> tuple[torch.Tensor, torch.Tensor]:
    """VQGAN's generator objective rec + gan_weight * lam * g with its adaptive weight
    lam = ||d rec / d last_layer|| / (||d g / d last_layer|| + 1e-4), clamped to [0, max_weight] and detached.

    Both losses must reach ``last_layer`` only through ``recon`` (the reconstruction, that layer's output). Each is
    back-propagated once, to ``recon`` (through the feature network, the discriminator), and their graphs are freed:
    lam needs their gradients at the last layer only (that layer's backward from ``recon``), and the backward pass
    below ``recon`` goes on from their weighted sum G. Returns (sum(recon * G), lam): a scalar whose gradient
    below ``recon`` is the objective's, without a second pass through either network."""
    grad_rec = torch.autograd.grad(rec_loss, recon)[0]  # [B, C, H, W]
    grad_g = torch.autograd.grad(g_loss, recon)[0]
    at_layer = [torch.autograd.grad(recon, last_layer, grad, retain_graph=True)[0] for grad in (grad_rec, grad_g)]
    lam = (at_layer[0].norm() / (at_layer[1].norm() + 1e-4)).clamp(0.0, max_weight).detach()
    grad = grad_rec.float() + gan_weight * lam * grad_g.float()
    return (recon.float() * grad).sum(), lam


def pcl_weights(sampled_codes: torch.Tensor, argmax_codes: torch.Tensor) -> torch.Tensor:
    """w_i = ||e_sampled - e_argmax||^2 per latent position: [B, D, h, w] x2 -> [B, h, w], detached."""
    return (sampled_codes.detach().float() - argmax_codes.detach().float()).pow(2).sum(1)


def normalize_weights(w: torch.Tensor, floor: float) -> torch.Tensor:
    """w'_i = floor + (1 - floor) * w_i / mean(w), the mean over all of w (the batch's sampled positions
    together); all ones when mean(w) == 0 (see the module docstring)."""
    m = w.mean()
    scaled = floor + (1.0 - floor) * w / m.clamp_min(1e-12)
    return torch.where(m > 1e-12, scaled, torch.ones_like(w))  # no host sync on the GPU


def patch_nce(feat_q: torch.Tensor, feat_k: torch.Tensor, positions: torch.Tensor, tau: float,
              weights: torch.Tensor | None = None, floor: float = 0.1) -> torch.Tensor:
    """One layer of the (probabilistic) contrastive loss.

    feat_q [B, C, H, W] reconstruction features (gradients flow), feat_k [B, C, H, W] input features
    (detached), positions [S] flat indices into H*W, weights [B, H, W] raw PCL weights or None (vanilla).
    """
    B, C, H, W = feat_q.shape
    S = positions.numel()
    if S < 2:  # no negatives, no contrast
        return feat_q.new_zeros((), dtype=torch.float32)
    # the S positions first, then float32: index_select's backward adds into the few selected columns, where
    # indexing a float32 copy of the whole map scattered its gradient into a zeroed map of that size
    q = _unit(feat_q.flatten(2).index_select(2, positions).float()).transpose(1, 2)  # [B, S, C]
    k = _unit(feat_k.detach().flatten(2).index_select(2, positions).float()).transpose(1, 2)  # [B, S, C]
    sim = q @ k.transpose(1, 2) / tau  # [B, S, S]; row i: query i against every key j
    eye = torch.eye(S, dtype=torch.bool, device=sim.device)
    # scale negatives by 1/L: subtract log L from the off-diagonal logits
    logits = sim - (~eye).to(sim.dtype) * math.log(S - 1)
    per_pos = torch.logsumexp(logits, dim=-1) - sim.diagonal(dim1=1, dim2=2)  # [B, S] = l_i
    if weights is None:
        return per_pos.mean()
    w = weights.detach().float()
    if w.shape[-2:] != (H, W):
        w = F.interpolate(w[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0]
    w = normalize_weights(w.flatten(1)[:, positions], floor)  # [B, S]
    return (w * per_pos).mean()


def sample_positions(h: int, w: int, num_patches: int, device: torch.device,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Up to ``num_patches`` distinct flat positions of an h x w map, at random: from ``generator`` when given,
    else from the global RNG of ``device`` (the CPU's for the CPU; an accelerator's own, so that no permutation
    is drawn on the CPU and copied over, which would make the host wait for the device every call)."""
    k = min(num_patches, h * w)
    if generator is None and torch.device(device).type != "cpu":
        return torch.rand(h * w, device=device).argsort()[:k]  # a uniform random order, drawn on the device
    perm = torch.randperm(h * w, generator=generator, device="cpu" if generator is None else generator.device)
    return perm[:k].to(device)


def contrastive_loss(feats_recon: list[torch.Tensor], feats_input: list[torch.Tensor], *, tau: float = 0.07,
                     num_patches: int = 256, weights: torch.Tensor | None = None, floor: float = 0.1,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Sum over layers of ``patch_nce``: vanilla PatchNCE when ``weights`` is None, PCL when ``weights`` is the
    [B, h, w] map of ``pcl_weights``."""
    total = feats_recon[0].new_zeros((), dtype=torch.float32)
    for fq, fk in zip(feats_recon, feats_input):
        pos = sample_positions(fq.shape[-2], fq.shape[-1], num_patches, fq.device, generator)
        total = total + patch_nce(fq, fk, pos, tau, weights, floor)
    return total
