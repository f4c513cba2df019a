"""The resident memory `resize_batch` adds at its peak, on the CPU, for 128 pictures of 256-512 px resized to
256 px: `python docs/h200/2026-11-30/resize_weights/peak_memory.py before|now` (one process each; `before` reads
the old function from git through ../jpeg_at.py)."""
import random
import resource
import sys
from pathlib import Path

import torch

torch.set_num_threads(2)
if sys.argv[1] == "before":
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from jpeg_at import BEFORE_WEIGHTS_ONCE, jpeg_at

    jpeg = jpeg_at(BEFORE_WEIGHTS_ONCE)
else:
    from regvq_cli.engine import jpeg
rng = random.Random(0)
pictures = []
for _ in range(128):
    side = rng.randint(256, 512)
    pictures.append(torch.randint(0, 256, (3, int(side * rng.uniform(0.75, 1)), side), dtype=torch.uint8))
start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
jpeg.resize_batch(pictures, 256, 256, "crop")
print(f"{sys.argv[1]}: peak resident memory grew {(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start) / 1024:.0f} MB")
