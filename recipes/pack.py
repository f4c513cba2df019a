"""Pack a dataset folder into a small archive to carry to another machine, and unpack it back.

    python recipes/pack.py pack DIR -o data.tar [--size 128] [--quality 90] [--max-mb 60]
    python recipes/pack.py pack DIR -o data.npz --format npz [--size 128]
    python recipes/pack.py unpack data.tar -o DIR          (or data.000.tar, or data.npz)

What goes in: every image under DIR (resized so its shorter side is --size when given, Lanczos),
every label map (a PNG under a folder named maps/ or masks/: kept lossless, resized with nearest
neighbour to the same geometry as its image), and the text files (metadata.jsonl, *.json, *.csv,
*.txt, *.md). Other files are left out and counted.

tar format: images re-encoded as JPEG (--quality, 4:4:4 chroma) or kept/PNG with
--image-format; deterministic (sorted members, zero times and owners), so the same folder packs
to the same bytes. With --max-mb the archive is split into NAME.000.tar, NAME.001.tar, ... each
under that size; unpack any one of them (or all in turn) into the same folder.
npz format: uint8 arrays, lossless: `images` [N, H, W, 3] (or [N, H, W] when every image is
grayscale), `maps` [M, H, W], their relative paths, and the text files; every image must have
the same size after --size. Flat synthetic pictures compress well this way; photos do not.
When an image changes extension (.png -> .jpg in a tar, anything -> .png from an npz), the
`file_name` column of the metadata.jsonl beside it is rewritten to match.
Sizes (files, bytes in, bytes out) are reported on stderr.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

import _common as C

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
TEXT_EXTS = {".json", ".jsonl", ".csv", ".txt", ".md"}
MAP_FOLDERS = {"maps", "masks"}
CARRY_LIMIT = 64 * 2**20


def is_map(rel: str) -> bool:
    return any(part in MAP_FOLDERS for part in PurePosixPath(rel).parts[:-1])


def list_files(src: Path) -> tuple[list[str], list[str], list[str], list[str]]:
    """Relative POSIX paths under src, sorted: (images, maps, text files, others)."""
    images, maps, texts, other = [], [], [], []
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if f.startswith("."):
                continue
            rel = (Path(root) / f).relative_to(src).as_posix()
            ext = Path(f).suffix.lower()
            if ext in IMAGE_EXTS:
                (maps if is_map(rel) and ext == ".png" else images).append(rel)
            elif ext in TEXT_EXTS:
                texts.append(rel)
            else:
                other.append(rel)
    return sorted(images), sorted(maps), sorted(texts), sorted(other)


def target_size(w: int, h: int, size: int | None) -> tuple[int, int]:
    """(w, h) with the shorter side scaled to `size` (unchanged when size is None)."""
    if not size:
        return w, h
    s = size / min(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def load_image(path: Path, size: int | None) -> Image.Image:
    """An image as RGB (or L when it is grayscale), resized to `size` on its shorter side."""
    with Image.open(path) as im:
        im.load()
        mode = "L" if im.mode in ("L", "LA", "1", "I;16", "I") else "RGB"
        if im.mode in ("RGBA", "LA", "P") and mode == "RGB":
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, im)
        im = im.convert(mode)
    ts = target_size(im.width, im.height, size)
    return im if ts == im.size else im.resize(ts, Image.Resampling.LANCZOS)


def load_map(path: Path, size: int | None) -> Image.Image:
    with Image.open(path) as im:
        im.load()
        if im.mode not in ("L", "P"):
            raise SystemExit(f"{path}: label maps must be L or P PNGs (got {im.mode})")
        im = Image.fromarray(np.asarray(im))  # palette indices as plain ids
    ts = target_size(im.width, im.height, size)
    return im if ts == im.size else im.resize(ts, Image.Resampling.NEAREST)


def rewrite_metadata(rel: str, data: bytes, renames: dict[str, str]) -> bytes:
    """Update file_name in a metadata.jsonl whose images were renamed."""
    if PurePosixPath(rel).name != "metadata.jsonl" or not renames:
        return data
    folder = PurePosixPath(rel).parent
    lines = []
    for line in data.decode("utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            full = (folder / row["file_name"]).as_posix() if str(folder) != "." else row["file_name"]
            if full in renames:
                new = PurePosixPath(renames[full])
                row["file_name"] = new.relative_to(folder).as_posix() if str(folder) != "." else new.as_posix()
            line = json.dumps(row, ensure_ascii=False)
        lines.append(line)
    return ("\n".join(lines) + "\n").encode("utf-8")


def _tarinfo(name: str, n: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = n, 0, 0o644, 0, 0, "", ""
    return ti


def pack_tar(src: Path, out: Path, size: int | None, quality: int, image_format: str,
             max_mb: float | None, workers: int) -> list[Path]:
    images, maps, texts, other = list_files(src)

    def encode(k: int) -> tuple[str, bytes]:
        if k < len(images):
            rel = images[k]
            ext = Path(rel).suffix.lower()
            if image_format == "keep" and size is None:
                return rel, (src / rel).read_bytes()
            im = load_image(src / rel, size)
            buf = io.BytesIO()
            fmt = {"jpg": "jpg", "png": "png"}.get(image_format, "png" if ext == ".png" else "jpg")
            if fmt == "jpg":
                im.save(buf, format="JPEG", quality=quality, subsampling=0)
                new = str(PurePosixPath(rel).with_suffix(".jpg"))
            else:
                im.save(buf, format="PNG")
                new = str(PurePosixPath(rel).with_suffix(".png"))
            return new, buf.getvalue()
        rel = maps[k - len(images)]
        buf = io.BytesIO()
        load_map(src / rel, size).save(buf, format="PNG")
        return rel, buf.getvalue()

    members: list[tuple[str, bytes]] = []
    renames: dict[str, str] = {}
    all_files = images + maps
    for k, (new, data) in enumerate(C.parallel_map(encode, len(all_files), workers, "pack")):
        if new != all_files[k]:
            renames[all_files[k]] = new
        members.append((new, data))
    for rel in texts:
        members.append((rel, rewrite_metadata(rel, (src / rel).read_bytes(), renames)))
    # Text files first, so any one part of a split archive says what the set is.
    members.sort(key=lambda m: (Path(m[0]).suffix.lower() not in TEXT_EXTS, m[0]))

    limit = int(max_mb * 2**20) if max_mb else None
    parts: list[list[tuple[str, bytes]]] = [[]]
    used = 0
    for name, data in members:
        cost = len(data) + 1024  # header and padding, roughly
        if limit and parts[-1] and used + cost > limit:
            parts.append([])
            used = 0
        parts[-1].append((name, data))
        used += cost
    paths = [out] if len(parts) == 1 else [out.with_name(f"{out.stem}.{i:03d}{out.suffix}") for i in range(len(parts))]
    for path, part in zip(paths, parts):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in part:
                tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
        os.replace(tmp, path)
    if other:
        print(f"left out {len(other)} other files (e.g. {other[0]})", file=sys.stderr)
    return paths


def pack_npz(src: Path, out: Path, size: int | None, workers: int) -> list[Path]:
    images, maps, texts, other = list_files(src)
    arrays = list(C.parallel_map(lambda k: np.asarray(load_image(src / images[k], size)), len(images), workers, "pack images"))
    marr = [np.asarray(load_map(src / m, size)) for m in maps]
    for what, lst, names in (("images", arrays, images), ("maps", marr, maps)):
        shapes = {a.shape[:2] for a in lst}
        if len(shapes) > 1:
            raise SystemExit(f"{what} have different sizes {sorted(shapes)[:3]}: pass --size to make them equal")
    if arrays and len({a.ndim for a in arrays}) > 1:  # mixed gray and colour: store all as RGB
        arrays = [np.repeat(a[..., None], 3, -1) if a.ndim == 2 else a for a in arrays]
    data = {
        "image_paths": np.array(images, dtype=str), "map_paths": np.array(maps, dtype=str),
        "text_paths": np.array(texts, dtype=str),
        "text_data": np.array([(src / t).read_text(encoding="utf-8") for t in texts], dtype=str),
    }
    if arrays:
        data["images"] = np.stack(arrays)
    if marr:
        data["maps"] = np.stack(marr)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez_compressed(tmp, **data)
    os.replace(tmp, out)
    if other:
        print(f"left out {len(other)} other files (e.g. {other[0]})", file=sys.stderr)
    return [out]


def _safe_target(dst: Path, name: str) -> Path:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts:
        raise SystemExit(f"refusing to unpack {name!r}: it leaves the target folder")
    return dst / Path(*p.parts)


def unpack(archive: Path, dst: Path) -> int:
    """Unpack a tar (or one part of a split tar) or an npz into dst; returns files written."""
    dst.mkdir(parents=True, exist_ok=True)
    n = 0
    if archive.suffix == ".npz":
        with np.load(archive, allow_pickle=False) as z:
            renames = {}
            for key, pkey in (("images", "image_paths"), ("maps", "map_paths")):
                if key not in z.files:
                    continue
                for rel, arr in zip(z[pkey], z[key]):
                    new = str(PurePosixPath(str(rel)).with_suffix(".png"))
                    if new != rel:
                        renames[str(rel)] = new
                    target = _safe_target(dst, new)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    C.save_png(arr, target)
                    n += 1
            for rel, text in zip(z["text_paths"], z["text_data"]):
                target = _safe_target(dst, str(rel))
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(rewrite_metadata(str(rel), str(text).encode("utf-8"), renames))
                n += 1
        return n
    with tarfile.open(archive) as tar:
        for m in tar:
            if not m.isfile():
                continue
            target = _safe_target(dst, m.name)
            target.parent.mkdir(parents=True, exist_ok=True)
            f = tar.extractfile(m)
            assert f is not None
            target.write_bytes(f.read())
            n += 1
    return n


def folder_bytes(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="pack.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="folder -> archive")
    p.add_argument("src", type=Path)
    p.add_argument("-o", "--out", required=True, type=Path, help="archive path (.tar or .npz)")
    p.add_argument("--format", choices=["tar", "npz"], default=None, help="default: from the --out suffix")
    p.add_argument("--size", type=int, default=None, help="resize so the shorter side is SIZE")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality in a tar (default 90)")
    p.add_argument("--image-format", choices=["jpg", "png", "keep"], default="jpg",
                   help="image encoding in a tar (default jpg; keep = jpg stays jpg, png stays png)")
    p.add_argument("--max-mb", type=float, default=None, help="split a tar into parts under this many MiB")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    u = sub.add_parser("unpack", help="archive -> folder")
    u.add_argument("archive", type=Path)
    u.add_argument("-o", "--out", required=True, type=Path, help="target folder")
    a = ap.parse_args(argv)

    if a.cmd == "pack":
        if not a.src.is_dir():
            raise SystemExit(f"{a.src} is not a folder")
        fmt = a.format or ("npz" if a.out.suffix == ".npz" else "tar")
        workers = C.default_workers() if a.workers is None else a.workers
        if fmt == "npz":
            paths = pack_npz(a.src, a.out, a.size, workers)
        else:
            paths = pack_tar(a.src, a.out, a.size, a.quality, a.image_format, a.max_mb, workers)
        n_in, b_in = folder_bytes(a.src)
        for path in paths:
            b = path.stat().st_size
            warn = "  (over the 64 MiB a call carries: use --max-mb 60 or a smaller --size)" if b > CARRY_LIMIT else ""
            print(f"{path}: {b / 2**20:.1f} MiB{warn}", file=sys.stderr)
        b_out = sum(p.stat().st_size for p in paths)
        print(f"packed {n_in} files, {b_in / 2**20:.1f} MiB -> {b_out / 2**20:.1f} MiB in {len(paths)} file(s)",
              file=sys.stderr)
    else:
        n = unpack(a.archive, a.out)
        n_out, b_out = folder_bytes(a.out)
        print(f"unpacked {n} files from {a.archive} ({a.archive.stat().st_size / 2**20:.1f} MiB) into {a.out} "
              f"({n_out} files, {b_out / 2**20:.1f} MiB there now)", file=sys.stderr)


if __name__ == "__main__":
    main()
