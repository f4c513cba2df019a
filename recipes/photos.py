"""Tokenizer training set: random square crops at several scales from the natural photos in
shared/data/photos (45 JPEGs; sources and licences in its SOURCES.md), resized to --size.

    python recipes/photos.py --out data/photos --n 20000 [--size 256] [--seed 0]

Held-out split BY PHOTO: sort the photo file names; every 5th one (positions 4, 9, 14, ... of the
sorted list, counting from 0) goes to val/, the others to train/. No photo gives crops to both
splits, so val measures reconstruction of unseen pictures. --n is the number of train crops; val
gets n/4 of them (the same crops-per-photo rate: 9 val photos against 36 train photos).

Each crop: a photo drawn uniformly from its split, a square side of 100%, 70%, 50% or 35% of the
photo's shorter side (never below --size pixels unless the photo is smaller, so crops are not
upscaled), a uniform position, a horizontal flip half of the time, then a Lanczos resize to
--size. Writes:
    train/000000.jpg ...   (or .png with --format png)
    train/metadata.jsonl   file_name, source photo, crop box [x0, y0, x1, y1] in the photo, flip
    val/...                the same for the held-out photos
Needs only Pillow and numpy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import _common as C

SCALES = (1.0, 0.7, 0.5, 0.35)
VAL_EVERY = 5


def default_photos() -> Path:
    """shared/data/photos beside the repository (the layout of this project's checkouts)."""
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "photos"


def split_photos(paths: list[Path]) -> dict[str, list[Path]]:
    """Sorted by name, every VAL_EVERY-th photo (index % 5 == 4) is val, the rest train."""
    paths = sorted(paths, key=lambda p: p.name)
    return {"train": [p for i, p in enumerate(paths) if i % VAL_EVERY != VAL_EVERY - 1],
            "val": [p for i, p in enumerate(paths) if i % VAL_EVERY == VAL_EVERY - 1]}


def list_photos(folder: Path) -> list[Path]:
    exts = {".jpg", ".jpeg", ".png", ".webp"}
    paths = [p for p in Path(folder).iterdir() if p.suffix.lower() in exts and not p.name.startswith(".")]
    if not paths:
        raise SystemExit(f"no photos in {folder}: pass --photos FOLDER")
    return paths


def crop_box(rng: np.random.Generator, w: int, h: int, size: int) -> tuple[int, int, int, int]:
    """A random square [x0, y0, x1, y1] inside a w x h photo at one of SCALES."""
    short = min(w, h)
    side = int(round(SCALES[rng.integers(len(SCALES))] * short))
    side = min(max(side, min(size, short)), short)
    x0 = int(rng.integers(0, w - side + 1))
    y0 = int(rng.integers(0, h - side + 1))
    return x0, y0, x0 + side, y0 + side


def build(out: Path, n: int, size: int = 256, seed: int = 0, photos: Path | None = None,
          fmt: str = "jpg", quality: int = 95, workers: int | None = None) -> dict[str, int]:
    """Write train/ and val/ crops to `out`; returns the count of each split."""
    splits = split_photos(list_photos(photos or default_photos()))
    # Decode every photo once, before the workers fork (about 2 MB each).
    decoded = {p.name: np.asarray(Image.open(p).convert("RGB")) for ps in splits.values() for p in ps}
    counts = {}
    workers = C.default_workers() if workers is None else workers
    for s, (split, paths) in enumerate(splits.items()):
        count = n if split == "train" else max(1, round(n * len(paths) / max(len(splits["train"]), 1)))
        if not paths:
            continue
        folder = Path(out) / split
        folder.mkdir(parents=True, exist_ok=True)

        def work(i: int, paths=paths, s=s, folder=folder) -> dict:
            rng = C.sample_rng(seed, i, stream=s)
            p = paths[rng.integers(len(paths))]
            arr = decoded[p.name]
            box = crop_box(rng, arr.shape[1], arr.shape[0], size)
            flip = bool(rng.random() < 0.5)
            im = Image.fromarray(arr[box[1] : box[3], box[0] : box[2]])
            if flip:
                im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            im = im.resize((size, size), Image.Resampling.LANCZOS)
            name = f"{i:06d}.{fmt}"
            if fmt == "jpg":
                im.save(folder / name, format="JPEG", quality=quality, subsampling=0)
            else:
                im.save(folder / name, format="PNG")
            return {"file_name": name, "source": p.name, "box": list(box), "flip": flip}

        counts[split] = C.write_jsonl(folder / "metadata.jsonl", C.parallel_map(work, count, workers, f"photos {split}"))
    return counts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="photos.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--n", type=int, default=20000, help="number of train crops (default 20000); val gets n/4")
    ap.add_argument("--size", type=int, default=256, help="crop side in pixels (default 256)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--photos", type=Path, default=None, help=f"photo folder (default {default_photos()})")
    ap.add_argument("--format", choices=["jpg", "png"], default="jpg")
    ap.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    ap.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    a = ap.parse_args(argv)
    counts = build(a.out, a.n, a.size, a.seed, a.photos, a.format, a.quality, a.workers)
    print(f"wrote {counts.get('train', 0)} train and {counts.get('val', 0)} val crops to {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
