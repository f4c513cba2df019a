"""Tests of the dataset recipes in recipes/: each runs as a script with a tiny N into tmp_path.

The recipes that need Debian packages (fonts-noto-color-emoji, openclipart-png,
dataset-fashion-mnist) are skipped with the reason when the package is not installed.
Colour checks here use their own thresholds, not the recipes' classifier.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
CLIPART = Path("/usr/share/openclipart/png")
FMNIST = Path("/usr/share/datasets/fashion-mnist")

needs_emoji = pytest.mark.skipif(not EMOJI_FONT.is_file(), reason="needs apt package fonts-noto-color-emoji")
needs_clipart = pytest.mark.skipif(not CLIPART.is_dir(), reason="needs apt package openclipart-png")
needs_fmnist = pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(),
                                  reason="needs apt package dataset-fashion-mnist")


def run(script: str, *args) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, str(RECIPES / script), *map(str, args)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, f"{script} failed:\n{r.stderr[-3000:]}"
    return r


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------
# An independent colour check: HSV by hand, loose windows per colour word.
# ------------------------------------------------------------------------------------------------


def hsv(rgb: np.ndarray):
    x = rgb.astype(np.float64) / 255.0
    mx, mn = x.max(-1), x.min(-1)
    d = mx - mn
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        h = np.select([d == 0, mx == r, mx == g], [0.0, ((g - b) / d) % 6, (b - r) / d + 2], (r - g) / d + 4) * 60
        s = np.where(mx > 0, d / np.where(mx > 0, mx, 1), 0)
    return h, s, mx


def hue_in(h, lo, hi):
    return ((h - lo) % 360) <= ((hi - lo) % 360)


def color_predicate(name: str, rgb: np.ndarray) -> np.ndarray:
    """Pixels a person would call `name` (deliberately looser than the recipe's bins)."""
    h, s, v = hsv(rgb)
    chroma = (s > 0.3) & (v > 0.25)
    windows = {"red": (340, 20), "orange": (10, 45), "yellow": (40, 75), "green": (70, 170), "cyan": (165, 205),
               "blue": (200, 255), "purple": (250, 295), "pink": (290, 345), "brown": (5, 45)}
    if name == "black":
        return v < 0.3
    if name == "white":
        return (s < 0.2) & (v > 0.75)
    if name == "gray":
        return (s < 0.2) & (v > 0.25) & (v < 0.8)
    m = chroma & hue_in(h, *windows[name])
    if name == "orange":
        m &= v > 0.65
    if name == "brown":
        m &= v < 0.65
    return m


def assert_color_true(name: str, rgb: np.ndarray, min_share: float = 0.3):
    share = color_predicate(name, rgb).mean()
    assert share >= min_share, f"only {share:.0%} of the pixels look {name}"


def erode(mask: np.ndarray) -> np.ndarray:
    m = mask.copy()
    m[1:] &= mask[:-1]
    m[:-1] &= mask[1:]
    m[:, 1:] &= mask[:, :-1]
    m[:, :-1] &= mask[:, 1:]
    return m


# ------------------------------------------------------------------------------------------------
# photos.py
# ------------------------------------------------------------------------------------------------


def make_photos(folder: Path, n: int = 10) -> list[str]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        w, h = int(rng.integers(90, 140)), int(rng.integers(70, 120))
        arr = np.zeros((h, w, 3), np.uint8)
        arr[...] = (i * 25, 255 - i * 25, 128)  # each photo its own colour, to trace crops back
        Image.fromarray(arr).save(folder / f"p{i:02d}.jpg", quality=95)
        names.append(f"p{i:02d}.jpg")
    return names


def test_photos_split_by_photo_and_deterministic(tmp_path):
    names = make_photos(tmp_path / "ph")
    out = tmp_path / "a"
    run("photos.py", "--out", out, "--n", 24, "--size", 48, "--photos", tmp_path / "ph", "--workers", 1)
    train, val = read_jsonl(out / "train" / "metadata.jsonl"), read_jsonl(out / "val" / "metadata.jsonl")
    assert len(train) == 24 and len(val) == 6  # 8 train photos, 2 val photos: 24 * 2 / 8
    val_photos = {n for i, n in enumerate(sorted(names)) if i % 5 == 4}
    assert {r["source"] for r in val} <= val_photos and not ({r["source"] for r in train} & val_photos)
    for r in train[:5] + val[:3]:
        split = "train" if r in train else "val"
        im = Image.open(out / split / r["file_name"])
        assert im.size == (48, 48)
        x0, y0, x1, y1 = r["box"]
        assert x1 - x0 == y1 - y0 > 0  # square crops
        # The crop's colour is its source photo's colour.
        i = int(r["source"][1:3])
        assert np.abs(np.asarray(im, np.float64).mean((0, 1)) - (i * 25, 255 - i * 25, 128)).max() < 8
    out2 = tmp_path / "b"
    run("photos.py", "--out", out2, "--n", 24, "--size", 48, "--photos", tmp_path / "ph", "--workers", 2)
    assert tree_bytes(out) == tree_bytes(out2)  # same seed, other worker count: same bytes
    out3 = tmp_path / "c"
    run("photos.py", "--out", out3, "--n", 24, "--size", 48, "--photos", tmp_path / "ph", "--seed", 1)
    assert tree_bytes(out) != tree_bytes(out3)


# ------------------------------------------------------------------------------------------------
# emoji.py / text2img.py / clipart.py
# ------------------------------------------------------------------------------------------------


def check_caption_set(out: Path, n: int, size: int, sources: set[str]):
    rows = read_jsonl(out / "images" / "metadata.jsonl")
    assert len(rows) == n
    colored = 0
    for r in rows:
        img = np.asarray(Image.open(out / "images" / r["file_name"]).convert("RGB"))
        mask = np.asarray(Image.open(out / "masks" / r["file_name"]))
        assert img.shape == (size, size, 3) and mask.shape == (size, size)
        assert set(np.unique(mask)) <= set(range(len(r["objects"]) + 1))
        text = r["text"]
        for k, o in enumerate(r["objects"], start=1):
            assert o["source"].split(":")[0] in sources
            obj = mask == k
            assert obj.sum() > 0, f"{r['file_name']}: object {k} has no pixels in its mask"
            x0, y0, x1, y1 = o["box"]
            ys, xs = np.nonzero(obj)
            assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1
            phrase = f"{o['color']} {o['word']}" if o["color"] else o["word"]
            assert phrase in text, (phrase, text)
            if o["color"]:
                colored += 1
                inner = erode(obj)
                assert_color_true(o["color"], img[inner if inner.sum() > 20 else obj])
        if r["background"]:
            assert_color_true(r["background"], img[erode(mask == 0)], min_share=0.5)
            if "background" in text:
                assert f"{r['background']} background" in text
        else:
            assert "background" not in text
    assert colored >= n // 2  # most pictures name a colour
    return rows


@needs_emoji
def test_emoji_set_masks_colors_determinism(tmp_path):
    out = tmp_path / "e"
    run("emoji.py", "--out", out, "--n", 40, "--size", 64, "--masks", "--two-frac", 0.3, "--workers", 1)
    rows = check_caption_set(out, 40, 64, {"emoji"})
    assert any(len(r["objects"]) == 2 for r in rows)
    vocab = json.loads((out / "objects.json").read_text())
    assert {"bird", "car"} <= set(vocab["objects"]) and len(vocab["objects"]) >= 50
    assert "red" in vocab["colors"] and "gray" in vocab["colors"]
    assert vocab["glyph_names"]["U+1F426"] == "BIRD"
    out2 = tmp_path / "e2"
    run("emoji.py", "--out", out2, "--n", 40, "--size", 64, "--masks", "--two-frac", 0.3, "--workers", 2)
    assert tree_bytes(out) == tree_bytes(out2)


@needs_emoji
def test_birds_and_cars_come_in_many_colors(tmp_path):
    out = tmp_path / "bc"
    run("emoji.py", "--out", out, "--n", 300, "--size", 32, "--two-frac", 0)
    colors = {"bird": set(), "car": set()}
    for r in read_jsonl(out / "images" / "metadata.jsonl"):
        o = r["objects"][0]
        if o["kind"] in colors and o["color"]:
            colors[o["kind"]].add(o["color"])
    assert len(colors["bird"]) >= 6 and len(colors["car"]) >= 6, colors


@needs_clipart
@needs_emoji
def test_text2img_mixes_emoji_and_clipart(tmp_path):
    out = tmp_path / "t"
    run("text2img.py", "--out", out, "--n", 40, "--size", 64, "--masks", "--clipart-frac", 0.6)
    rows = check_caption_set(out, 40, 64, {"emoji", "clipart"})
    sources = {o["source"].split(":")[0] for r in rows for o in r["objects"]}
    assert sources == {"emoji", "clipart"}


@needs_clipart
def test_clipart_set(tmp_path):
    out = tmp_path / "c"
    run("clipart.py", "--out", out, "--n", 20, "--size", 64, "--masks")
    check_caption_set(out, 20, 64, {"clipart"})


# ------------------------------------------------------------------------------------------------
# segmaps.py
# ------------------------------------------------------------------------------------------------


@needs_emoji
def test_segmaps_maps_align_with_objects(tmp_path):
    out = tmp_path / "s"
    run("segmaps.py", "--out", out, "--n", 16, "--size", 64, "--workers", 1)
    classes = json.loads((out / "classes.json").read_text())
    assert classes[:5] == ["sky", "grass", "sand", "water", "snow"]
    assert {"tree", "car", "bird", "circle", "star"} <= set(classes)
    rows = read_jsonl(out / "images" / "metadata.jsonl")
    assert len(rows) == 16
    assert sorted(p.name for p in (out / "maps").iterdir()) == sorted(r["file_name"] for r in rows)
    shape_pixels = 0
    for r in rows:
        img = np.asarray(Image.open(out / "images" / r["file_name"]).convert("RGB")).astype(np.float64)
        im_map = Image.open(out / "maps" / r["file_name"])
        assert im_map.mode == "L"
        m = np.asarray(im_map)
        assert m.shape == img.shape[:2] and m.max() < len(classes)
        assert 1 <= len(r["objects"]) <= 4
        assert (m == classes.index("sky")).any() and set(r["stuff"]) == {classes[i] for i in np.unique(m) if i < 5}
        # Every thing pixel lies inside a box of an object of that class.
        allowed = np.zeros(m.shape, bool)
        for cid in np.unique(m):
            if cid < 5:
                continue
            allowed[:] = False
            for o in r["objects"]:
                if o["class"] == classes[cid]:
                    x0, y0, x1, y1 = o["box"]
                    allowed[y0:y1, x0:x1] = True
            assert allowed[m == cid].all(), f"{r['file_name']}: {classes[cid]} pixels outside its boxes"
        # Each shape is painted in one flat colour, so the pixels the map gives a shape class
        # hold at most as many colours as there are shapes of that class.
        for name in ("circle", "square", "triangle", "star"):
            inner = erode(m == classes.index(name))
            k = sum(o["class"] == name for o in r["objects"])
            if inner.sum() >= 4:
                shape_pixels += int(inner.sum())
                _, counts = np.unique(img[inner].reshape(-1, 3), axis=0, return_counts=True)
                top = np.sort(counts)[::-1][:k].sum() / inner.sum()
                assert top > 0.95, f"{r['file_name']}: {name} pixels are not {k} flat colour(s)"
        # The sky is above the ground in every column where both show.
        sky_rows = np.where(m == 0, np.arange(m.shape[0])[:, None], -1).max(0)
        ground = np.isin(m, [1, 2, 3, 4])
        ground_top = np.where(ground, np.arange(m.shape[0])[:, None], m.shape[0]).min(0)
        both = (sky_rows >= 0) & (ground_top < m.shape[0])
        assert (sky_rows[both] < ground_top[both] + 1).mean() > 0.9
    assert shape_pixels > 0  # the flat-colour check ran at least once
    out2 = tmp_path / "s2"
    run("segmaps.py", "--out", out2, "--n", 16, "--size", 64, "--workers", 2)
    assert tree_bytes(out) == tree_bytes(out2)


# ------------------------------------------------------------------------------------------------
# fashion_mnist.py
# ------------------------------------------------------------------------------------------------


def idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


@needs_fmnist
def test_fashion_mnist_folder_and_npz(tmp_path):
    x = idx(FMNIST / "t10k-images-idx3-ubyte.gz")
    y = idx(FMNIST / "t10k-labels-idx1-ubyte.gz")
    out = tmp_path / "f"
    run("fashion_mnist.py", "--out", out, "--n", 30)
    names = json.loads((out / "classes.json").read_text())
    assert names[0] == "T-shirt/top" and names[9] == "Ankle boot"
    folders = sorted(p.name for p in (out / "test").iterdir())
    assert len(folders) == 10 and folders[0].startswith("0_") and folders[9] == "9_ankle_boot"
    files = sorted((out / "test").rglob("*.png"))
    assert len(files) == 30 and len(list((out / "train").rglob("*.png"))) == 30
    for p in files[:10]:
        i = int(p.stem)
        assert int(p.parent.name.split("_")[0]) == y[i]
        assert np.array_equal(np.asarray(Image.open(p)), x[i])
    big = tmp_path / "g"
    run("fashion_mnist.py", "--out", big, "--n", 5, "--size", 64)
    assert Image.open(next((big / "train").rglob("*.png"))).size == (64, 64)
    z = tmp_path / "z"
    run("fashion_mnist.py", "--out", z, "--n", 30, "--format", "npz")
    with np.load(z / "fashion_mnist_28.npz", allow_pickle=False) as a:
        assert a["x_train"].shape == (30, 28, 28) and a["x_train"].dtype == np.uint8
        assert np.array_equal(a["x_test"], x[a["idx_test"]]) and np.array_equal(a["y_test"], y[a["idx_test"]])
        assert list(a["class_names"]) == names
    # The same subset in both formats.
    assert sorted(int(p.stem) for p in files) == sorted(int(i) for i in np.load(z / "fashion_mnist_28.npz")["idx_test"])


# ------------------------------------------------------------------------------------------------
# pack.py
# ------------------------------------------------------------------------------------------------


def make_dataset(root: Path, n: int = 6) -> None:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "maps").mkdir()
    rows = []
    for i in range(n):
        img = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        img[:20] = (200, 30, 30)
        lab = np.zeros((40, 40), np.uint8)
        lab[10:30, 5:25] = 3 + i % 2
        Image.fromarray(img).save(root / "images" / f"{i:03d}.png")
        Image.fromarray(lab).save(root / "maps" / f"{i:03d}.png")
        rows.append({"file_name": f"{i:03d}.png", "text": f"picture {i}"})
    (root / "images" / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "classes.json").write_text(json.dumps(["a", "b", "c", "d", "e"]))
    (root / "notes.bin").write_bytes(b"\0")


