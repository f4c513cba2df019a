"""Semantic-map set for the map-conditioned prior: simple outdoor scenes with their label maps.

    python recipes/segmaps.py --out data/segmaps --n 20000 [--size 256] [--seed 0]

Each scene is a sky over one or two ground bands (grass, sand, water, snow) with 1-4 things
on it: Noto Color Emoji glyphs (trees, houses, cars, birds, ...) and drawn shapes (circle,
square, triangle, star). Every pixel has a class: the "stuff" classes sky/grass/sand/water/snow
come first (ids 0-4), then the things; an object's pixels are those where its alpha is at least
one half, later objects covering earlier ones, as in the picture.

Writes, under --out:
    images/000000.png ...   RGB scenes, size x size
    images/metadata.jsonl   file_name, text (e.g. "a car and two trees on grass under a blue
                            sky"), objects (class, box, source), stuff (classes present)
    maps/000000.png ...     uint8 class-id maps ("L" mode), the same stems as the images
    classes.json            class names in id order
Encode with `regvq encode OUT/images --maps OUT/maps` (maps are a parallel folder).

Needs the Debian package fonts-noto-color-emoji (SIL Open Font License 1.1) and Pillow.
Placement: sky things (sun, cloud, bird, airplane) sit in the sky; ground things stand on the
ground with their feet below the horizon, larger when nearer (lower); boats only on water;
shapes anywhere. Things further back are drawn first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

import _common as C

STUFF = ["sky", "grass", "sand", "water", "snow"]
# thing class -> (placement, emoji glyphs or None for a drawn shape, size range as a fraction
# of the image side, chance of recolouring the glyph's main colour)
THINGS: dict[str, tuple[str, list[str] | None, tuple[float, float], float]] = {
    "sun": ("sky", ["\u2600"], (0.12, 0.2), 0.0),
    "cloud": ("sky", ["\u2601"], (0.15, 0.3), 0.0),
    "bird": ("sky", ["\U0001F54A", "\U0001F426", "\U0001F985"], (0.08, 0.15), 0.3),
    "airplane": ("sky", ["\u2708"], (0.12, 0.22), 0.3),
    "tree": ("ground", ["\U0001F333", "\U0001F332", "\U0001F334"], (0.22, 0.4), 0.0),
    "house": ("ground", ["\U0001F3E0"], (0.2, 0.35), 0.4),
    "car": ("ground", ["\U0001F697", "\U0001F699", "\U0001F695"], (0.14, 0.24), 0.5),
    "dog": ("ground", ["\U0001F415"], (0.1, 0.18), 0.0),
    "cat": ("ground", ["\U0001F408"], (0.1, 0.16), 0.0),
    "flower": ("ground", ["\U0001F337", "\U0001F33B", "\U0001F33C", "\U0001F339"], (0.07, 0.12), 0.4),
    "person": ("ground", ["\U0001F9CD", "\U0001F6B6"], (0.14, 0.24), 0.0),
    "boat": ("water", ["\u26F5", "\U0001F6A4", "\U0001F6F6"], (0.14, 0.26), 0.3),
    "circle": ("any", None, (0.1, 0.22), 0.0),
    "square": ("any", None, (0.1, 0.2), 0.0),
    "triangle": ("any", None, (0.1, 0.22), 0.0),
    "star": ("any", None, (0.12, 0.24), 0.0),
}
CLASSES: list[str] = STUFF + list(THINGS)
CLASS_ID = {c: i for i, c in enumerate(CLASSES)}
SKIES = {  # name -> (colour at the top, colour at the horizon)
    "blue": ((55, 110, 215), (165, 205, 245)),
    "evening": ((70, 60, 140), (245, 160, 95)),
    "gray": ((120, 128, 140), (200, 204, 210)),
}
GROUNDS = {  # stuff class -> base colour, noise strength
    "grass": ((70, 150, 55), 28.0),
    "sand": ((222, 200, 150), 16.0),
    "water": ((40, 95, 165), 14.0),
    "snow": ((236, 240, 248), 8.0),
}
NUMBER = {1: "a", 2: "two", 3: "three", 4: "four"}


# ---------------------------------------------------------------------------------------------
# Backgrounds
# ---------------------------------------------------------------------------------------------


def smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth noise in about [-1, 1]: a cells x cells random grid upsampled bicubically."""
    g = rng.uniform(-1, 1, size=(cells + 1, cells + 1)).astype(np.float32)
    return np.asarray(Image.fromarray(g, "F").resize((w, h), Image.Resampling.BICUBIC))


