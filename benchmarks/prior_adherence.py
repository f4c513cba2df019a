"""How well a prior obeys its condition, measured with the dataset recipes' own code (for model cards).

    python benchmarks/prior_adherence.py text --model PRIOR [--tokenizer TOK] [-n 4] [--prompts 48] [--seed 0]
        [--cfg 1.5] [--save DIR] [--json]
    python benchmarks/prior_adherence.py segmap --model PRIOR [--tokenizer TOK] [-n 2] [--scenes 16] [--seed 0]
        [--scene-seed 12345] [--refs-per-class 8] [--save DIR] [--json]
    python benchmarks/prior_adherence.py tokenizer [--tokenizer TOK] [--ceiling-pictures 64] [--save DIR] [--json]

The tokenizer mode is the text ceilings alone: how much of the caption recipe's pictures survives an encode and
decode, the acceptance test of a tokenizer meant for the text prior.

Images are sampled exactly as `regvq sample` does (same token batches, generator seeded with --seed, --cfg,
--temperature, --top-k, --top-p; by default temperature 1 and no truncation, as `regvq sample`), decoded with the
tokenizer and measured on the CPU.

text protocol. A fixed prompt set, the same for every run and model, from the vocabulary of recipes/text2img.py:
objects OBJECTS (those the recipe has), the recipe's 12 colour words. Two thirds of the prompts are
"a {c} {obj} on a {bg} background", one third "a {c} {obj} at the {left|right|top|bottom}". The object colour c
cycles through the 12 words; the object and the background (never c, nor a near colour the recipe never puts on it,
e.g. no pink on red) are drawn by a generator with the fixed seed PROMPT_SEED, the positions are a shuffled
balanced list. Per image:
  background   the pixels of a border ring (1/16 of the side wide); named by the recipe's classifier
               (recipes/_common.py classify_colors) with the recipe's own caption rule: the most common colour,
               if it covers >= 60% of them (else no name, counted as a miss).
  object       pixels whose RGB is more than FG_DIST from the border's median colour, eroded by 1/128 of the side
               to drop blurred edges; named like the recipe names an object: the most common colour, if it covers
               >= MIN_SHARE (45%) of them. Fewer than MIN_FG of the pixels: no object (a miss).
  position     the object pixels' centroid lies in the named half (and, stricter, the named third).
  object kind  which of OBJECTS a small CNN, trained here on --kind-train recipe pictures of those objects
               (recoloured, on varied backgrounds: it goes by shape), names; reported with its accuracy on
               held-out recipe pictures and on the same pictures after the tokenizer, the ceilings to read it by,
               per object ("by_object", with what it named instead) and, after the tokenizer, at the prompts'
               mix of objects (the held-out pictures have the recipe's, birds and cars five times as common).
               Its training weighs the objects equally (the recipe has birds and cars five times as often) and
               blurs the pictures (a tokenizer loses fine detail); fish are its weakest object after the
               tokenizer.
               It is trained on --device; --kind-cache FILE keeps it, so that priors compared with one another
               are scored by the same classifier (trained again, even with the same seed, it differs a little
               between machines and devices).
Rates are over images: background (background prompts), object colour (all prompts), position (position
prompts). Chance: 1/12 for a colour, 1/2 for a half, 1/3 for a third; "chance_marginal" is the agreement expected
if the measured colours were independent of the prompts (sum over colours of measured share x prompted share).
Ceilings: "ceiling_recipe" applies the same measurement to --ceiling-pictures one-object pictures of
recipes/text2img.py (seed RECIPE_SEED, resized to the sampled size) against the facts the recipe recorded for them;
"ceiling_tokenizer" to the same pictures after a round trip through the tokenizer (encode, decode): about what a
prior that reproduced the training pictures' tokens exactly would score.

segmap protocol. Fresh scenes from recipes/segmaps.py at --scene-seed (the shipped prior was trained on seed 0),
at the tokenizer's image size; -n images are sampled from each of the first --scenes maps. Only pixels whose map
label is a stuff class (sky, grass, sand, water, snow) are scored. Reference colours come from the real pictures of
the next --ref-scenes scenes (held out, not scored): per stuff class, --refs-per-class k-means centres of its pixels
(one mean colour per class cannot tell a blue sky from water, nor a gray sky from snow: with it even the real
pictures score a mIoU of about 0.6). Every scored pixel is given the class of the nearest reference colour; IoU
per class is pooled over all images (intersection and union summed), mIoU is the mean over the classes present in
the maps. The same is reported for the real pictures (ceiling_real: what the colour rule reaches), the real
pictures after a tokenizer round trip (ceiling_tokenizer), and shuffled pairs, scene i's map against scene i+1's
pictures, real and generated (chance floors).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "recipes"))
import _common as C  # noqa: E402
import segmaps  # noqa: E402
import text2img  # noqa: E402

OBJECTS = ["bird", "car", "apple", "flower", "fish", "house"]
POSITIONS = ["at the left", "at the right", "at the top", "at the bottom"]
# Colours the recipe never paints on a background of this colour (text2img.Builder.object_color).
NEAR = {"red": "pink", "pink": "red", "orange": "yellow", "yellow": "orange", "brown": "orange"}
PROMPT_SEED = 0
RECIPE_SEED = 12345  # the recipe pictures of the text ceilings (the shipped prior was trained on seed 0)
BG_SHARE = 0.6  # text2img names the background when its colour covers >= 60% of the background pixels
FG_DIST = 60.0  # RGB distance from the border's median colour that makes a pixel part of the object
MIN_FG = 0.005  # fewer object pixels than this share of the image: no object found


# ---------------------------------------------------------------------------------------------
# text: prompts and measurement
# ---------------------------------------------------------------------------------------------


def recipe_objects() -> set[str]:
    """The broader object words of the text2img recipe (emoji and clip art)."""
    import clipart
    import emoji

    return {o[2] for o in emoji.OBJECTS} | {o[2] for o in clipart.CLIPART}


def text_prompts(n: int = 48) -> list[dict]:
    """The fixed prompt set: dicts with prompt, object, color, background (or None), position (or None)."""
    objects = [o for o in OBJECTS if o in recipe_objects()]
    colors = C.COLOR_NAMES
    rng = np.random.default_rng(PROMPT_SEED)
    n_bg = round(n * 2 / 3)
    positions = rng.permutation(np.resize(np.arange(len(POSITIONS)), n - n_bg))  # each about as often
    out = []
    for i in range(n):
        c = colors[i % len(colors)]
        obj = objects[rng.integers(len(objects))]
        noun = f"{C.article(c)} {c} {obj}"
        if i < n_bg:
            options = [b for b in colors if b != c and NEAR.get(b) != c]
            bg = options[rng.integers(len(options))]
            out.append({"prompt": f"{noun} on {C.article(bg)} {bg} background", "object": obj, "color": c,
                        "background": bg, "position": None})
        else:
            pos = POSITIONS[positions[i - n_bg]]
            out.append({"prompt": f"{noun} {pos}", "object": obj, "color": c, "background": None, "position": pos})
    return out


@functools.cache
def recipe_sprites() -> dict:
    """The caption recipe's emoji and clip-art sprites, loaded once (the text mode draws three picture sets)."""
    return text2img.load_sources(["emoji", "clipart"])