def test_pack_tar_roundtrip_resizes_and_renames(tmp_path):
    src = tmp_path / "src"
    make_dataset(src)
    run("pack.py", "pack", src, "-o", tmp_path / "a.tar", "--size", 20, "--workers", 1)
    run("pack.py", "pack", src, "-o", tmp_path / "b.tar", "--size", 20, "--workers", 2)
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    r = run("pack.py", "unpack", tmp_path / "a.tar", "-o", tmp_path / "u")
    assert "unpacked" in r.stderr
    u = tmp_path / "u"
    rows = read_jsonl(u / "images" / "metadata.jsonl")
    assert [r["file_name"] for r in rows] == [f"{i:03d}.jpg" for i in range(6)]
    assert rows[2]["text"] == "picture 2"
    assert not (u / "notes.bin").exists() and (u / "classes.json").exists()
    for r in rows:
        im = Image.open(u / "images" / r["file_name"])
        assert im.format == "JPEG" and im.size == (20, 20)
        top = np.asarray(im.convert("RGB"), np.float64)[:8].mean((0, 1))
        assert np.abs(top - (200, 30, 30)).max() < 12
        lab = np.asarray(Image.open(u / "maps" / r["file_name"].replace(".jpg", ".png")))
        want = np.zeros((20, 20), np.uint8)
        i = int(r["file_name"][:3])
        want[5:15, 3:13] = 3 + i % 2  # nearest neighbour keeps ids (no blends like 3.5)
        assert set(np.unique(lab)) == {0, 3 + i % 2}
        assert (lab == want).mean() >= 0.9  # nearest sampling may shift an edge by a pixel


