"""torch Datasets over token folders (for prior training) and over image listings (for encode)."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from regvq_cli.data.images import (DEFAULT_MAX_PIXELS, ImageSkip, decode_image, load_image, load_segmap,
                                  passthrough_jpeg)
from regvq_cli.data.inputs import Inputs
from regvq_cli.data.shards import ShardReader, close_inherited_locks


def quiet_loader_worker(worker_id: int) -> None:
    """A DataLoader worker_init_fn for the commands' image loaders, so that a command stopped by Ctrl-C or SIGTERM
    ends with its own one-line message and no traceback:

    - SIGTERM ends the worker with exit status 0: a scheduler signals the whole process group, and a worker the
      signal killed made torch raise "DataLoader worker ... is killed by signal" in the main process wherever it
      was (a training step that was about to checkpoint, the loader's shut-down). The batches already prefetched
      stay readable. (Ignoring the signal instead would hang the interpreter's exit, whose multiprocessing clean-up
      stops loader workers still alive with SIGTERM and waits for them.)
    - a broken connection to the main process is not printed: stopped while a worker hands it a batch, the main
      process closes its end mid-transfer, and the worker's resource-sharing thread (multiprocessing.resource_sharer,
      which reports through sys.excepthook) printed ConnectionResetError.
    - the output folder's lock is not held by the worker's copy of its descriptor (`close_inherited_locks`).
    """
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))
    close_inherited_locks()  # the output folder's lock ends with the main process, not with its last worker
    default = sys.excepthook

    def hook(exc_type, exc, tb):
        if not issubclass(exc_type, (ConnectionError, EOFError)):
            default(exc_type, exc, tb)

    sys.excepthook = hook


class TokenDataset(Dataset):
    """Rows of a token folder or shard file, memory-mapped.

    item -> {"tokens": int64 [h, w], "key": str, "index": int64 scalar, and where the folder
    has them "label": int64 scalar, "caption": str, "segmap": int64 [H, W]}. The default
    collate gives batched tensors and lists of strings. Token ids outside the codebook raise
    RegvqError naming the shard and row.
    """

    def __init__(self, path: str | os.PathLike):
        self.reader = ShardReader(path)
        self.grid = self.reader.grid
        self.codebook_size = self.reader.codebook_size
        self.label_names = self.reader.label_names

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.reader[i]
        out: dict[str, Any] = {
            "tokens": torch.from_numpy(row["tokens"]),
            "key": row["key"],
            "index": torch.tensor(row["index"], dtype=torch.int64),
        }
        if "label" in row:
            out["label"] = torch.tensor(row["label"], dtype=torch.int64)
        if "caption" in row:
            out["caption"] = row["caption"]
        if "segmap" in row:
            out["segmap"] = torch.from_numpy(row["segmap"].astype(np.int64))
        return out


class ImageDataset(Dataset):
    """Images of an input listing, decoded for encoding (use with DataLoader workers).

    item -> {"i": position in the listing, "image": uint8 [3, H, W] (absent when skipped),
    "ok": bool, "reason": "" or the skip reason, and "segmap" [h, w] int64 when
    `segmap_size` is given}. A skipped input never raises: its reason goes to the manifest.

    With `jpeg_passthrough`, a JPEG that `passthrough_jpeg` accepts is not decoded here: its
    item has "jpeg" (the file's bytes) and "orientation" (EXIF, 1 = upright) instead of
    "image", for a decoder on the device (engine.jpeg). With `fit_on_device`, the other inputs
    are decoded but not resized: "raw" uint8 [h, w, 3] at the decoded size (`decode_image`)
    instead of "image", for `engine.jpeg.resize_batch`. `collate` batches such mixed items.
    """

    def __init__(
        self,
        inputs: Inputs,
        size: int | tuple[int, int],
        resize: str = "crop",
        background: tuple[int, int, int] = (255, 255, 255),
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        segmap_size: tuple[int, int] | None = None,
        indices: range | None = None,
        jpeg_passthrough: bool = False,
        fit_on_device: bool = False,
    ):
        self.inputs = inputs
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.resize = resize
        self.background = tuple(background)
        self.max_pixels = max_pixels
        self.segmap_size = segmap_size
        self.indices = range(len(inputs)) if indices is None else indices
        self.jpeg_passthrough = jpeg_passthrough
        self.fit_on_device = fit_on_device

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> dict[str, Any]:
        i = self.indices[j]
        out: dict[str, Any] = {"i": i, "ok": True, "reason": ""}
        try:
            path = self.inputs.path(i)
            jpeg = passthrough_jpeg(path, self.max_pixels) if self.jpeg_passthrough else None
            if jpeg is None and self.fit_on_device:
                out["raw"] = torch.from_numpy(decode_image(path, self.size, self.resize, self.background,
                                                           self.max_pixels))
            elif jpeg is None:
                img = load_image(path, self.size, self.resize, self.background, self.max_pixels)
                out["image"] = torch.from_numpy(img).permute(2, 0, 1).contiguous()
            else:
                out["jpeg"], out["orientation"] = jpeg
            if self.segmap_size is not None:
                mp = self.inputs.map_path(i)
                if mp is None:
                    raise ImageSkip("segmap missing: no maps folder given")
                out["segmap"] = self._segmap(mp)
        except ImageSkip as e:
            for key in ("image", "jpeg", "orientation", "raw"):  # a picture read before its map failed too
                out.pop(key, None)
            out.update(ok=False, reason=e.reason)  # no pixels: `collate` batches the readable ones
            if self.segmap_size is not None:
                out["segmap"] = torch.zeros(self.segmap_size, dtype=torch.int64)
        return out

    def _segmap(self, path) -> torch.Tensor:
        """The map at the pictures' size and crop, then nearest-resized to the token grid [h, w] int64: as `regvq
        sample` makes a map's condition, so the prior trains on maps lined up with their pictures as it samples
        with (resized straight to the grid, the crop's offset rounded to whole cells, not pixels)."""
        from regvq_cli.priors.conditioning import resize_segmap

        seg = torch.from_numpy(load_segmap(path, self.size, self.resize).astype(np.int64))
        return resize_segmap(seg[None], self.segmap_size)[0]

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Items -> one batch for `regvq encode` (the default collate cannot stack the JPEGs' bytes).

        {"i": int64 [b], "ok": bool [b], "reason": b strings,
         "image": uint8 [n_image, 3, H, W], the decoded inputs only (ok, not JPEG bytes), in order,
         "jpeg": bool [b], the inputs passed on as JPEG bytes (ok until they are decoded),
         "jpeg_bytes": uint8 [total], those files one after another, "jpeg_sizes": int64 [n_jpeg],
         "orientation": int64 [n_jpeg],
         "raw": bool [b], the inputs decoded but not resized, "raw_pixels": uint8 [total], their pixels
         [h, w, 3] one after another, "raw_shapes": int64 [n_raw, 2] their (h, w),
         and "segmap": int64 [b, h, w] with maps}
        Skipped inputs carry no pixels.
        """
        decoded = [it["image"] for it in items if "image" in it]
        jpegs = [it for it in items if "jpeg" in it]
        raws = [it["raw"] for it in items if "raw" in it]
        out = {
            "i": torch.tensor([it["i"] for it in items], dtype=torch.int64),
            "ok": torch.tensor([it["ok"] for it in items], dtype=torch.bool),
            "reason": [it["reason"] for it in items],
            # default_collate stacks into shared memory in a worker process: no copy on the way out
            "image": default_collate(decoded) if decoded else torch.zeros((0, 3, *self.size), dtype=torch.uint8),
            "jpeg": torch.tensor(["jpeg" in it for it in items], dtype=torch.bool),
            "jpeg_bytes": torch.from_numpy(np.frombuffer(bytearray().join(it["jpeg"] for it in jpegs), np.uint8)),
            "jpeg_sizes": torch.tensor([len(it["jpeg"]) for it in jpegs], dtype=torch.int64),
            "orientation": torch.tensor([it["orientation"] for it in jpegs], dtype=torch.int64),
            "raw": torch.tensor(["raw" in it for it in items], dtype=torch.bool),
            "raw_pixels": torch.cat([r.flatten() for r in raws]) if raws else torch.zeros(0, dtype=torch.uint8),
            "raw_shapes": torch.tensor([r.shape[:2] for r in raws], dtype=torch.int64).reshape(-1, 2),
        }
        if self.segmap_size is not None:
            out["segmap"] = default_collate([it["segmap"] for it in items])
        return out