def recipe_pictures(count: int = 64, size: int = 256, seed: int = RECIPE_SEED) -> tuple[np.ndarray, list[dict]]:
    """One-object pictures of recipes/text2img.py at `seed`, resized to `size`, and the facts the recipe recorded."""
    from PIL import Image

    builder = text2img.Builder(recipe_sprites(), 128, seed, two_frac=0.0)
    rows = [builder(i) for i in range(count)]
    images = [np.asarray(Image.fromarray(r[0]).resize((size, size), Image.Resampling.BICUBIC)) for r in rows]
    return np.stack(images), [r[2] for r in rows]


def score_recipe(images: np.ndarray, facts: list[dict]) -> dict:
    """How often the measurement agrees with the recipe's recorded facts (background, object colour, position)."""
    bg, obj, half, third = [], [], [], []
    for img, row in zip(images, facts):
        m = measure_text(img)
        fact = row["objects"][0]
        if row["background"]:
            bg.append(m["background"] == row["background"])
        if fact["color"]:
            obj.append(m["object"] == fact["color"])
        if fact["position"] in POSITIONS:
            half.append(position_ok(fact["position"], m["centroid"], 2))
            third.append(position_ok(fact["position"], m["centroid"], 3))
    return {"background": _rate(bg), "object_color": _rate(obj), "position_half": _rate(half),
            "position_third": _rate(third), "pictures": len(facts)}


