"""Fashion-MNIST (Xiao, Rasul, Vollgraf 2017; 70,000 labelled 28x28 grayscale images) from the
Debian package dataset-fashion-mnist (MIT/Expat licence) to an image folder or a compact .npz.

    python recipes/fashion_mnist.py --out data/fmnist [--size 28] [--n N] [--seed 0]
    python recipes/fashion_mnist.py --out data/fmnist --format npz [--size 28]

Folder format (Hugging Face imagefolder class sub-folders, one per split):
    train/0_tshirt_top/00000.png ... train/9_ankle_boot/...   60,000 images
    test/0_tshirt_top/00000.png ...                           10,000 images
    classes.json                                              the official names in id order
The folder names start with the class id, so sorted folder names give the official ids
(0 T-shirt/top ... 9 Ankle boot); the file stem is the image's index in the original file.

npz format (for carrying to another machine): one file OUT/fashion_mnist_<size>.npz with uint8
arrays x_train [N, S, S], y_train [N], x_test, y_test, the indices taken (idx_train, idx_test),
and class_names. At 28 px all 70,000 images compress to about 30 MB; upscale on the other side.

--size S resizes with bicubic filtering (28 keeps the originals). --n N keeps N images per split
(a random subset drawn with --seed, kept in original order); the default keeps all.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import struct
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import _common as C

SOURCE = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]
FOLDERS = [f"{i}_" + "".join(ch if ch.isalnum() else "_" for ch in n.lower()).replace("t_shirt", "tshirt")
           for i, n in enumerate(CLASS_NAMES)]  # 0_tshirt_top, 1_trouser, ..., 9_ankle_boot
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): big-endian magic, dims, then uint8 data."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path} is not a uint8 IDX file")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: {arr.size} values for shape {dims}")
    return arr.reshape(dims)


def load_split(source: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels uint8 [N]) of 'train' or 'test'."""
    img_file, lab_file = FILES[split]
    if not (source / img_file).is_file():
        raise SystemExit(f"{source / img_file} not found: apt-get install -y dataset-fashion-mnist")
    x, y = read_idx(source / img_file), read_idx(source / lab_file)
    if len(x) != len(y):
        raise ValueError(f"{split}: {len(x)} images but {len(y)} labels")
    return x, y


def select(n_total: int, n: int | None, seed: int, split: str) -> np.ndarray:
    """Indices kept: all, or a sorted random subset of n (seeded per split)."""
    if n is None or n >= n_total:
        return np.arange(n_total)
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    return np.sort(rng.choice(n_total, size=n, replace=False))


def resize(x: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W] -> [size, size], bicubic; unchanged when already that size."""
    if x.shape[0] == size and x.shape[1] == size:
        return x
    return np.asarray(Image.fromarray(x).resize((size, size), Image.Resampling.BICUBIC))


def build(out: Path, size: int = 28, n: int | None = None, seed: int = 0, fmt: str = "folder",
          source: Path = SOURCE, workers: int | None = None) -> dict[str, int]:
    """Write the splits to `out`; returns the image count of each split."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    workers = C.default_workers() if workers is None else workers
    counts, arrays = {}, {}
    for split in ("train", "test"):
        x, y = load_split(source, split)
        idx = select(len(x), n, seed, split)
        counts[split] = len(idx)
        if fmt == "npz":
            arrays[f"x_{split}"] = np.stack([resize(x[i], size) for i in idx]) if len(idx) else np.zeros((0, size, size), np.uint8)
            arrays[f"y_{split}"] = y[idx]
            arrays[f"idx_{split}"] = idx.astype(np.int32)
            continue
        for folder in FOLDERS:
            (out / split / folder).mkdir(parents=True, exist_ok=True)

        def work(k: int, x=x, y=y, idx=idx, split=split) -> None:
            i = int(idx[k])
            C.save_png(resize(x[i], size), out / split / FOLDERS[y[i]] / f"{i:05d}.png")

        for _ in C.parallel_map(work, len(idx), workers, f"fashion_mnist {split}"):
            pass
    if fmt == "npz":
        path = out / f"fashion_mnist_{size}.npz"
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, class_names=np.array(CLASS_NAMES), **arrays)
        os.replace(tmp, path)
        print(f"{path}: {path.stat().st_size / 1e6:.1f} MB", file=sys.stderr)
    with open(out / "classes.json", "w", encoding="utf-8") as f:
        json.dump(CLASS_NAMES, f, indent=1)
    return counts


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Read a file written with --format npz back into arrays (no pickle)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="fashion_mnist.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--size", type=int, default=28, help="image side in pixels (default 28: the originals)")
    ap.add_argument("--n", type=int, default=None, help="images per split (default: all)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the subset drawn with --n")
    ap.add_argument("--format", choices=["folder", "npz"], default="folder")
    ap.add_argument("--source", type=Path, default=SOURCE, help=f"folder of the IDX .gz files (default {SOURCE})")
    ap.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    a = ap.parse_args(argv)
    counts = build(a.out, a.size, a.n, a.seed, a.format, a.source, a.workers)
    print(f"wrote {counts['train']} train and {counts['test']} test images to {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
