"""Images -> token shards: the work behind `regvq encode`.

The input order is fixed (sorted walk or `--files-from` order) and shard k holds a fixed slice of it, so the
work splits cleanly: every worker (a torchrun rank, or a job-array worker) takes the shards with
k % workers == worker, skips the ones already complete (resume), and writes each one atomically. Batches never
straddle shards, so a shard's tokens do not depend on where a run started: a killed and resumed run writes the
same bytes as an uninterrupted one.

Pipeline: DataLoader workers decode images on the CPU (pinned memory) while the device encodes the previous
batch; token grids stay on the device until their shard is complete (one host sync per shard); shard files
are written by a background thread. With `resize_on="device"` the workers decode but leave the resizing to
the device, and with the nvjpeg decoder they pass plain JPEGs on undecoded (`engine.jpeg`).
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from regvq_cli.data.dataset import ImageDataset, quiet_loader_worker
from regvq_cli.data.images import DEFAULT_MAX_PIXELS
from regvq_cli.data.inputs import list_inputs
from regvq_cli.data.shards import (OutputLock, RunInfo, completed_shards, inputs_fingerprint, plan_shards,
                                   shards_for_worker, write_manifest, write_shard)
from regvq_cli.engine import dist, jpeg
from regvq_cli.engine.checkpoint import file_sha256, weights_path
from regvq_cli.engine.runtime import prepare_tokenizer
from regvq_cli.errors import RegvqError


@dataclasses.dataclass
class EncodeOptions:
    size: int | None = None  # input resolution; default: the tokenizer's training size
    resize: str = "crop"
    background: tuple[int, int, int] = (255, 255, 255)
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    batch_size: int = 32
    shard_size: int = 4096
    workers: int | None = None  # DataLoader workers; default: up to 8, one per CPU core
    maps_dir: str | None = None
    num_workers: int = 1  # job-array split: this process is worker `worker_id` of `num_workers`
    worker_id: int = 0
    compile: bool = False
    channels_last: bool = False  # channels-last convolutions (faster on CPUs; not bit for bit the default layout)
    jpeg_decoder: str = "pillow"  # or "nvjpeg": JPEGs decoded on the GPU (engine/jpeg.py)
    resize_on: str = "workers"  # or "device": the workers decode, the device resizes (engine/jpeg.py)
    limit: int | None = None  # encode only the first `limit` inputs of the listing


def default_loader_workers() -> int:
    return max(0, min(8, (os.cpu_count() or 1)))


def encode_images(inputs, out_dir, tokenizer, device, dtype, opts: EncodeOptions, files_from=None, stdin=None,
                  callback=None) -> dict:
    """Encode `inputs` (folders, files, and/or a files_from list) into the token folder `out_dir`.

    `tokenizer` is a loaded Tokenizer carrying `.regvq_id` / `.regvq_path` (from `engine.resolve.load`).
    `callback(done, skipped, total)` is called after each batch. Returns the run summary.
    """
    with dist.group(device) as (rank, world):
        return _encode_images(inputs, out_dir, tokenizer, device, dtype, opts, files_from, stdin, callback, rank, world)


def _encode_images(inputs, out_dir, tokenizer, device, dtype, opts, files_from, stdin, callback, rank, world) -> dict:
    t0 = time.perf_counter()
    if world > 1 and opts.num_workers > 1:
        raise RegvqError("use either torchrun or --num-workers/--worker-id, not both")
    worker, workers = (rank, world) if world > 1 else (opts.worker_id, opts.num_workers)
    size = opts.size or tokenizer.config.image_size
    f = tokenizer.downsample_factor
    if size % f:
        lower, upper = size // f * f, size // f * f + f
        raise RegvqError(f"--size {size} is not a multiple of the tokenizer's downsampling factor {f}; use "
                         + (f"{lower} or {upper}" if lower else f"{upper}"))
    grid = tokenizer.grid_size(size)
    listing = list_inputs(inputs, files_from=files_from, maps_dir=opts.maps_dir, stdin=stdin)
    if opts.limit is not None:
        listing.truncate(opts.limit)
    marks = {"listed": time.perf_counter()}  # when each phase ended (see "timings" below)
    decoder = jpeg.pick_decoder(opts.jpeg_decoder, device)
    preprocessing = {"size": [size, size], "resize": opts.resize, "background": list(opts.background),
                     "max_pixels": opts.max_pixels}
    if decoder == "nvjpeg":  # other pixels than Pillow's; a Pillow run records no decoder, as before it existed
        preprocessing["jpeg_decoder"] = "nvjpeg"
    if opts.resize_on not in ("workers", "device"):
        raise RegvqError(f"unknown --resize-on {opts.resize_on!r}; use workers or device")
    if opts.resize_on == "device":  # likewise: close to the workers' pixels, not the same
        preprocessing["resize_on"] = "device"
    run = RunInfo(
        tokenizer_id=str(tokenizer.regvq_id),
        tokenizer_sha256=file_sha256(weights_path(tokenizer.regvq_path)),
        grid=grid,
        codebook_size=tokenizer.codebook_size,
        num_inputs=len(listing),
        shard_size=opts.shard_size,
        preprocessing=preprocessing,
        labels=listing.has_labels,
        label_names=listing.label_names,
        captions=listing.has_captions,
        segmap_size=grid if listing.maps_dir else None,
        inputs_sha256=inputs_fingerprint(listing.keys()),
    )
    lock = OutputLock(out_dir, worker=(worker, workers) if workers > 1 else None).acquire()
    try:
        done_before = set(completed_shards(out_dir, run))
        mine = shards_for_worker(plan_shards(len(listing), opts.shard_size), worker, workers)
        todo = [p for p in mine if p[0] not in done_before]
        marks["loop"] = time.perf_counter()  # reset by _encode_shards when there is work: set up until then
        stats = _encode_shards(listing, run, todo, out_dir, tokenizer, device, dtype, opts, size, callback, marks)
        marks["encoded"] = time.perf_counter()
        stats["shards_reused"] = len(mine) - len(todo)
        counts = dist.all_sum([stats["encoded"], stats["skipped"]], device)
        stats["encoded"], stats["skipped"] = int(counts[0]), int(counts[1])
        dist.barrier()
        manifest = None
        if rank == 0:  # under torchrun rank 0 alone; a job-array worker writes it if it finishes last
            have = set(completed_shards(out_dir))
            if all(k in have for k, _, _ in plan_shards(len(listing), opts.shard_size)):
                manifest = write_manifest(out_dir, run)
    finally:
        lock.release()
    elapsed = time.perf_counter() - t0
    first = marks.get("first_batch", marks["encoded"])
    # seconds per phase: listing the inputs; setting up (fingerprinting the inputs and the weights, the resume check,
    # the tokenizer on its device, the loader); waiting for the first batch (loader workers starting and decoding
    # it); encoding the rest; after the loop (waiting for the shard writes and the other ranks, the manifest)
    timings = {"listing": marks["listed"] - t0, "setup": marks["loop"] - marks["listed"],
               "first_batch": first - marks["loop"], "encoding": marks["encoded"] - first,
               "finishing": t0 + elapsed - marks["encoded"]}
    summary = {
        "out_dir": str(out_dir),
        "inputs": len(listing),
        "encoded_this_run": stats["encoded"],
        "skipped_this_run": stats["skipped"],
        "shards_written": stats["shards_written"],
        "shards_reused": stats["shards_reused"],
        "seconds": round(elapsed, 3),
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "images_per_s": round(stats["encoded"] / max(stats["compute_seconds"], 1e-9), 2),
        "tokenizer": run.tokenizer_id,
        "grid": list(grid),
        "codebook_size": run.codebook_size,
        "device": str(device),
        "workers": workers,
        "manifest": None,
    }
    if manifest is not None:
        summary.update(manifest=str(Path(out_dir) / "manifest.json"), total_encoded=manifest["count"],
                       total_skipped=manifest["num_skipped"], skipped=manifest["skipped"])
    return summary


class _Positions(Sequence):
    """The input indices of the shards to do, in order, computed on demand: position j -> input index.

    A list of them would cost tens of bytes per input, gigabytes for a hundred million files."""

    def __init__(self, todo):
        self.starts = [start for _, start, _ in todo]
        self.offsets = list(itertools.accumulate((stop - start for _, start, stop in todo), initial=0))

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, j: int) -> int:
        k = bisect.bisect_right(self.offsets, j) - 1
        return self.starts[k] + j - self.offsets[k]


class _ShardBatches:
    """Dataset positions, batch by batch; batches never cross a shard boundary. Made lazily."""

    def __init__(self, todo, batch_size: int):
        self.sizes = [stop - start for _, start, stop in todo]
        self.batch_size = batch_size

    def __iter__(self):
        pos = 0
        for n in self.sizes:
            for b in range(0, n, self.batch_size):
                yield list(range(pos + b, pos + min(b + self.batch_size, n)))
            pos += n

    def __len__(self) -> int:
        return sum(-(-n // self.batch_size) for n in self.sizes)


def image_batches(listing, todo, opts: EncodeOptions, size: int, segmap_size=None, pin_memory: bool = False):
    """The decoding pipeline: a DataLoader over the inputs of the shards `todo` ((k, start, stop), in order),
    batches that never cross a shard boundary, decoded by `opts.workers` processes: see `ImageDataset.collate`
    (decoded uint8 images [n, 3, size, size], or with opts.resize_on == "device" at their decoded sizes, and
    with opts.jpeg_decoder == "nvjpeg" the bytes of plain JPEGs)."""
    dataset = ImageDataset(listing, size, opts.resize, opts.background, opts.max_pixels,
                           segmap_size=segmap_size, indices=_Positions(todo),
                           jpeg_passthrough=opts.jpeg_decoder == "nvjpeg",
                           fit_on_device=opts.resize_on == "device")
    workers = default_loader_workers() if opts.workers is None else opts.workers
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=_ShardBatches(todo, opts.batch_size), num_workers=workers,
        collate_fn=dataset.collate, pin_memory=pin_memory, prefetch_factor=4 if workers else None,
        persistent_workers=False, worker_init_fn=quiet_loader_worker,
    )


def _encode_shards(listing, run, todo, out_dir, tokenizer, device, dtype, opts, size, callback, marks) -> dict:
    """Encode and write the shards `todo`; sets marks["loop"] (its start) and marks["first_batch"] (perf_counter)."""
    stats = {"encoded": 0, "skipped": 0, "shards_written": 0, "compute_seconds": 0.0}
    if not todo:
        return stats
    loader = image_batches(listing, todo, opts, size, run.segmap_size, pin_memory=device.type == "cuda")
    runner = prepare_tokenizer(tokenizer, device, dtype, compile=opts.compile, channels_last=opts.channels_last)
    shard_of = {k: (start, stop) for k, start, stop in todo}
    order = iter([k for k, _, _ in todo])
    current, parts = next(order), _ShardParts()
    total = len(loader.dataset)
    t_start = marks["loop"] = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending = []
        for batch in loader:  # batches follow the shards in order (see _shard_batches)
            marks.setdefault("first_batch", time.perf_counter())
            # images: uint8 [n_ok, 3, size, size] in input order, on the host (pinned for a GPU) or, when resized
            # or decoded there, on the device
            images, ok, reasons = jpeg.batch_pixels(batch, device, (size, size), opts.resize, opts.background,
                                                    opts.max_pixels)
            for i, good, reason in zip(batch["i"].tolist(), ok.tolist(), reasons):
                if not good:
                    parts.skipped.append((listing.key(i), reason))
            if ok.any():
                parts.index += batch["i"][ok].tolist()
                parts.tokens.append(runner.encode_uint8(images))
                if run.segmap_size is not None:
                    parts.segmaps.append(batch["segmap"][ok].numpy())
            stats["encoded"] += int(ok.sum())
            stats["skipped"] += int((~ok).sum())
            start, stop = shard_of[current]
            if len(parts.index) + len(parts.skipped) == stop - start:
                pending.append(writer.submit(_write, out_dir, current, run, listing, parts))
                stats["shards_written"] += 1
                for f in [f for f in pending if f.done()]:
                    f.result()  # surface a write error (a full disk) as soon as it happens
                    pending.remove(f)
                current, parts = next(order, None), _ShardParts()
            if callback is not None:
                callback(stats["encoded"] + stats["skipped"], stats["skipped"], total)
        for f in pending:
            f.result()
    stats["compute_seconds"] = time.perf_counter() - t_start
    return stats


@dataclasses.dataclass
class _ShardParts:
    index: list = dataclasses.field(default_factory=list)
    tokens: list = dataclasses.field(default_factory=list)  # device tensors [b, h, w]
    segmaps: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)

    def tokens_numpy(self, grid) -> np.ndarray:
        if not self.tokens:
            return np.zeros((0, *grid), dtype=np.int64)
        return torch.cat(self.tokens).cpu().numpy()


def _write(out_dir, k, run, listing, parts: _ShardParts):
    rows = parts.index  # rows and skipped inputs are both in input order, as the batches came
    extra = {}
    if run.labels:
        extra["labels"] = listing.labels[rows] if rows else np.zeros(0, dtype=np.int64)
    if run.captions:
        extra["captions"] = [listing.caption(i) for i in rows]
    if run.segmap_size is not None:
        maps = np.concatenate(parts.segmaps) if parts.segmaps else np.zeros((0, *run.segmap_size), np.int64)
        extra["segmaps"] = maps.astype(np.uint8 if maps.size == 0 or maps.max() < 256 else np.int16)
    return write_shard(out_dir, k, run, parts.tokens_numpy(run.grid), [listing.key(i) for i in rows], rows,
                       skipped=parts.skipped, **extra)
