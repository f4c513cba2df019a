"""Image batches for evaluation: 8-bit conversions and batching a list of files.

Every evaluation sees images as float tensors [B, 3, H, W] in [-1, 1] that sit exactly on the 256
levels of an 8-bit image: files are 8-bit already, and model outputs are clamped and rounded with
`quantize_8bit`, as if they had been written to PNG and read back. So metrics computed on the fly and
metrics computed later from saved files agree.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from regvq_cli.errors import RegvqError

# load_image(path, size) -> uint8 array [H, W, 3]; regvq_cli.data.images provides the standard one
LoadImage = Callable[[str, object], np.ndarray]


def uint8_to_signed(images) -> torch.Tensor:
    """uint8 [B, H, W, 3] (numpy or torch) -> float32 [B, 3, H, W] in [-1, 1] (0 -> -1, 255 -> 1)."""
    t = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if t.dtype != torch.uint8 or t.dim() != 4 or t.shape[-1] != 3:
        raise RegvqError(f"expected uint8 images [B, H, W, 3], got {t.dtype} {tuple(t.shape)}")
    return t.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def signed_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3], clamped and rounded to the nearest level."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


def quantize_8bit(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [-1, 1] and round to the 256 levels of an 8-bit image; stays float [B, 3, H, W]."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1.0


def is_path_list(source) -> bool:
    return isinstance(source, (list, tuple)) and len(source) > 0 and all(isinstance(p, (str, os.PathLike)) for p in source)


def _load(load_image: LoadImage, path, image_size) -> np.ndarray:
    try:
        return np.asarray(load_image(str(path), image_size))
    except Exception as e:
        # regvq_cli.data.images raises ImageSkip(reason); an evaluation must not silently drop images
        if hasattr(e, "reason"):
            raise RegvqError(f"cannot evaluate {path}: {e.reason}; remove it from the image set") from e
        raise


def iter_path_batches(
    paths: Sequence[str | os.PathLike],
    load_image: LoadImage,
    image_size,
    batch_size: int = 32,
) -> Iterator[torch.Tensor]:
    """Load files with `load_image(path, image_size)` and yield float batches [B, 3, H, W] in [-1, 1]."""
    for start in range(0, len(paths), batch_size):
        arrays = [_load(load_image, p, image_size) for p in paths[start : start + batch_size]]
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise RegvqError(f"images in one batch have different sizes {sorted(shapes)}; give an image size to resize them to")
        yield uint8_to_signed(np.stack(arrays))


def as_batches(
    source,
    load_image: LoadImage | None = None,
    image_size=None,
    batch_size: int = 32,
    what: str = "images",
) -> tuple[Iterable[torch.Tensor], int | None]:
    """Accept a list of file paths (with a loader) or an iterable of batches; return (batches, n or None)."""
    if is_path_list(source):
        if load_image is None:
            raise RegvqError(f"{what} were given as file paths but no image loader was passed")
        return iter_path_batches(source, load_image, image_size, batch_size), len(source)
    if isinstance(source, (str, os.PathLike)):
        raise RegvqError(f"{what}: expected a list of files or image batches, got the single path {source}")
    return source, None


def to_signed(batch) -> torch.Tensor:
    """A batch as float [B, 3, H, W] in [-1, 1]: uint8 [B, H, W, 3] is converted, float is taken as is."""
    if isinstance(batch, np.ndarray) or (isinstance(batch, torch.Tensor) and batch.dtype == torch.uint8):
        return uint8_to_signed(batch)
    if not isinstance(batch, torch.Tensor) or batch.dim() != 4 or batch.shape[1] != 3:
        shape = tuple(batch.shape) if hasattr(batch, "shape") else type(batch).__name__
        raise RegvqError(f"expected image batches [B, 3, H, W] in [-1, 1] or uint8 [B, H, W, 3], got {shape}")
    return batch.float()