def test_pack_npz_is_lossless_and_tar_splits(tmp_path):
    src = tmp_path / "src"
    make_dataset(src)
    run("pack.py", "pack", src, "-o", tmp_path / "d.npz")
    run("pack.py", "unpack", tmp_path / "d.npz", "-o", tmp_path / "u")
    for i in range(6):
        for sub in ("images", "maps"):
            a = np.asarray(Image.open(src / sub / f"{i:03d}.png"))
            b = np.asarray(Image.open(tmp_path / "u" / sub / f"{i:03d}.png"))
            assert np.array_equal(a, b)
    assert read_jsonl(tmp_path / "u" / "images" / "metadata.jsonl") == read_jsonl(src / "images" / "metadata.jsonl")
    # Split into parts of at most ~12 KiB; unpacking every part restores every file.
    r = run("pack.py", "pack", src, "-o", tmp_path / "s.tar", "--image-format", "png", "--max-mb", 0.012)
    parts = sorted(tmp_path.glob("s.*.tar"))
    assert len(parts) >= 2, r.stderr
    assert all(p.stat().st_size < 0.012 * 2**20 + 20 * 1024 for p in parts)
    for p in parts:
        run("pack.py", "unpack", p, "-o", tmp_path / "su")
    assert len(list((tmp_path / "su").rglob("*.png"))) == 12
    assert (tmp_path / "su" / "images" / "metadata.jsonl").exists()


