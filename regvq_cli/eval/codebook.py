"""Codebook health: how much of the codebook a tokenizer uses, from a histogram of code counts.

The question RegVQ (Zhang et al., CVPR 2023, arXiv 2303.06424) answers: deterministic VQ tends to
collapse onto a few codes, Gumbel-VQ under-uses its codebook, and RegVQ's prior regularization keeps
the perplexity near N. `codebook_report` gives the numbers; `usage_plot` draws the histogram as a PNG
with Pillow alone.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from PIL import Image, ImageDraw, ImageFont

from regvq_cli.errors import RegvqError
from regvq_cli.eval import metrics


def histogram_from_batches(batches: Iterable[torch.Tensor], codebook_size: int) -> torch.Tensor:
    """Accumulate code counts [codebook_size] (int64) over batches of indices of any shape."""
    hist = torch.zeros(codebook_size, dtype=torch.int64)
    for indices in batches:
        hist += metrics.code_histogram(torch.as_tensor(indices), codebook_size)
    return hist


def codebook_report(hist: torch.Tensor, top_k: int = 10) -> dict:
    """Numbers that describe codebook use; JSON-ready.

    Keys: codebook_size, n_tokens, usage (% of codes used), perplexity (exp entropy, 1..N),
    perplexity_ratio (perplexity / N: 1.0 is perfectly even use), entropy_bits, dead_codes (count),
    dead_code_indices (ascending), most_used and least_used ([[index, count], ...]; both leave out
    dead codes).
    """
    hist = torch.as_tensor(hist)
    n = hist.numel()
    dead = metrics.dead_codes(hist)
    perplexity = metrics.codebook_perplexity(hist)
    return {
        "codebook_size": n,
        "n_tokens": int(hist.sum()),
        "usage": metrics.codebook_usage(hist),
        "perplexity": perplexity,
        "perplexity_ratio": perplexity / n,
        "entropy_bits": metrics.code_entropy(hist) / math.log(2),
        "dead_codes": len(dead),
        "dead_code_indices": dead,
        "most_used": [list(p) for p in metrics.most_used(hist, top_k)],
        "least_used": [list(p) for p in metrics.least_used(hist, top_k)],
    }


def _column_heights(counts: list[int], n_cols: int) -> list[float]:
    # one value per plot column: with more codes than columns, a column shows the largest count of
    # the codes it covers (so a single busy code is never averaged away)
    n = len(counts)
    if n <= n_cols:
        return [float(c) for c in counts]
    return [float(max(counts[i * n // n_cols : (i + 1) * n // n_cols])) for i in range(n_cols)]  # n > n_cols: no slice is empty


def usage_plot(
    hist: torch.Tensor,
    width: int = 1024,
    height: int = 360,
    sort: bool = False,
    log_scale: bool = False,
    title: str | None = None,
) -> Image.Image:
    """Draw the code histogram as an RGB image: one bar per code (or per group of codes when N exceeds
    the plot width), a dashed line at the count every code would have under uniform use, dead codes
    marked red under the axis. sort=True orders codes by count (a rank plot) instead of by index.
    """
    counts = [int(c) for c in torch.as_tensor(hist).tolist()]
    if not counts:
        raise RegvqError("cannot plot an empty code histogram")
    if width < 200 or height < 120:
        raise RegvqError(f"the usage plot needs at least 200x120 pixels, got {width}x{height}")
    n = len(counts)
    if sort:
        counts = sorted(counts, reverse=True)
    font = ImageFont.load_default()
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)

    left, right, top, bottom = 60, 12, 28, 34  # margins in pixels
    plot_w, plot_h = width - left - right, height - top - bottom
    x0, y0 = left, height - bottom  # the origin (bottom left of the plot)

    def scale(v: float) -> float:
        return math.log10(1 + v) if log_scale else v

    peak = max(counts)
    top_value = scale(peak) if peak > 0 else 1.0

    def y_of(v: float) -> float:
        return y0 - plot_h * scale(v) / top_value

    heights = _column_heights(counts, plot_w)
    bar_w = plot_w / len(heights)
    def x_span(col: int) -> tuple[int, int]:  # first and last pixel column of a bar (inclusive)
        xa, xb = x0 + round(col * bar_w), x0 + round((col + 1) * bar_w) - 1
        return xa, max(xa, xb - (1 if bar_w >= 3 else 0))  # a 1 px gap between wide bars

    for col, v in enumerate(heights):
        if v > 0:
            xa, xb = x_span(col)
            draw.rectangle([xa, round(y_of(v)), xb, y0], fill=(52, 101, 164))
    # dead codes: red ticks under the axis, at their position
    dead_cols = {i * len(heights) // n for i, c in enumerate(counts) if c == 0}
    for col in dead_cols:
        xa, xb = x_span(col)
        draw.rectangle([xa, y0 + 2, xb, y0 + 6], fill=(204, 0, 0))
    # uniform-use reference line
    uniform = sum(counts) / n
    if uniform > 0:
        yu = y_of(uniform)
        for xa in range(x0, x0 + plot_w, 8):
            draw.line([xa, yu, min(xa + 4, x0 + plot_w), yu], fill=(237, 125, 49), width=1)
    # axes and labels
    draw.line([x0, top, x0, y0], fill="black")
    draw.line([x0, y0, x0 + plot_w, y0], fill="black")
    draw.text((4, top - 4), str(peak), fill="black", font=font)
    draw.text((4, y0 - 10), "0", fill="black", font=font)
    draw.text((x0, y0 + 10), "0", fill="black", font=font)
    last = f"{n - 1}"
    draw.text((x0 + plot_w - 6 * len(last), y0 + 10), last, fill="black", font=font)
    axis = "codes by count (rank)" if sort else "code index"
    axis += ", log count" if log_scale else ""
    draw.text((x0 + plot_w // 2 - 3 * len(axis), y0 + 10), axis, fill="black", font=font)
    if title is None:
        title = (
            f"{n} codes   usage {metrics.codebook_usage(torch.tensor(counts)):.1f}%   "
            f"perplexity {metrics.codebook_perplexity(torch.tensor(counts)):.1f}   dead {counts.count(0)}"
        )
    draw.text((x0, 8), title, fill="black", font=font)
    return img


def save_usage_plot(hist: torch.Tensor, path: str, **kwargs) -> None:
    """Write `usage_plot(hist, **kwargs)` to a PNG file."""
    usage_plot(hist, **kwargs).save(path, format="PNG")
