"""The host's CPU alone: 2,048 PNG files of 256 px pictures written by 1-16 threads, with Pillow's writer (pixels),
with engine.png (scanlines already filtered), its bytes alone (no file), written without a temporary name, and with
zlib-ng deflating where it is importable; images/s, in the folder TMPDIR names. `python threads.py [PHOTO_FOLDER]`."""
import glob
import os
import shutil
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from regvq_cli.engine import png
from regvq_cli.engine.png import filter_rows, png_bytes, write_png_file

folder = sys.argv[1] if len(sys.argv) > 1 else ".carry/photos"
pictures = [np.asarray(Image.open(f).convert("RGB").resize((256, 256))) for f in sorted(glob.glob(f"{folder}/*.jpg"))]
rows = [filter_rows(torch.from_numpy(p.copy())).numpy() for p in pictures]


def pillow(pixels, path):
    Image.fromarray(pixels).save(path, format="PNG", compress_level=1, compress_type=zlib.Z_HUFFMAN_ONLY)


def write_rows(rows, path):  # what one task of `regvq decode`'s writer threads does for each file
    write_png_file(png_bytes(rows), path)


def in_memory(rows, path):
    png_bytes(rows)


def direct(rows, path):  # no temporary name and rename: one directory entry made instead of two
    with open(path, "wb") as f:
        f.write(png_bytes(rows))


ways = [("pillow", pillow, pictures), ("rows", write_rows, rows), ("bytes", in_memory, rows), ("direct", direct, rows)]
try:
    from zlib_ng import zlib_ng
    ways.append(("rows_ng", write_rows, rows))
except ImportError:
    pass
n = 2048
for threads in (1, 4, 8, 16):
    for name, fn, data in ways:
        out = tempfile.mkdtemp()
        png.zlib = zlib_ng if name == "rows_ng" else zlib
        t = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda i: fn(data[i % len(data)], f"{out}/{i}.png"), range(n)))
        ips = n / (time.perf_counter() - t)
        shutil.rmtree(out)
        print(f"{threads:2d} threads {name:6s} {ips:8.0f} images/s", flush=True)
print("cores", len(os.sched_getaffinity(0)))