def ground_texture(rng: np.random.Generator, kind: str, S: int, top: int) -> np.ndarray:
    """float [S, S, 3] texture of a ground class (only rows below `top` matter)."""
    base, amp = GROUNDS[kind]
    base = (np.array(base, np.float32) + rng.uniform(-12, 12, size=3)).astype(np.float32)
    n = 0.6 * smooth_noise(rng, S, S, 6) + 0.4 * smooth_noise(rng, S, S, max(S // 8, 8))
    tex = base + amp * n[..., None]
    y = np.arange(S, dtype=np.float32)[:, None, None]
    depth = np.clip((y - top) / max(S - top, 1), 0, 1)  # 0 at the horizon, 1 at the bottom
    if kind == "water":
        # Horizontal ripples, denser near the horizon; lighter far away.
        phase = 2 * np.pi * (y[..., 0] * (0.12 + 0.3 * (1 - depth[..., 0]))) + 2.0 * smooth_noise(rng, S, S, 4)
        tex = tex + 10.0 * np.sin(phase)[..., None] + 30.0 * (1 - depth)
    elif kind == "grass":
        tex = tex * (0.85 + 0.3 * (1 - depth))
    else:
        tex = tex * (0.92 + 0.1 * (1 - depth))
    return tex


def scene_background(rng: np.random.Generator, S: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Sky over one or two ground bands. Returns (float RGB [S, S, 3], uint8 labels [S, S],
    facts: sky name, ground classes front to back, horizon row per column)."""
    sky = list(SKIES)[rng.integers(len(SKIES))]
    top_c, hor_c = (np.array(c, np.float32) for c in SKIES[sky])
    horizon = rng.uniform(0.35, 0.65) * S
    grounds = list(GROUNDS)
    far = grounds[rng.integers(len(grounds))]
    x = np.arange(S, dtype=np.float32)
    if far == "water":
        hline = np.full(S, horizon, np.float32)  # water lies flat
    else:  # gentle hills
        hline = horizon + rng.uniform(0, 0.05) * S * np.sin(2 * np.pi * x / S * rng.uniform(0.5, 2) + rng.uniform(0, 6.3))
    hline = np.round(hline).astype(np.int64)
    y = np.arange(S)[:, None]
    t = np.clip(y.astype(np.float32) / np.maximum(hline[None, :], 1).astype(np.float32), 0, 1)[..., None]
    img = top_c * (1 - t) + hor_c * t + 4.0 * smooth_noise(rng, S, S, 5)[..., None]
    labels = np.full((S, S), CLASS_ID["sky"], np.uint8)

    ground = y >= hline[None, :]
    img = np.where(ground[..., None], ground_texture(rng, far, S, int(hline.min())), img)
    labels[ground] = CLASS_ID[far]
    bands = [far]
    if rng.random() < 0.35:  # a nearer band of another ground, e.g. a beach in front of water
        near = [g for g in grounds if g != far][rng.integers(len(grounds) - 1)]
        y2 = int(hline.max() + rng.uniform(0.35, 0.7) * (S - hline.max()))
        line2 = np.round(y2 + rng.uniform(0, 0.03) * S * np.sin(2 * np.pi * x / S * rng.uniform(0.5, 2))).astype(np.int64)
        front = y >= line2[None, :]
        img = np.where(front[..., None], ground_texture(rng, near, S, int(line2.min())), img)
        labels[front] = CLASS_ID[near]
        bands.append(near)
    return img, labels, {"sky": sky, "grounds": bands, "hline": hline}


# ---------------------------------------------------------------------------------------------
# Things
# ---------------------------------------------------------------------------------------------


def draw_shape(rng: np.random.Generator, kind: str, box: int) -> np.ndarray:
    """A flat-coloured shape as RGBA uint8 [box, box, 4], antialiased by 4x supersampling."""
    k = 4
    n = box * k
    m = Image.new("L", (n, n), 0)
    d = ImageDraw.Draw(m)
    c = n / 2
    r = n / 2 - k
    if kind == "circle":
        d.ellipse([c - r, c - r, c + r, c + r], fill=255)
    else:
        if kind == "square":
            angles, radii = np.arange(4) * 90 + 45, np.full(4, r)
            rot = rng.uniform(-30, 30)
        elif kind == "triangle":
            angles, radii = np.arange(3) * 120 - 90, np.full(3, r)
            rot = rng.uniform(-15, 15)
        else:  # star: 5 outer points, 5 inner
            angles = np.arange(10) * 36 - 90
            radii = np.where(np.arange(10) % 2 == 0, r, r * 0.42)
            rot = rng.uniform(-36, 36)
        a = np.deg2rad(angles + rot)
        pts = [(float(c + q * np.cos(t)), float(c + q * np.sin(t))) for q, t in zip(radii, a)]
        d.polygon(pts, fill=255)
    alpha = np.asarray(m.resize((box, box), Image.Resampling.BOX))
    name = C.COLOR_NAMES[rng.integers(len(C.COLOR_NAMES))]
    rgb = np.array(C.COLORS[name].rgb(rng), np.uint8)
    out = np.zeros((box, box, 4), np.uint8)
    out[..., :3] = rgb
    out[..., 3] = alpha
    # Crop to the visible pixels so boxes are tight.
    ys, xs = np.nonzero(alpha)
    return out[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


class Scenes:
    """Makes scene i (picture, label map, metadata row)."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed = size, seed
        import emoji  # the font path and glyph rendering live there

        path = emoji.font_path()
        if path is None:
            raise SystemExit("fonts-noto-color-emoji is not installed: apt-get install -y fonts-noto-color-emoji")
        font = ImageFont.truetype(path, emoji.BITMAP_SIZE)
        self.glyphs = {ch: emoji.render_glyph(font, ch) for _, g, _, _ in THINGS.values() if g for ch in g}
        self.things = list(THINGS)

    def __call__(self, i: int) -> tuple[np.ndarray, np.ndarray, dict]:
        rng = C.sample_rng(self.seed, i)
        S = self.size
        img, labels, bg = scene_background(rng, S)
        hline = bg["hline"]
        solid = [CLASS_ID[g] for g in ("grass", "sand", "snow")]

        # Choose the things and where they go.
        placed = []
        for _ in range(int(rng.integers(1, 5))):
            for _attempt in range(10):
                cls = self.things[rng.integers(len(self.things))]
                where, glyphs, (lo, hi), p_recolor = THINGS[cls]
                size = rng.uniform(lo, hi) * S
                cx = rng.uniform(0.1, 0.9) * S
                col = labels[:, min(int(cx), S - 1)]
                top = int(hline[min(int(cx), S - 1)])
                if where == "sky":
                    if top < size + 4:
                        continue
                    bottom = rng.uniform(size + 2, top - 2)
                elif where in ("ground", "water"):
                    # Feet on land (boats on water), a little below the horizon.
                    ok = np.isin(col, solid) if where == "ground" else col == CLASS_ID["water"]
                    rows = np.nonzero(ok & (np.arange(S) >= top + 0.04 * S))[0]
                    if len(rows) == 0:
                        continue
                    bottom = float(rows[rng.integers(len(rows))]) + 1
                    size *= 0.6 + 0.8 * (bottom - top) / max(S - top, 1)  # nearer is larger
                else:
                    bottom = rng.uniform(size, S)
                box = (cx - size / 2, bottom - size, cx + size / 2, bottom)
                if all(_overlap(box, p["box"]) < 0.3 for p in placed):
                    placed.append({"class": cls, "box": box, "bottom": bottom, "size": size,
                                   "where": where, "glyphs": glyphs, "p_recolor": p_recolor})
                    break
        # Sky things first (far away), then ground/water things back to front, shapes last.
        order = {"sky": 0, "ground": 1, "water": 1, "any": 2}
        placed.sort(key=lambda p: (order[p["where"]], p["bottom"]))

        objects = []
        for p in placed:
            box = max(int(round(p["size"])), 4)
            if p["glyphs"] is None:
                rgba = draw_shape(rng, p["class"], box)
                source = "shape"
            else:
                ch = p["glyphs"][rng.integers(len(p["glyphs"]))]
                rgba = C.fit_sprite(self.glyphs[ch], box)
                if rng.random() < 0.5:
                    rgba = np.ascontiguousarray(rgba[:, ::-1])
                if rng.random() < p["p_recolor"]:
                    color = C.COLORS[C.COLOR_NAMES[rng.integers(len(C.COLOR_NAMES))]]
                    rgba = C.recolor(rgba, C.main_part(rgba), color, rng)
                source = f"emoji:U+{ord(ch):04X}"
            h, w = rgba.shape[:2]
            x = int(round((p["box"][0] + p["box"][2]) / 2 - w / 2))
            y = int(round(p["bottom"] - h))
            alpha = C.paste(img, rgba, x, y)
            labels[alpha >= 0.5] = CLASS_ID[p["class"]]
            objects.append({"class": p["class"], "box": [max(x, 0), max(y, 0), min(x + w, S), min(y + h, S)],
                            "source": source})
        out = np.clip(np.round(img), 0, 255).astype(np.uint8)
        stuff = [c for c in STUFF if (labels == CLASS_ID[c]).any()]
        row = {"text": caption(objects, bg), "objects": objects, "stuff": stuff}
        return out, labels, row


def _overlap(a, b) -> float:
    """Intersection over the smaller box's area."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / max(small, 1e-9)


def caption(objects: list[dict], bg: dict) -> str:
    """E.g. "a car and two trees on grass under a blue sky" (grounds far to near)."""
    counts: dict[str, int] = {}
    for o in objects:
        counts[o["class"]] = counts.get(o["class"], 0) + 1
    words = [f"{NUMBER[n]} {c}" + ("s" if n > 1 else "") if n > 1 else f"{C.article(c)} {c}" for c, n in counts.items()]
    things = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    sky = {"blue": "a blue sky", "evening": "an evening sky", "gray": "a gray sky"}[bg["sky"]]
    return f"{things} on {' and '.join(bg['grounds'])} under {sky}"


def build(out: Path, n: int, size: int = 256, seed: int = 0, workers: int | None = None) -> int:
    """Write the set to `out` (see the module docstring); returns the number of scenes."""
    scenes = Scenes(size, seed)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "maps").mkdir(exist_ok=True)

    def work(i: int) -> dict:
        img, labels, row = scenes(i)
        name = f"{i:06d}.png"
        C.save_png(img, out / "images" / name)
        C.save_png(labels, out / "maps" / name)
        return {"file_name": name, **row}

    workers = C.default_workers() if workers is None else workers
    count = C.write_jsonl(out / "images" / "metadata.jsonl", C.parallel_map(work, n, workers, "segmaps"))
    with open(out / "classes.json", "w", encoding="utf-8") as f:
        json.dump(CLASSES, f, indent=1)
    return count


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="segmaps.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--n", type=int, default=20000, help="number of scenes (default 20000)")
    ap.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    a = ap.parse_args(argv)
    n = build(a.out, a.n, a.size, a.seed, a.workers)
    print(f"wrote {n} scenes to {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