def _erode(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary erosion with a (2r+1)^2 square (outside the image, the edge pixels repeat)."""
    out = mask.copy()
    for _ in range(r):
        p = np.pad(out, 1, mode="edge")
        out = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
        out &= p[:-2, :-2] & p[:-2, 2:] & p[2:, :-2] & p[2:, 2:]
    return out


def measure_text(img: np.ndarray) -> dict:
    """uint8 [H, W, 3] -> background colour, object colour (names or None), object centroid (x, y as fractions of
    the side, or None) and the object's share of the image."""
    H, W = img.shape[:2]
    w = max(1, min(H, W) // 16)
    border = np.ones((H, W), bool)
    border[w:-w, w:-w] = False
    background = C.dominant_color(img, border, min_share=BG_SHARE)
    ref = np.median(img[border].astype(np.float32), axis=0)
    fg = np.linalg.norm(img.astype(np.float32) - ref, axis=-1) > FG_DIST
    fg = _erode(fg, max(1, min(H, W) // 128))
    share = float(fg.mean())
    if share < MIN_FG:
        return {"background": background, "object": None, "centroid": None, "fg_share": share}
    ys, xs = np.nonzero(fg)
    return {"background": background, "object": C.dominant_color(img, fg, min_share=text2img.MIN_SHARE),
            "centroid": [float(xs.mean() + 0.5) / W, float(ys.mean() + 0.5) / H], "fg_share": share}


def position_ok(position: str, centroid, parts: int = 2) -> bool:
    """Whether the centroid lies in the named half (parts=2) or outer third (parts=3) of the image."""
    if centroid is None:
        return False
    x, y = centroid
    lo, hi = 1 / parts, 1 - 1 / parts
    return {"at the left": x < lo, "at the right": x > hi, "at the top": y < lo, "at the bottom": y > hi}[position]


def marginal_chance(measured: list, prompted: list[str]) -> float:
    """Agreement expected if measured colours were independent of the prompted ones."""
    if not prompted:
        return None
    words = sorted(set(prompted))
    return float(sum((np.mean([m == k for m in measured])) * np.mean([p == k for p in prompted]) for k in words))


def _rate(flags) -> float | None:
    return float(np.mean(flags)) if len(flags) else None


def score_text(prompts: list[dict], images: np.ndarray, n: int) -> dict:
    """Rates over images; image j belongs to prompt j // n."""
    rows = []
    for j, img in enumerate(images):
        p = prompts[j // n]
        m = measure_text(img)
        rows.append({**p, "measured": m, "color_ok": m["object"] == p["color"],
                     "background_ok": None if p["background"] is None else m["background"] == p["background"],
                     "half_ok": None if p["position"] is None else position_ok(p["position"], m["centroid"], 2),
                     "third_ok": None if p["position"] is None else position_ok(p["position"], m["centroid"], 3)})
    bg = [r for r in rows if r["background"] is not None]
    pos = [r for r in rows if r["position"] is not None]
    k = len(C.COLOR_NAMES)
    return {
        "rates": {"background": _rate([r["background_ok"] for r in bg]),
                  "object_color": _rate([r["color_ok"] for r in rows]),
                  "object_color_bg_prompts": _rate([r["color_ok"] for r in bg]),
                  "object_color_position_prompts": _rate([r["color_ok"] for r in pos]),
                  "position_half": _rate([r["half_ok"] for r in pos]),
                  "position_third": _rate([r["third_ok"] for r in pos]),
                  "no_object_found": _rate([r["measured"]["centroid"] is None for r in rows])},
        "chance": {"background": 1 / k, "object_color": 1 / k, "position_half": 0.5, "position_third": 1 / 3},
        "chance_marginal": {
            "background": marginal_chance([r["measured"]["background"] for r in bg], [r["background"] for r in bg]),
            "object_color": marginal_chance([r["measured"]["object"] for r in rows], [r["color"] for r in rows])},
        "counts": {"images": len(rows), "background_images": len(bg), "position_images": len(pos)},
        "per_image": rows,
    }


# ---------------------------------------------------------------------------------------------
# text: which object (a small CNN trained here on recipe pictures of the prompt objects)
# ---------------------------------------------------------------------------------------------

KIND_SIZE = 64  # the object classifier's input size
KIND_SEED = 777  # its training pictures (held-out ones: KIND_SEED + 1)


def kind_pictures(count: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """One-object recipe pictures whose object is one of OBJECTS, at KIND_SIZE: uint8 [count, S, S, 3], kinds."""
    from PIL import Image

    only = {src: [sp for sp in lst if sp.kind in OBJECTS] for src, lst in recipe_sprites().items()}
    builder = text2img.Builder(only, 128, seed, two_frac=0.0)
    rows = [builder(i) for i in range(count)]
    images = [np.asarray(Image.fromarray(r[0]).resize((KIND_SIZE, KIND_SIZE), Image.Resampling.BICUBIC)) for r in rows]
    return np.stack(images), [r[2]["objects"][0]["kind"] for r in rows]


def _kind_batch(images: np.ndarray):
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return torch.nn.functional.interpolate(x, size=KIND_SIZE, mode="bilinear", antialias=True, align_corners=False)


def _blur(x, sigma):
    """Each picture of x [B, 3, S, S] blurred by a Gaussian of its own sigma [B] (pixels; 0 leaves it as is)."""
    import torch
    import torch.nn.functional as F

    taps = torch.arange(-2, 3, dtype=x.dtype, device=x.device)
    k = torch.exp(-taps[None] ** 2 / (2 * sigma[:, None].clamp(min=1e-3) ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(x.shape[1], 0)  # [B * 3, 5]: one kernel per channel
    B, C, H, W = x.shape
    y = F.pad(x.reshape(1, B * C, H, W), (2, 2, 2, 2), mode="replicate")
    y = F.conv2d(F.conv2d(y, k[:, None, None, :], groups=B * C), k[:, None, :, None], groups=B * C)
    return y.reshape(B, C, H, W)


class KindClassifier:
    """Names the object of a picture among OBJECTS: a 4-layer CNN trained on recipe pictures (recoloured sprites
    on varied backgrounds, so it has to go by shape). Not a metric of record: read its rate against its own
    accuracy on held-out recipe pictures and on the same pictures after the tokenizer.

    The recipe draws birds and cars five times as often as the other objects; the loss weighs each object by the
    inverse of its count, so that the rarer ones are learnt as well (without it, fish and flowers were mostly
    called birds). Each training picture is blurred by a random Gaussian of up to `blur` pixels, since a
    tokenizer's round trip loses fine detail, and the learning rate decays to 0 on a cosine, so the classifier
    does not depend on where in its last epoch training stopped."""

    def __init__(self, train: int = 3000, epochs: int = 20, seed: int = KIND_SEED, device="cpu",
                 cache: str | None = None, blur: float = 1.0):
        """Trains on `device` (seeded, so one machine and device give one classifier); with `cache`, a
        safetensors file, loads the weights from it when it exists and saves them there after training, so that
        several priors are scored by the very same classifier (and it is trained once)."""
        import torch
        from torch import nn

        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))

        torch.manual_seed(seed)
        self.device = torch.device(device)
        self.net = nn.Sequential(block(3, 32), block(32, 64), block(64, 128), block(128, 128),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, len(OBJECTS))).to(self.device)
        # its training settings: the cache's metadata, and what run_text reports
        self.settings = meta = {"train": str(train), "epochs": str(epochs), "seed": str(seed),
                                "objects": ",".join(OBJECTS), "blur": str(blur), "loss": "balanced",
                                "schedule": "cosine"}
        if cache and Path(cache).is_file():
            from safetensors import safe_open
            from safetensors.torch import load_file

            with safe_open(cache, "pt") as f:
                if f.metadata() != meta:
                    raise SystemExit(f"error: {cache} holds a classifier trained otherwise ({f.metadata()}); "
                                     f"delete it or pass another --kind-cache")
            self.net.load_state_dict(load_file(cache, device=str(self.device)))
            self.net.eval()
            return
        images, kinds = kind_pictures(train, seed)
        y = torch.tensor([OBJECTS.index(k) for k in kinds], device=self.device)
        x = _kind_batch(images).to(self.device)
        counts = torch.bincount(y, minlength=len(OBJECTS)).float()
        weight = counts.sum() / counts.clamp(min=1) / len(OBJECTS)  # 1 for every object in a balanced set
        opt = torch.optim.AdamW(self.net.parameters(), 2e-3, weight_decay=1e-4)
        steps = epochs * -(-len(x) // 64)
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))
        g = torch.Generator().manual_seed(seed)
        self.net.train()
        for _ in range(epochs):
            for idx in torch.randperm(len(x), generator=g).split(64):
                flip = (torch.rand(len(idx), generator=g) < 0.5).to(self.device)  # objects face either way
                sigma = (torch.rand(len(idx), generator=g) * blur).to(self.device)
                idx = idx.to(self.device)
                xb = _blur(torch.where(flip[:, None, None, None], x[idx].flip(-1), x[idx]), sigma)
                loss = nn.functional.cross_entropy(self.net(xb), y[idx], weight=weight)
                opt.zero_grad()
                loss.backward()
                opt.step()
                schedule.step()
        self.net.eval()
        if cache:
            from safetensors.torch import save_file

            Path(cache).parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, cache, metadata=meta)

    def __call__(self, images: np.ndarray) -> list[str]:
        import torch

        with torch.no_grad():
            out = [self.net(_kind_batch(images[i:i + 256]).to(self.device)).argmax(1).cpu()
                   for i in range(0, len(images), 256)]
        return [OBJECTS[int(k)] for k in torch.cat(out)]


def kind_rates(classifier: KindClassifier, images: np.ndarray, kinds: list[str]) -> float:
    return kind_scores(classifier, images, kinds)["rate"]


def kind_scores(classifier, images: np.ndarray, kinds: list[str]) -> dict:
    """How often `classifier` names each image's prompted object: overall ("rate") and per object ("by_object")."""
    named = classifier(images)
    return {"rate": float(np.mean([a == b for a, b in zip(named, kinds)])), "by_object": kind_by_object(named, kinds)}


def rate_at_mix(by_object: dict, kinds: list[str]) -> float | None:
    """The rate `kind_by_object`'s per-object rates give at another mix of objects (one entry per picture in
    `kinds`); None when an object of `kinds` is missing from `by_object`."""
    if not set(kinds) <= set(by_object):
        return None
    return float(np.mean([by_object[k]["rate"] for k in kinds]))


def kind_by_object(named: list[str], kinds: list[str]) -> dict:
    """Per prompted object: how often the classifier named it, out of how many, and what it named instead
    ({"bird": {"rate": 0.5, "n": 4, "seen_as": {"bird": 2, "fish": 2}}, ...}): which objects a prior cannot draw."""
    out = {}
    for kind in sorted(set(kinds)):
        seen = [a for a, b in zip(named, kinds) if b == kind]
        counts = {k: seen.count(k) for k in sorted(set(seen), key=lambda k: (-seen.count(k), k))}
        out[kind] = {"rate": counts.get(kind, 0) / len(seen), "n": len(seen), "seen_as": counts}
    return out


# ---------------------------------------------------------------------------------------------
# segmap: stuff classes by colour
# ---------------------------------------------------------------------------------------------

STUFF_IDS = [segmaps.CLASS_ID[c] for c in segmaps.STUFF]


def make_scenes(count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scenes 0..count-1 of recipes/segmaps.py at `seed`: uint8 images [k, S, S, 3] and maps [k, S, S]."""
    scenes = segmaps.Scenes(size, seed)
    pairs = [scenes(i)[:2] for i in range(count)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def stuff_refs(images: np.ndarray, maps: np.ndarray, k: int = 8, max_pixels: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """Reference colours of the stuff classes: k-means centres (k per class, 15 Lloyd steps from k pixels drawn
    with a fixed seed) of each class's pixels in the images, at most max_pixels of them; k=1 is the mean colour.
    Returns (float [m, 3] colours, int [m] their segmaps class ids); absent classes get none."""
    colors, ids = [], []
    rng = np.random.default_rng(0)
    for c in STUFF_IDS:
        px = images[maps == c].astype(np.float64)
        if len(px) == 0:
            continue
        px = px[rng.choice(len(px), min(len(px), max_pixels), replace=False)]
        centres = px.mean(0, keepdims=True) if k == 1 else px[rng.choice(len(px), min(k, len(px)), replace=False)]
        for _ in range(15 if k > 1 else 0):
            near = ((px[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
            centres = np.stack([px[near == j].mean(0) if (near == j).any() else centres[j] for j in range(len(centres))])
        colors.append(centres)
        ids += [c] * len(centres)
    return np.concatenate(colors), np.asarray(ids)


def classify_stuff(img: np.ndarray, refs: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The class of the nearest reference colour, per pixel: [..., 3] -> int [...] (segmaps class ids)."""
    colors, ids = refs
    d = ((img[..., None, :].astype(np.float32) - colors.astype(np.float32)) ** 2).sum(-1)
    return ids[d.argmin(-1)]


def stuff_iou(images: np.ndarray, maps: np.ndarray, refs) -> dict:
    """Per-class IoU (pooled over all image/map pairs) on the stuff pixels of the maps, and their mean."""
    inter = np.zeros(len(STUFF_IDS))
    union = np.zeros(len(STUFF_IDS))
    present = np.zeros(len(STUFF_IDS), bool)
    for img, m in zip(images, maps):
        scored = np.isin(m, STUFF_IDS)
        pred = classify_stuff(img, refs)
        for k, c in enumerate(STUFF_IDS):
            a, b = (pred == c) & scored, m == c
            inter[k] += (a & b).sum()
            union[k] += (a | b).sum()
            present[k] |= b.any()
    per = {segmaps.STUFF[k]: float(inter[k] / union[k]) for k in range(len(STUFF_IDS)) if present[k]}
    return {"per_class": per, "miou": float(np.mean(list(per.values()))) if per else None}


def score_segmap(real: np.ndarray, maps: np.ndarray, generated: np.ndarray, n: int, refs) -> dict:
    """generated[j] was sampled from maps[j // n]; shuffled pairs put scene i's map with scene i+1's images."""
    rep = np.repeat(maps, n, axis=0)
    shifted = np.roll(generated.reshape(len(maps), n, *generated.shape[1:]), -1, axis=0).reshape(generated.shape)
    return {"generated": stuff_iou(generated, rep, refs),
            "ceiling_real": stuff_iou(real, maps, refs),
            "floor_shuffled_real": stuff_iou(np.roll(real, -1, axis=0), maps, refs),
            "floor_shuffled_generated": stuff_iou(shifted, rep, refs)}


# ---------------------------------------------------------------------------------------------
# Sampling (as `regvq sample`)
# ---------------------------------------------------------------------------------------------


def load_models(model: str, tokenizer: str | None, device: str):
    from regvq_cli.cli.sample import load_tokenizer
    from regvq_cli.engine.device import pick_device
    from regvq_cli.engine.resolve import PRIOR, load

    dev = pick_device(device)
    prior = load(model, device=dev, expect=PRIOR)
    tok, _ = load_tokenizer(prior, tokenizer, False)
    return prior, tok, dev


def generate(prior, tok, dev, cond_kwargs: dict, n: int, seed: int, cfg: float, batch_size: int,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """n samples per condition, condition-major, as uint8 [k * n, H, W, 3]; the same images as `regvq sample`
    with the same seed, -n, --cfg, --temperature, --top-k, --top-p, --batch-size and device."""
    import torch

    from regvq_cli.cli.sample import token_batches
    from regvq_cli.engine.device import pick_dtype
    from regvq_cli.engine.runtime import prepare_tokenizer
    from regvq_cli.priors.conditioning import prepare_condition

    dtype = pick_dtype("auto", dev)
    cond = prepare_condition(prior.config, device=dev, **cond_kwargs)
    count = len(next(iter(cond_kwargs.values())))
    rows = np.arange(count * n) // n
    gen = torch.Generator(device=dev if dev.type == "cuda" else "cpu").manual_seed(seed)
    options = dict(cfg=cfg, temperature=temperature, top_k=top_k, top_p=top_p)
    if prior.model_type == "diffusion":
        options.update(steps=None, sampler="vq")
    runner = prepare_tokenizer(tok, dev, dtype)
    progress(f"sampling {len(rows)} images on {dev}")
    out = []
    for tokens in token_batches(prior, cond, rows, batch_size, gen, dtype, options):
        out.append(runner.decode_uint8(tokens).numpy())
        print(f"\rsampled {sum(map(len, out))}/{len(rows)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return np.concatenate(out)


def roundtrip(tok, dev, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Pictures encoded and decoded by the tokenizer: what the prior could reproduce at best."""
    import torch

    from regvq_cli.engine.device import pick_dtype
    from regvq_cli.engine.runtime import prepare_tokenizer

    runner = prepare_tokenizer(tok, dev, pick_dtype("auto", dev))
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).permute(0, 3, 1, 2)
        out.append(runner.decode_uint8(runner.encode_uint8(x)).numpy())
    return np.concatenate(out)


def progress(message: str, _start=time.perf_counter()) -> None:
    """A line on stderr with the seconds since the script started: where a long measurement is."""
    print(f"[{time.perf_counter() - _start:6.1f} s] {message}", file=sys.stderr, flush=True)


def save_images(folder: str | None, images: np.ndarray, names: list[str]) -> None:
    if folder:
        from PIL import Image

        Path(folder).mkdir(parents=True, exist_ok=True)
        for img, name in zip(images, names):
            Image.fromarray(img).save(Path(folder) / f"{name}.png")


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def run_text(a) -> dict:
    prompts = text_prompts(a.prompts)
    prior, tok, dev = load_models(a.model, a.tokenizer, a.device)
    images = generate(prior, tok, dev, {"prompts": [p["prompt"] for p in prompts]}, a.n, a.seed, a.cfg, a.batch_size,
                      a.temperature, a.top_k, a.top_p)
    save_images(a.save, images, [f"{j:06d}-{prompts[j // a.n]['prompt'].replace(' ', '-')}" for j in range(len(images))])
    pics, facts = recipe_pictures(a.ceiling_pictures, int(images.shape[1]), RECIPE_SEED)
    kind = None
    if a.kind_train:
        cached = a.kind_cache and Path(a.kind_cache).is_file()
        progress(f"object classifier: loading {a.kind_cache}" if cached else
                 f"object classifier: training on {a.kind_train} pictures")
        classifier = KindClassifier(a.kind_train, device=dev, cache=a.kind_cache)
        progress("object classifier ready")
        held, held_kinds = kind_pictures(a.ceiling_pictures, KIND_SEED + 1)
        size = int(images.shape[1])
        from PIL import Image

        held_full = np.stack([np.asarray(Image.fromarray(h).resize((size, size), Image.Resampling.BICUBIC)) for h in held])
        wanted = [prompts[j // a.n]["object"] for j in range(len(images))]
        after = kind_scores(classifier, roundtrip(tok, dev, held_full, a.batch_size), held_kinds)
        kind = {**kind_scores(classifier, images, wanted),
                "chance": 1 / len(OBJECTS),
                "classifier_on_recipe_pictures": kind_rates(classifier, held, held_kinds),
                "classifier_after_the_tokenizer": after["rate"],
                # the held-out pictures follow the recipe's object mix (birds and cars 5x), the prompts do not
                "classifier_after_the_tokenizer_at_the_prompts_mix": rate_at_mix(after["by_object"], wanted),
                "classifier_by_object_after_the_tokenizer": after["by_object"],
                "classifier": f"4-layer CNN at {KIND_SIZE} px trained on {a.kind_train} recipe pictures of "
                              f"{', '.join(OBJECTS)} (seed {KIND_SEED}; objects weighed equally, blurred up to "
                              f"{float(classifier.settings['blur']):g} px, {classifier.settings['epochs']} epochs); "
                              f"held-out pictures seed {KIND_SEED + 1}"}
    return {"mode": "text", "model": prior.regvq_id, "tokenizer": tok.regvq_id, "seed": a.seed, "cfg": a.cfg,
            "temperature": a.temperature, "top_k": a.top_k, "top_p": a.top_p,
            "n_per_prompt": a.n, "prompts": len(prompts), "image_size": int(images.shape[1]),
            "protocol": {"objects": sorted({p["object"] for p in prompts}), "colors": C.COLOR_NAMES,
                         "positions": POSITIONS, "prompt_seed": PROMPT_SEED, "border": "1/16 of the side",
                         "background_share": BG_SHARE, "object_share": text2img.MIN_SHARE, "fg_dist": FG_DIST,
                         "min_fg": MIN_FG, "classifier": "recipes/_common.py classify_colors"},
            **score_text(prompts, images, a.n),
            "object_kind": kind,
            "ceiling_recipe": {**score_recipe(pics, facts), "seed": RECIPE_SEED},
            "ceiling_tokenizer": {**score_recipe(roundtrip(tok, dev, pics, a.batch_size), facts), "seed": RECIPE_SEED}}


def code_confidence(tok, dev, images: np.ndarray, batch_size: int) -> dict | None:
    """Top-1 probability of the tokenizer's code distributions over these pictures (fp32), where the quantizer
    predicts distributions (RegVQ, Gumbel-VQ): near 1/N they are flat and Gumbel samples are near-random codes."""
    import torch

    quantizer = getattr(tok, "quantizer", None)
    if not hasattr(quantizer, "compute_logits"):
        return None
    top = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).permute(0, 3, 1, 2)
            x = x.to(dev, torch.float32) / 127.5 - 1
            z = tok.float().quant_conv(tok.encoder(x))  # [B, D, h, w]
            top.append(quantizer.compute_logits(z.float()).softmax(1).amax(1).flatten().cpu())
    top = torch.cat(top)
    return {"mean": round(top.mean().item(), 4), "median": round(top.median().item(), 4),
            "uniform": round(1 / tok.codebook_size, 6)}


def run_tokenizer(a) -> dict:
    """The text ceilings alone: what a tokenizer keeps of the caption recipe's pictures (no prior involved)."""
    from regvq_cli.engine.device import pick_device
    from regvq_cli.engine.resolve import TOKENIZER, load

    dev = pick_device(a.device)
    tok = load(a.tokenizer, device=dev, expect=TOKENIZER)
    pics, facts = recipe_pictures(a.ceiling_pictures, int(tok.config.image_size), RECIPE_SEED)
    back = roundtrip(tok, dev, pics, a.batch_size)
    save_images(a.save, back, [f"{j:06d}-{f['text'].replace(' ', '-')}" for j, f in enumerate(facts)])
    return {"mode": "tokenizer", "tokenizer": tok.regvq_id, "pictures": len(pics), "seed": RECIPE_SEED,
            "image_size": int(tok.config.image_size),
            "ceiling_recipe": score_recipe(pics, facts), "ceiling_tokenizer": score_recipe(back, facts),
            "code_top1_probability": code_confidence(tok, dev, pics, a.batch_size)}


def run_segmap(a) -> dict:
    prior, tok, dev = load_models(a.model, a.tokenizer, a.device)
    size = tok.config.image_size
    real, maps = make_scenes(a.scenes + a.ref_scenes, size, a.scene_seed)
    refs = stuff_refs(real[a.scenes:], maps[a.scenes:], a.refs_per_class)
    real, maps = real[:a.scenes], maps[:a.scenes]
    images = generate(prior, tok, dev, {"segmaps": maps}, a.n, a.seed, a.cfg, a.batch_size,
                      a.temperature, a.top_k, a.top_p)
    save_images(a.save, images, [f"{j:06d}-scene{j // a.n}" for j in range(len(images))])
    return {"mode": "segmap", "model": prior.regvq_id, "tokenizer": tok.regvq_id, "seed": a.seed, "cfg": a.cfg,
            "temperature": a.temperature, "top_k": a.top_k, "top_p": a.top_p,
            "n_per_scene": a.n, "scenes": a.scenes, "scene_seed": a.scene_seed, "image_size": int(size),
            "images": int(len(images)),
            "protocol": {"stuff": segmaps.STUFF, "scored": "pixels whose map label is a stuff class",
                         "rule": "class of the nearest reference colour", "refs_per_class": a.refs_per_class,
                         "ref_scenes": f"{a.ref_scenes} held-out scenes (indices {a.scenes}..)",
                         "iou": "pooled over images"},
            **score_segmap(real, maps, images, a.n, refs),
            "ceiling_tokenizer": stuff_iou(roundtrip(tok, dev, real, a.batch_size), maps, refs),
            "reference_colors": {segmaps.STUFF[c]: np.round(refs[0][refs[1] == c], 1).tolist() for c in STUFF_IDS
                                 if (refs[1] == c).any()}}


def report(r: dict) -> None:
    f = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    if r["mode"] == "tokenizer":
        print(f"tokenizer {r['tokenizer']}: {r['pictures']} recipe pictures (seed {r['seed']}), {r['seconds']:.0f} s")
        for k, v in r["ceiling_tokenizer"].items():
            if k != "pictures":
                print(f"  {k:32s} after the tokenizer {f(v)}   as made {f(r['ceiling_recipe'].get(k))}")
        return
    print(f"{r['mode']}: {r['model']} (tokenizer {r['tokenizer']}), seed {r['seed']}, cfg {r['cfg']}, "
          f"{r['seconds']:.0f} s")
    if r["mode"] == "text":
        c = r["counts"]
        print(f"{r['prompts']} prompts x {r['n_per_prompt']} = {c['images']} images "
              f"({c['background_images']} with a background word, {c['position_images']} with a position)")
        for k, v in r["rates"].items():
            chance = r["chance"].get(k)
            ceil, tokc = r["ceiling_recipe"].get(k), r["ceiling_tokenizer"].get(k)
            marg = r["chance_marginal"].get(k)
            extra = "" if chance is None else f"   chance {f(chance)}" + ("" if k not in r["chance_marginal"] else f", marginal {f(marg)}")
            print(f"  {k:32s} {f(v)}{extra}"
                  + ("" if k not in r["ceiling_recipe"] else f"   recipe pictures {f(ceil)}, after tokenizer {f(tokc)}"))
        kind = r.get("object_kind")
        if kind:
            print(f"  {'object_kind':32s} {f(kind['rate'])}   chance {f(kind['chance'])}   recipe pictures "
                  f"{f(kind['classifier_on_recipe_pictures'])}, after tokenizer {f(kind['classifier_after_the_tokenizer'])}"
                  f" ({f(kind['classifier_after_the_tokenizer_at_the_prompts_mix'])} at the prompts' object mix)")
            print("  " + ", ".join(f"{k} {f(v['rate'])} of {v['n']}" for k, v in kind["by_object"].items()))
    else:
        print(f"{r['scenes']} scenes (seed {r['scene_seed']}) x {r['n_per_scene']} = {r['images']} images")
        rows = ["generated", "ceiling_real", "ceiling_tokenizer", "floor_shuffled_real", "floor_shuffled_generated"]
        classes = list(r["ceiling_real"]["per_class"])
        print(f"  {'':26s} {'mIoU':>6s} " + " ".join(f"{c:>6s}" for c in classes))
        for k in rows:
            pc = r[k]["per_class"]
            print(f"  {k:26s} {f(r[k]['miou']):>6s} " + " ".join(f"{f(pc[c]):>6s}" for c in classes))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    for name, n in (("text", 4), ("segmap", 2)):
        p = sub.add_parser(name)
        p.add_argument("--model", "-m", required=True, help="the prior (a folder, a shipped name, ...)")
        p.add_argument("--tokenizer", default=None, help="decode with this tokenizer (default: the prior's)")
        p.add_argument("-n", type=int, default=n, help=f"images per condition (default {n})")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--cfg", type=float, default=1.5, help="guidance scale (default 1.5, as regvq sample)")
        p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1)")
        p.add_argument("--top-k", type=int, default=0, help="keep the k most likely codes (default 0: all)")
        p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass (default 1: all)")
        p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--device", default="auto")
        p.add_argument("--save", default=None, metavar="DIR", help="also write the sampled PNGs here")
        p.add_argument("--json", action="store_true", help="print the full result as JSON")
        if name == "text":
            p.add_argument("--prompts", type=int, default=48, help="number of prompts (default 48)")
            p.add_argument("--ceiling-pictures", type=int, default=64,
                           help="recipe pictures for the ceilings (default 64)")
            p.add_argument("--kind-train", type=int, default=3000,
                           help="recipe pictures to train the object classifier on (0: no object-kind rate; "
                                "default 3000: about 2 minutes on a 2-core CPU, seconds on a GPU; trained on --device)")
            p.add_argument("--kind-cache", default=None, metavar="FILE",
                           help="keep the object classifier in this .safetensors file: loaded if it exists, else "
                                "trained and saved, so that several priors are scored by the same classifier")
        else:
            p.add_argument("--scenes", type=int, default=16, help="number of scenes (default 16)")
            p.add_argument("--scene-seed", type=int, default=12345, help="segmaps.py seed (default 12345)")
            p.add_argument("--ref-scenes", type=int, default=128,
                           help="held-out scenes the reference colours come from (default 128)")
            p.add_argument("--refs-per-class", type=int, default=8,
                           help="reference colours per stuff class (k-means; 1: the mean colour; default 8)")
    p = sub.add_parser("tokenizer", help="what a tokenizer alone keeps of the caption recipe's pictures")
    p.add_argument("--tokenizer", default="regvq-tokenizer", help="a shipped name, folder, ... (default regvq-tokenizer)")
    p.add_argument("--ceiling-pictures", type=int, default=64, help="recipe pictures (default 64)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--save", default=None, metavar="DIR", help="also write the decoded PNGs here")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    r = {"text": run_text, "segmap": run_segmap, "tokenizer": run_tokenizer}[a.mode](a)
    r["seconds"] = round(time.perf_counter() - t0, 1)
    if a.json:
        print(json.dumps(r, indent=1))
    else:
        report(r)


if __name__ == "__main__":
    main()
