"""Shared helpers for the dataset recipes: the colour vocabulary, colour measurement and
recolouring, simple compositing, a deterministic parallel map, and the progress line.

The recipes are plain scripts (``python recipes/NAME.py``); this module sits beside them and is
imported as ``_common``. It needs only numpy and Pillow.

Colour words must be true of the pixels. One function decides what a pixel's colour is
(:func:`classify_colors`); the recolouring (:func:`recolor`) writes pixels that this function
names as the target, and the captions name a colour only after measuring the finished picture
with it (:func:`dominant_color`).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from PIL import Image

# ---------------------------------------------------------------------------------------------
# Colour vocabulary
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Color:
    """A named colour: what the recolouring writes (hue, saturation range, value range)."""

    name: str
    hue: float  # degrees; ignored for neutrals
    s: tuple[float, float]  # saturation range written, in [0, 1]
    v: tuple[float, float]  # value (HSV brightness) range written, in [0, 1]

    @property
    def neutral(self) -> bool:
        return self.s[1] <= 0.15

    def rgb(self, rng: np.random.Generator | None = None) -> tuple[int, int, int]:
        """A representative RGB triple (jittered inside the colour's ranges when rng is given)."""
        if rng is None:
            h, s, v = self.hue, sum(self.s) / 2, sum(self.v) / 2
        else:
            h = self.hue + (0.0 if self.neutral else rng.uniform(-5, 5))
            s = rng.uniform(*self.s)
            v = rng.uniform(*self.v)
        r, g, b = hsv_to_rgb(np.array([[h]]), np.array([[s]]), np.array([[v]]))[0, 0]
        return int(r), int(g), int(b)


# ~10 named hues plus black, white and gray. The ranges sit well inside the bins of
# classify_colors so that recoloured pixels are named back as the target.
COLORS: dict[str, Color] = {
    c.name: c
    for c in [
        Color("red", 0, (0.7, 0.95), (0.55, 0.95)),
        Color("orange", 28, (0.75, 1.0), (0.85, 1.0)),
        Color("yellow", 56, (0.7, 0.95), (0.85, 1.0)),
        Color("green", 120, (0.55, 0.9), (0.45, 0.85)),
        Color("cyan", 185, (0.6, 0.9), (0.7, 0.95)),
        Color("blue", 225, (0.65, 0.95), (0.55, 0.95)),
        Color("purple", 275, (0.5, 0.85), (0.45, 0.8)),
        Color("pink", 322, (0.45, 0.7), (0.85, 1.0)),
        Color("brown", 25, (0.55, 0.85), (0.3, 0.5)),
        Color("black", 0, (0.0, 0.08), (0.03, 0.14)),
        Color("white", 0, (0.0, 0.06), (0.9, 1.0)),
        Color("gray", 0, (0.0, 0.06), (0.4, 0.68)),
    ]
}
COLOR_NAMES: list[str] = list(COLORS)
UNKNOWN = -1  # classify_colors' id for pixels that sit between two colours


def rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 or float [..., 3] RGB -> (hue in degrees [0, 360), saturation [0, 1], value [0, 1])."""
    x = np.asarray(rgb, dtype=np.float32)[..., :3] / 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    mx = np.maximum(np.maximum(r, g), b)  # faster than x.max(-1) over a length-3 axis
    mn = np.minimum(np.minimum(r, g), b)
    d = mx - mn
    safe = np.where(d > 0, d, 1.0)
    h = np.where(
        mx == r, ((g - b) / safe) % 6.0, np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0)
    )
    h = np.where(d > 0, h * 60.0, 0.0)
    s = np.where(mx > 0, d / np.where(mx > 0, mx, 1.0), 0.0)
    return h.astype(np.float32), s.astype(np.float32), mx.astype(np.float32)


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inverse of rgb_to_hsv: arrays of equal shape -> uint8 [..., 3]."""
    h = (np.asarray(h, dtype=np.float32) % 360.0) / 60.0
    s = np.clip(np.asarray(s, dtype=np.float32), 0, 1)
    v = np.clip(np.asarray(v, dtype=np.float32), 0, 1)
    i = np.floor(h).astype(np.int32) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros(h.shape + (3,), dtype=np.float32)
    for k, (r, g, b) in enumerate(table):
        m = i == k
        out[m] = np.stack([r[m], g[m], b[m]], -1)
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


# Hue bins of the chromatic colours, in degrees [lo, hi). The gaps between bins are UNKNOWN.
_HUE_BINS = {
    "red": [(345, 360), (0, 12)],
    "orange": [(15, 40)],  # with value >= 0.72; darker is brown
    "brown": [(12, 42)],  # with value in [0.2, 0.6]
    "yellow": [(46, 68)],
    "green": [(78, 165)],
    "cyan": [(172, 200)],
    "blue": [(205, 252)],
    "purple": [(258, 292)],
    "pink": [(300, 342)],
}


def classify_colors(rgb: np.ndarray) -> np.ndarray:
    """Name the colour of every pixel: [..., 3] RGB -> int [...] index into COLOR_NAMES,
    or UNKNOWN (-1) for pixels between colours (dull, too dark to tell, or on a bin edge)."""
    h, s, v = rgb_to_hsv(rgb)
    out = np.full(h.shape, UNKNOWN, dtype=np.int64)
    idx = {n: i for i, n in enumerate(COLOR_NAMES)}
    out[(v < 0.18) | ((v < 0.25) & (s < 0.3))] = idx["black"]
    neutral = s < 0.15
    out[neutral & (v >= 0.82)] = idx["white"]
    out[neutral & (v >= 0.32) & (v < 0.75)] = idx["gray"]
    chroma = (s >= 0.35) & (v >= 0.3)
    for name, bins in _HUE_BINS.items():
        m = np.zeros(h.shape, dtype=bool)
        for lo, hi in bins:
            m |= (h >= lo) & (h < hi)
        if name == "orange":
            m &= v >= 0.72
        elif name == "brown":
            m &= (v >= 0.2) & (v < 0.6)
        out[chroma & m] = idx[name]
    return out


def color_shares(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Fraction of the masked pixels named as each colour: float [len(COLOR_NAMES)]."""
    ids = classify_colors(rgb[mask])
    n = max(int(mask.sum()), 1)
    return np.bincount(ids[ids >= 0], minlength=len(COLOR_NAMES)).astype(np.float64) / n


def dominant_color(rgb: np.ndarray, mask: np.ndarray, min_share: float = 0.4) -> str | None:
    """The colour most of the masked pixels have, if it covers at least min_share of them."""
    shares = color_shares(rgb, mask)
    k = int(shares.argmax())
    return COLOR_NAMES[k] if shares[k] >= min_share else None


# ---------------------------------------------------------------------------------------------
# Sprites and recolouring
# ---------------------------------------------------------------------------------------------


@dataclass
class Sprite:
    """An object picture with an exact alpha mask: rgba is uint8 [H, W, 4], cropped to the
    object. Its main-colour part (main_part) is found after resizing, per sample."""

    name: str  # the object word used in captions, e.g. "parrot"
    kind: str  # a broader word, e.g. "bird" (equal to name when there is none)
    source: str  # "emoji:U+1F99C" or "clipart:animals/birds/crow_01.png"
    rgba: np.ndarray


def main_part(rgba: np.ndarray) -> np.ndarray:
    """The pixels of an object's main colour: coloured pixels whose hue is within 25 degrees of
    the strongest hue; for a dull object, every pixel that is not an outline (value > 0.35); for
    a dark silhouette, every pixel. Statistics come from the opaque pixels (alpha >= 128), the
    mask covers every visible one (alpha > 0) so edges are repainted too. bool [H, W]."""
    visible = rgba[..., 3] > 0
    opaque = rgba[..., 3] >= 128
    n_opaque = max(int(opaque.sum()), 1)
    h, s, v = rgb_to_hsv(rgba[..., :3])
    chroma = visible & (s > 0.25) & (v > 0.25)
    if (chroma & opaque).sum() >= 0.25 * n_opaque:
        # Strongest hue: a 36-bin histogram weighted by saturation, smoothed circularly.
        c = chroma & opaque
        hist = np.bincount((h[c] // 10).astype(np.int64) % 36, weights=s[c], minlength=36)
        hist = hist + 0.5 * (np.roll(hist, 1) + np.roll(hist, -1))
        peak = (int(hist.argmax()) + 0.5) * 10.0
        dist = np.abs((h - peak + 180.0) % 360.0 - 180.0)
        part = chroma & (dist < 25.0)
        if (part & opaque).sum() >= 0.25 * n_opaque:
            return part
    return lit_part(rgba)


def lit_part(rgba: np.ndarray) -> np.ndarray:
    """Every visible pixel that is not a dark outline (value > 0.35); for a dark silhouette,
    every visible pixel. The whole-object fallback of main_part. bool [H, W]."""
    visible = rgba[..., 3] > 0
    lit = visible & (rgb_to_hsv(rgba[..., :3])[2] > 0.35)
    # A dark silhouette has almost no lit pixels: repaint all of it.
    return lit if (lit & (rgba[..., 3] >= 128)).sum() >= 0.25 * max(int((rgba[..., 3] >= 128).sum()), 1) else visible


def recolor(rgba: np.ndarray, part: np.ndarray, color: Color, rng: np.random.Generator) -> np.ndarray:
    """Paint the part pixels in `color`, keeping their shading: the value of each pixel relative
    to the part's median value is mapped into the colour's value range, so a lit side stays
    lighter than a shaded one. Other pixels (eyes, beaks, wheels) stay as they are.
    Returns a new uint8 [H, W, 4] array."""
    out = rgba.copy()
    if not part.any():
        return out
    h, s, v = rgb_to_hsv(rgba[..., :3][part])
    vmed = float(np.median(v))
    lo, hi = color.v
    mid = rng.uniform(lo + 0.25 * (hi - lo), hi - 0.25 * (hi - lo))
    # Shading: deviation from the median value, scaled to the colour's value range.
    nv = np.clip(mid + (v - vmed) * (hi - lo) / 0.5, lo, hi)
    if color.neutral:
        nh = np.zeros_like(h)
        ns = np.full_like(s, rng.uniform(*color.s))
    else:
        nh = np.full_like(h, color.hue + rng.uniform(-5, 5))
        smed = float(np.median(s))
        ns = np.clip(rng.uniform(*color.s) + (s - smed) * 0.5, color.s[0], color.s[1])
    out[..., :3][part] = hsv_to_rgb(nh, ns, nv)
    return out


def fit_sprite(rgba: np.ndarray, box: int) -> np.ndarray:
    """Resize a sprite so its longer side is `box` pixels (premultiplied, so no dark fringes)."""
    hgt, wid = rgba.shape[:2]
    scale = box / max(hgt, wid)
    size = (max(1, round(wid * scale)), max(1, round(hgt * scale)))
    im = Image.fromarray(premultiply(rgba), "RGBa").resize(size, Image.Resampling.LANCZOS)
    return np.asarray(im.convert("RGBA"))


def premultiply(rgba: np.ndarray) -> np.ndarray:
    """RGBA -> premultiplied RGBa (resizing premultiplied avoids dark fringes at the edges)."""
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    out = rgba.astype(np.float32)
    out[..., :3] *= a
    return np.round(out).astype(np.uint8)


def paste(canvas: np.ndarray, rgba: np.ndarray, x: int, y: int) -> np.ndarray:
    """Alpha-blend rgba onto the float RGB canvas [H, W, 3] at top-left (x, y), in place.
    Returns the object's alpha [H, W] in [0, 1] over the whole canvas (clipped at the edges)."""
    H, W = canvas.shape[:2]
    h, w = rgba.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    alpha = np.zeros((H, W), dtype=np.float32)
    if x1 <= x0 or y1 <= y0:
        return alpha
    src = rgba[y0 - y : y1 - y, x0 - x : x1 - x].astype(np.float32)
    a = src[..., 3:4] / 255.0
    canvas[y0:y1, x0:x1] = canvas[y0:y1, x0:x1] * (1 - a) + src[..., :3] * a
    alpha[y0:y1, x0:x1] = a[..., 0]
    return alpha


def article(word: str) -> str:
    """'a' or 'an' for the word that follows."""
    return "an" if word[:1].lower() in "aeiou" else "a"


# ---------------------------------------------------------------------------------------------
# Running a recipe: deterministic parallel map, progress line, metadata
# ---------------------------------------------------------------------------------------------


def sample_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    """The random generator of sample `index`: independent of worker count and order."""
    return np.random.default_rng([seed, stream, index])


def parallel_map(fn: Callable[[int], object], n: int, workers: int, label: str) -> Iterator[object]:
    """Yield fn(0), ..., fn(n - 1) in order, computed by `workers` forked processes (fn and
    what it reads are inherited, not pickled), with a progress line on stderr."""
    progress = Progress(label, n)
    if workers <= 1 or n < 64 or "fork" not in mp.get_all_start_methods():
        for i in range(n):
            yield fn(i)
            progress.step()
    else:
        global _FN
        _FN = fn
        with mp.get_context("fork").Pool(workers) as pool:
            for r in pool.imap(_run_global, range(n), chunksize=32):
                yield r
                progress.step()
    progress.close()


_FN: Callable[[int], object] | None = None


def _run_global(i: int):
    assert _FN is not None
    return _FN(i)


class Progress:
    """A one-line progress report on stderr, redrawn at most 4 times a second."""

    def __init__(self, label: str, total: int):
        self.label, self.total, self.done = label, total, 0
        self.t0 = self.last = time.time()

    def step(self, k: int = 1) -> None:
        self.done += k
        now = time.time()
        if now - self.last > 0.25 or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            sys.stderr.write(f"\r{self.label}: {self.done}/{self.total} ({rate:.0f}/s)")
            sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write(f"\r{self.label}: {self.done}/{self.total} in {time.time() - self.t0:.1f}s\n")
        sys.stderr.flush()


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    """Write rows as JSON lines (keys in insertion order); returns the row count."""
    n = 0
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def save_png(arr: np.ndarray, path: Path) -> None:
    """Save a uint8 array as PNG with fixed settings (same array -> same bytes)."""
    Image.fromarray(arr).save(path, format="PNG", optimize=False, compress_level=6)


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 16))
