"""The captioned set for the text-to-image prior: recoloured emoji and clip-art objects on
coloured backgrounds, with captions whose colour words are measured from the pixels.

    python recipes/text2img.py --out data/t2i --n 20000 [--size 128] [--seed 0]
        [--sources emoji,clipart] [--clipart-frac 0.3] [--two-frac 0.2] [--masks]

Writes, under --out:
    images/000000.png ...   RGB pictures, size x size
    images/metadata.jsonl   one row per image: file_name (relative to images/), text, and the
                            structured facts (objects with word, colour, position, box, source;
                            background). `regvq encode OUT/images` picks the captions up.
    masks/000000.png ...    (with --masks) object ids: 0 background, 1 first object, 2 second
    objects.json            the vocabulary: object words, colour words, positions, glyph names

How a sample is made (all choices from a generator seeded by (seed, index), so the same seed gives
the same bytes whatever the worker count):
  1. a background colour (flat, or a gentle vertical gradient inside that colour's range);
  2. one object (or two, side by side or stacked, with probability --two-frac): a word is drawn
     uniformly from the vocabulary (FOCUS words more often), then a picture of it;
  3. with probability 0.85 the object's main colour part is repainted in a colour different
     from the background (recolor() in _common.py; the whole object when its main part is too
     small to carry the name), else it keeps its own colours;
  4. the object is scaled and placed at one of nine positions;
  5. the caption names the object's colour only if that colour covers the largest share (and at
     least 45%) of the object's solid pixels in the finished image, and the background colour
     only if it covers at least 60% of the background pixels. Otherwise the word is left out.
Caption forms, each drawn with a fixed probability: "a red bird", "a red bird on a yellow
background", "a red bird at the left", "a red bird at the top left on a yellow background";
for two objects "a red bird and a blue car", "a red bird at the left and a blue car at the right".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import _common as C

# Words drawn FOCUS_WEIGHT times as often as the others, so prompts like "a red bird" and
# "a blue car" see many colours.
FOCUS = ("bird", "car")
FOCUS_WEIGHT = 5.0
RECOLOR_P = 0.85
# A colour word is used when that colour covers the largest share, and at least MIN_SHARE, of
# the object's solid pixels in the finished picture.
MIN_SHARE = 0.45
# Background colours and their weights: light and mid tones most often, as in clip art.
BACKGROUNDS = {
    "white": 3.0, "black": 1.0, "gray": 1.5, "red": 1.0, "orange": 1.0, "yellow": 1.5, "green": 1.5,
    "cyan": 1.0, "blue": 1.5, "purple": 1.0, "pink": 1.0, "brown": 1.0,
}
# Position word -> centre (x, y) as fractions of the image side.
POSITIONS = {
    "in the center": (0.5, 0.5),
    "at the left": (0.27, 0.5), "at the right": (0.73, 0.5),
    "at the top": (0.5, 0.27), "at the bottom": (0.5, 0.73),
    "at the top left": (0.27, 0.27), "at the top right": (0.73, 0.27),
    "at the bottom left": (0.27, 0.73), "at the bottom right": (0.73, 0.73),
}


def load_sources(sources: list[str]) -> dict[str, list[C.Sprite]]:
    """Sprites of each requested source ('emoji', 'clipart')."""
    out = {}
    for s in sources:
        if s == "emoji":
            import emoji

            out[s] = emoji.load_sprites()
        elif s == "clipart":
            import clipart

            out[s] = clipart.load_sprites()
        else:
            raise SystemExit(f"unknown source {s!r}: use emoji and/or clipart")
    return out


class Builder:
    """Makes sample i of the set (picture, mask, metadata row) from the loaded sprites."""

    def __init__(self, sprites: dict[str, list[C.Sprite]], size: int, seed: int,
                 clipart_frac: float = 0.3, two_frac: float = 0.2):
        self.size, self.seed = size, seed
        self.clipart_frac, self.two_frac = clipart_frac, two_frac
        # kind -> source -> sprites; kinds sorted so draws do not depend on load order.
        self.by_kind: dict[str, dict[str, list[C.Sprite]]] = {}
        for src, lst in sprites.items():
            for sp in lst:
                self.by_kind.setdefault(sp.kind, {}).setdefault(src, []).append(sp)
        self.kinds = sorted(self.by_kind)
        w = np.array([FOCUS_WEIGHT if k in FOCUS else 1.0 for k in self.kinds])
        self.kind_p = w / w.sum()
        self.bg_names = list(BACKGROUNDS)
        bw = np.array([BACKGROUNDS[b] for b in self.bg_names])
        self.bg_p = bw / bw.sum()

    # -- pieces ---------------------------------------------------------------------------------

    def pick_sprite(self, rng: np.random.Generator) -> C.Sprite:
        kind = self.kinds[rng.choice(len(self.kinds), p=self.kind_p)]
        srcs = self.by_kind[kind]
        if "clipart" in srcs and "emoji" in srcs:
            src = "clipart" if rng.random() < self.clipart_frac else "emoji"
        else:
            src = sorted(srcs)[0]
        lst = srcs[src]
        return lst[rng.integers(len(lst))]

    def background(self, rng: np.random.Generator) -> tuple[str, np.ndarray]:
        name = self.bg_names[rng.choice(len(self.bg_names), p=self.bg_p)]
        c = C.COLORS[name]
        a, b = np.array(c.rgb(rng), np.float32), np.array(c.rgb(rng), np.float32)
        if rng.random() < 0.5:
            b = a  # flat
        t = np.linspace(0.0, 1.0, self.size, dtype=np.float32)[:, None, None]
        canvas = np.broadcast_to(a * (1 - t) + b * t, (self.size, self.size, 3)).copy()
        return name, canvas

    def object_color(self, rng: np.random.Generator, bg: str, taken: list[str]) -> str:
        """A colour unlike the background (and unlike the other object)."""
        bad = {bg, *taken}
        near = {"red": "pink", "pink": "red", "orange": "yellow", "yellow": "orange", "brown": "orange"}
        if bg in near:
            bad.add(near[bg])
        options = [c for c in C.COLOR_NAMES if c not in bad]
        return options[rng.integers(len(options))]

    # -- one sample -----------------------------------------------------------------------------

    def __call__(self, i: int) -> tuple[np.ndarray, np.ndarray, dict]:
        rng = C.sample_rng(self.seed, i)
        S = self.size
        bg, canvas = self.background(rng)
        two = rng.random() < self.two_frac
        if two:
            pos = [("at the left", "at the right"), ("at the top", "at the bottom")][rng.integers(2)]
            boxes = [rng.uniform(0.38, 0.48) * S for _ in pos]
        else:
            pos = (list(POSITIONS)[rng.integers(len(POSITIONS))],)
            boxes = [rng.uniform(0.55, 0.8) * S if pos[0] == "in the center" else rng.uniform(0.4, 0.52) * S]
        mask = np.zeros((S, S), np.uint8)
        objects, taken = [], []
        for k, (p, box) in enumerate(zip(pos, boxes)):
            sp = self.pick_sprite(rng)
            rgba = C.fit_sprite(sp.rgba, int(round(box)))
            if rng.random() < 0.5:
                rgba = np.ascontiguousarray(rgba[:, ::-1])
            target = None
            if rng.random() < RECOLOR_P:
                target = self.object_color(rng, bg, taken)
                painted = C.recolor(rgba, C.main_part(rgba), C.COLORS[target], rng)
                solid = painted[..., 3] >= 230
                if C.color_shares(painted, solid)[C.COLOR_NAMES.index(target)] < MIN_SHARE + 0.1:
                    # The main colour part is too small to name the object by it (a bicycle's
                    # frame): paint the whole object instead.
                    painted = C.recolor(rgba, C.lit_part(rgba), C.COLORS[target], rng)
                rgba = painted
            cx, cy = POSITIONS[p]
            jx, jy = rng.uniform(-0.04, 0.04, size=2) * S
            h, w = rgba.shape[:2]
            x, y = int(round(cx * S + jx - w / 2)), int(round(cy * S + jy - h / 2))
            alpha = C.paste(canvas, rgba, x, y)
            mask[alpha >= 0.5] = k + 1
            objects.append({"alpha": alpha, "sprite": sp, "target": target, "position": p,
                            "box": [max(x, 0), max(y, 0), min(x + w, S), min(y + h, S)]})
            if target:
                taken.append(target)
        img = np.clip(np.round(canvas), 0, 255).astype(np.uint8)

        # Measure what is true of the finished picture.
        facts = []
        for k, o in enumerate(objects):
            solid = (o["alpha"] >= 0.9) & (mask == k + 1)
            shares = C.color_shares(img, solid)
            top = int(shares.argmax())
            color = C.COLOR_NAMES[top] if shares[top] >= MIN_SHARE else None
            sp = o["sprite"]
            word = sp.name if (sp.name == sp.kind or rng.random() < 0.5) else sp.kind
            facts.append({"word": word, "name": sp.name, "kind": sp.kind, "color": color,
                          "recolored_to": o["target"], "position": o["position"], "box": o["box"],
                          "source": sp.source})
        bg_pixels = np.all([o["alpha"] < 0.05 for o in objects], axis=0)
        # Every 4th background pixel is plenty to measure a flat or smooth background.
        bg_color = C.dominant_color(img[::2, ::2], bg_pixels[::2, ::2], min_share=0.6)
        text = self.caption(rng, facts, bg_color, two)
        row = {"text": text, "objects": facts, "background": bg_color}
        return img, mask, row

    @staticmethod
    def caption(rng: np.random.Generator, facts: list[dict], bg: str | None, two: bool) -> str:
        def noun(f):
            words = f"{f['color']} {f['word']}" if f["color"] else f["word"]
            return f"{C.article(words)} {words}"

        with_pos = rng.random() < 0.4
        with_bg = bg is not None and rng.random() < 0.5
        if two:
            parts = [f"{noun(f)} {f['position']}" if with_pos else noun(f) for f in facts]
            text = " and ".join(parts)
        else:
            f = facts[0]
            text = f"{noun(f)} {f['position']}" if with_pos else noun(f)
        if with_bg:
            text += f" on {C.article(bg)} {bg} background"
        return text


def vocabulary(sprites: dict[str, list[C.Sprite]]) -> dict:
    """What objects.json records: words per source, colours, positions, glyph names."""
    vocab = {"colors": C.COLOR_NAMES, "positions": list(POSITIONS), "focus": list(FOCUS), "objects": {}}
    for src, lst in sprites.items():
        for sp in lst:
            e = vocab["objects"].setdefault(sp.kind, {"words": [], "sources": []})
            if sp.name not in e["words"]:
                e["words"].append(sp.name)
            e["sources"].append(sp.source)
    if "emoji" in sprites:
        import emoji

        vocab["glyph_names"] = emoji.glyph_names()
    vocab["objects"] = dict(sorted(vocab["objects"].items()))
    return vocab


def build(out: Path, n: int, size: int = 128, seed: int = 0, sources: tuple[str, ...] = ("emoji", "clipart"),
          clipart_frac: float = 0.3, two_frac: float = 0.2, masks: bool = False,
          workers: int | None = None, label: str = "text2img") -> int:
    """Write the set to `out` (see the module docstring); returns the number of images."""
    sprites = load_sources(list(sources))
    builder = Builder(sprites, size, seed, clipart_frac, two_frac)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    if masks:
        (out / "masks").mkdir(exist_ok=True)

    def work(i: int) -> dict:
        img, mask, row = builder(i)
        name = f"{i:06d}.png"
        C.save_png(img, out / "images" / name)
        if masks:
            C.save_png(mask, out / "masks" / name)
        return {"file_name": name, **row}

    workers = C.default_workers() if workers is None else workers
    rows = C.parallel_map(work, n, workers, label)
    count = C.write_jsonl(out / "images" / "metadata.jsonl", rows)
    with open(out / "objects.json", "w", encoding="utf-8") as f:
        json.dump(vocabulary(sprites), f, indent=1, ensure_ascii=False)
    return count


def main(default_sources: str = "emoji,clipart", prog: str = "text2img.py", argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--n", type=int, default=20000, help="number of images (default 20000)")
    ap.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sources", default=default_sources, help=f"comma list of emoji, clipart (default {default_sources})")
    ap.add_argument("--clipart-frac", type=float, default=0.3,
                    help="for words that have both, how often the picture is clip art (default 0.3)")
    ap.add_argument("--two-frac", type=float, default=0.2, help="share of two-object pictures (default 0.2)")
    ap.add_argument("--masks", action="store_true", help="also write masks/ with object ids")
    ap.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    a = ap.parse_args(argv)
    sources = tuple(s for s in a.sources.split(",") if s)
    n = build(a.out, a.n, a.size, a.seed, sources, a.clipart_frac, a.two_frac, a.masks, a.workers,
              label=prog.removesuffix(".py"))
    print(f"wrote {n} images to {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
