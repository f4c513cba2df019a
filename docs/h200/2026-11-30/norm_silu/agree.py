"""Token agreement of two token folders of the same inputs: `python agree.py A B` prints the fraction of positions
with the same code and the fraction of images with every position the same."""
import sys
from pathlib import Path

import numpy as np

from regvq_cli.data.shards import read_shard

same = total = whole = images = 0
for path in sorted(Path(sys.argv[1]).glob("shard-*.safetensors")):
    a = read_shard(path)["tensors"]["tokens"]
    b = read_shard(Path(sys.argv[2]) / path.name)["tensors"]["tokens"]
    eq = np.asarray(a) == np.asarray(b)
    same, total = same + eq.sum(), total + eq.size
    whole, images = whole + eq.reshape(len(eq), -1).all(1).sum(), images + len(eq)
print(f"{sys.argv[1]} vs {sys.argv[2]}: {same / total:.5f} of positions, {whole / images:.4f} of images identical "
      f"({images} images)")
