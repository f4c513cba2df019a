"""Per-image reconstruction metrics and codebook statistics.

Pure functions over tensors. Images are float tensors [B, C, H, W] with values in [0, data_range]:
data_range=1.0 for images in [0, 1], data_range=255.0 for 8-bit values kept as floats. The two give the
same PSNR and SSIM for the same picture, because both metrics only depend on values relative to the
range. Every image metric returns one number per image (a tensor [B]); averaging over a data set is
the caller's choice.

SSIM follows Wang, Bovik, Sheikh, Simoncelli, "Image quality assessment: from error visibility to
structural similarity", IEEE TIP 2004: an 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03,
the local statistics taken only where the window fits inside the image ("valid" filtering), the SSIM
map averaged over positions and then over channels. This equals scikit-image's
`structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=R, channel_axis=...)`. (scikit-image's default use_sample_covariance=True multiplies the
variances by 121/120; the paper does not.) The original MATLAB code also downsamples large images
first; we do not, so numbers are comparable across image sizes only at equal size.

Codebook statistics take a histogram of code counts [N] (see `code_histogram`):
usage is the percentage of codes used at least once; perplexity is exp of the entropy of the code
distribution, between 1 (one code) and N (all codes equally often) -- the measure RegVQ (Zhang et al.,
CVPR 2023, arXiv 2303.06424) reports to show its prior regularization avoids codebook collapse.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from regvq_cli.errors import RegvqError

# -- images --------------------------------------------------------------------------------------


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape:
        raise RegvqError(f"images to compare have different shapes {tuple(x.shape)} and {tuple(y.shape)}; resize one set first")
    if x.dim() != 4:
        raise RegvqError(f"expected image batches [B, C, H, W], got shape {tuple(x.shape)}")


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image: [B, C, H, W] x2 -> [B] (float64)."""
    _check_pair(x, y)
    d = x.double() - y.double()
    return d.pow(2).flatten(1).mean(1)


def l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per image: [B, C, H, W] x2 -> [B] (float64), in the units of the inputs."""
    _check_pair(x, y)
    return (x.double() - y.double()).abs().flatten(1).mean(1)


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image in dB: 10 log10(data_range^2 / MSE).

    x, y: [B, C, H, W] with values in [0, data_range] (1.0 for [0, 1] images, 255.0 for 8-bit).
    Identical images give +inf. Returns [B] float64.
    """
    err = mse(x, y)
    return 10.0 * torch.log10(data_range**2 / err)  # err == 0 -> +inf, as it should


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalized 2-D Gaussian window [size, size] (float64), the outer product of a 1-D Gaussian."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity per image (Wang et al. 2004), averaged over channels: [B, C, H, W] x2 -> [B].

    Computed in float64. Identical images give exactly 1. Images smaller than the window are refused.
    """
    _check_pair(x, y)
    B, C, H, W = x.shape
    if H < win_size or W < win_size:
        raise RegvqError(f"SSIM needs images of at least {win_size}x{win_size} pixels, got {H}x{W}")
    x, y = x.double(), y.double()
    # one depthwise filter per channel: [C, 1, k, k]
    win = gaussian_window(win_size, sigma).to(x.device).expand(C, 1, win_size, win_size)

    def filt(t: torch.Tensor) -> torch.Tensor:  # local weighted mean over the window, "valid" region
        return F.conv2d(t, win, groups=C)

    mu_x, mu_y = filt(x), filt(y)
    # local (biased, weighted) variances and covariance: E[x^2] - E[x]^2
    var_x = filt(x * x) - mu_x**2
    var_y = filt(y * y) - mu_y**2
    cov_xy = filt(x * y) - mu_x * mu_y
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    ssim_map = num / den  # [B, C, H-k+1, W-k+1]
    return ssim_map.mean(dim=(2, 3)).mean(dim=1)


# -- codebook ------------------------------------------------------------------------------------


def code_histogram(indices: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Count how often each code occurs: indices of any shape -> int64 counts [codebook_size]."""
    flat = indices.reshape(-1).long()
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= codebook_size):
        raise RegvqError(
            f"code indices span [{int(flat.min())}, {int(flat.max())}] but the codebook has {codebook_size} codes; "
            "pass the codebook size of the tokenizer that made these tokens"
        )
    return torch.bincount(flat.cpu(), minlength=codebook_size)


def _check_hist(hist: torch.Tensor) -> torch.Tensor:
    hist = torch.as_tensor(hist)
    if hist.dim() != 1 or hist.numel() == 0:
        raise RegvqError(f"a code histogram is a 1-D tensor of counts, got shape {tuple(hist.shape)}")
    if bool((hist < 0).any()):
        raise RegvqError("a code histogram cannot hold negative counts")
    return hist


def codebook_usage(hist: torch.Tensor) -> float:
    """Percentage (0-100) of codes used at least once."""
    hist = _check_hist(hist)
    return 100.0 * int((hist > 0).sum()) / hist.numel()


def code_entropy(hist: torch.Tensor) -> float:
    """Entropy (nats) of the empirical code distribution; 0 log 0 counts as 0. 0.0 for an empty histogram."""
    hist = _check_hist(hist).double()
    total = hist.sum()
    if total == 0:
        return 0.0
    p = hist[hist > 0] / total
    return float(-(p * p.log()).sum())


def codebook_perplexity(hist: torch.Tensor) -> float:
    """exp(entropy): the effective number of codes in use, in [1, N] (1.0 for an empty histogram)."""
    return math.exp(code_entropy(hist))


def dead_codes(hist: torch.Tensor) -> list[int]:
    """Indices of the codes never used, ascending."""
    hist = _check_hist(hist)
    return torch.nonzero(hist == 0).flatten().tolist()


def most_used(hist: torch.Tensor, k: int = 10) -> list[tuple[int, int]]:
    """The k most used codes as (index, count), by count descending, ties broken by lower index.

    Dead codes are left out, as in `least_used`: a k past the number of used codes lists the used ones only.
    """
    counts = _check_hist(hist).tolist()
    order = sorted((i for i, c in enumerate(counts) if c > 0), key=lambda i: (-counts[i], i))
    return [(i, int(counts[i])) for i in order[:k]]


def least_used(hist: torch.Tensor, k: int = 10) -> list[tuple[int, int]]:
    """The k least used codes among those used at least once, as (index, count), count ascending.

    Dead codes are left out here: `dead_codes` lists them, and otherwise they would fill this list.
    """
    counts = _check_hist(hist).tolist()
    used = [i for i, c in enumerate(counts) if c > 0]
    order = sorted(used, key=lambda i: (counts[i], i))
    return [(i, int(counts[i])) for i in order[:k]]