def test_ship_casts_a_run_to_bf16_and_keeps_the_card(tmp_path):
    import torch
    from safetensors import safe_open

    from regvq_cli.engine.checkpoint import load_model, save_model
    from regvq_cli.tokenizer.model import Tokenizer
    from regvq_cli.tokenizer.presets import PRESETS

    model = Tokenizer(PRESETS["tok-test"])
    save_model(model, tmp_path / "run" / "model", info={"steps": 7})
    dest = tmp_path / "models" / "tok"
    dest.mkdir(parents=True)
    (dest / "README.md").write_text("# the card\n")
    env = {**os.environ, "PYTHONPATH": str(RECIPES.parent)}
    r = subprocess.run([sys.executable, str(RECIPES / "ship.py"), str(tmp_path / "run" / "model"), str(dest)],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert (dest / "README.md").read_text() == "# the card\n"
    shipped = load_model(dest)
    assert shipped.regvq_record["info"] == {"steps": 7}
    with safe_open(str(dest / "model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys() if f.get_tensor(k).is_floating_point()}
    assert dtypes == {torch.bfloat16}
    for (name, a), (_, b) in zip(model.state_dict().items(), shipped.state_dict().items()):
        if a.is_floating_point():
            assert torch.equal(a.to(torch.bfloat16).float(), b.float()), name
    # a folder without a card gets a minimal one, not an empty file
    r = subprocess.run([sys.executable, str(RECIPES / "ship.py"), str(tmp_path / "run" / "model"),
                        str(tmp_path / "models" / "new")], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0 and (tmp_path / "models" / "new" / "README.md").read_text().strip()
