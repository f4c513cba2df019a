"""`regvq encode` with `engine.jpeg.resize_batch` as it was before the weights were made once per batch
(`before`, read from git by ../jpeg_at.py) or as it is (`now`); the command's arguments follow:
`python probe.py before -q encode ...`. With `compare`, instead: both versions on the same 8 batches of pictures
decoded by nvjpeg (the JPEGs of the folder given), and how many output values differ."""
import sys
from pathlib import Path

import torch

from regvq_cli.engine import jpeg

sys.path.insert(0, str(Path(__file__).parents[1]))
from jpeg_at import BEFORE_WEIGHTS_ONCE, jpeg_at  # noqa: E402

before = jpeg_at(BEFORE_WEIGHTS_ONCE)

if sys.argv[1] == "compare":
    files = sorted(Path(sys.argv[2]).glob("*.jpg"))[: 8 * 128]
    differ = total = 0
    for b in range(0, len(files), 128):
        datas = [torch.frombuffer(bytearray(f.read_bytes()), dtype=torch.uint8) for f in files[b:b + 128]]
        pictures = jpeg.decode_jpegs(datas, "cuda")
        old = before.resize_batch(pictures, 256, 256, "crop")
        new = jpeg.resize_batch(pictures, 256, 256, "crop")
        differ += int((old != new).sum())
        total += old.numel()
    print(f"values that differ: {differ} of {total}")
    sys.exit()
if sys.argv[1] == "before":
    jpeg.resize_batch = before.resize_batch
from regvq_cli.cli import main  # noqa: E402

main(sys.argv[2:])
