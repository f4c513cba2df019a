"""Images -> token shards: the work behind `regvq encode`.

The input order is fixed (sorted walk or `--files-from` order) and shard k holds a fixed slice of it, so the
work splits cleanly by shard: a job-array worker takes the shards with k % workers == worker; torchrun ranks take
the next shard not yet taken, one at a time, from a counter they share (`_ClaimedShards`), so a faster GPU takes
more of them and the ranks finish together. Every worker skips the shards already complete (resume) and writes
each one atomically. Batches never straddle shards, so a shard's tokens depend neither on where a run started nor
on which process made them: a killed and resumed run, or a run on another number of processes, writes the same
bytes as one uninterrupted process.

Pipeline: DataLoader workers decode images on the CPU (pinned memory) while the device encodes the previous
batch; token grids stay on the device until their shard is complete (one host sync per shard); shard files
are written by a background thread. With `resize_on="device"` the workers decode but leave the resizing to
the device, and with the nvjpeg decoder they pass plain JPEGs on undecoded (`engine.jpeg`); then two threads of
this process make a batch's pixels on the device, one decoding, one resizing, ahead of the tokenizer (`_Ahead`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from regvq_cli.data.dataset import ImageDataset, quiet_loader_worker
from regvq_cli.data.images import DEFAULT_MAX_PIXELS
from regvq_cli.data.inputs import list_inputs
from regvq_cli.data.shards import (OutputLock, RunInfo, changed_shards, completed_shards, drop_shards,
                                   inputs_fingerprint, plan_shards, resume_run, shard_index, shards_for_worker,
                                   write_manifest, write_shard)
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
    channels_last: bool | None = None  # channels-last activations; default: on a GPU (engine/runtime.py)
    cuda_graphs: bool = True  # the eager tokenizer replayed as CUDA graphs (on a CUDA device; see engine/runtime.py)
    jpeg_decoder: str = "pillow"  # or "nvjpeg": JPEGs decoded on the GPU (engine/jpeg.py)
    resize_on: str = "workers"  # or "device": the workers decode, the device resizes (engine/jpeg.py)
    limit: int | None = None  # encode only the first `limit` inputs of the listing


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
        # a finished run's shards that differ from its manifest are encoded again (rank 0 checks; all ranks wait); a
        # job-array worker encodes its own again, and leaves the others' and the manifest to their workers
        changed = changed_shards(out_dir) if rank == 0 else []
        others = [name for name in changed if shard_index(name) % workers != worker] if workers > 1 else []
        changed = [name for name in changed if name not in others]
        drop_shards(out_dir, changed)
        dist.barrier()
        run, done = resume_run(out_dir, run)  # the same tokenizer named another way keeps the folder's name
        done_before = set(done)
        plan = plan_shards(len(listing), opts.shard_size)
        if world > 1:  # torchrun: each rank takes the next shard left from a counter all ranks share
            shards = _ClaimedShards(plan, done_before, dist.shared_counter("encode-shards"))
            left = [p for p in plan if p[0] not in done_before]  # every rank's: the progress counts them all
        else:  # one process, or a job-array worker: its fixed share
            shards = _FixedShards(plan, done_before, worker, workers)
            left = shards.todo
        total = sum(stop - start for _, start, stop in left)
        marks["loop"] = time.perf_counter()  # reset by _encode_shards when there is work: set up until then
        stats = _encode_shards(listing, run, plan, shards, out_dir, tokenizer, device, dtype, opts, size,
                               _Progress(callback, total, shared=world > 1), marks)
        marks["encoded"] = time.perf_counter()
        stats["shards_reused"] = shards.reused
        # under torchrun: each rank's own rate (a slow GPU or host shows), then all ranks' counts
        by_rank = dist.all_gather(_rate(stats))
        counts = dist.all_sum([stats[k] for k in _SUMMED], device)
        stats.update({k: int(v) for k, v in zip(_SUMMED, counts)})
        dist.barrier()
        manifest = None
        if rank == 0:  # under torchrun rank 0 alone; a job-array worker writes it if it finishes last
            have = set(completed_shards(out_dir))
            if all(k in have for k, _, _ in plan) and not others:
                manifest = write_manifest(out_dir, run)
    finally:
        lock.release()
    elapsed = time.perf_counter() - t0
    first = marks.get("first_batch", marks["encoded"])
    # seconds per phase: listing the inputs; setting up (fingerprinting the inputs and the weights, the resume check,
    # the tokenizer on its device, the loader, on a GPU the tokenizer's first call, _warm_up); waiting for the first
    # batch (loader workers starting and decoding it; on the device paths its pixels made, nvjpeg's decoder with
    # them); encoding the rest; after the loop (waiting for the shard writes and the other ranks, the manifest)
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
        # of timings["encoding"], the seconds the loop waited for its next batch's pixels (the decoding workers, and
        # on the device paths the pixel threads; rank 0's under torchrun): most of it when they, not the tokenizer,
        # are the limit
        "input_wait": round(stats["input_wait_seconds"], 3),
        "images_per_s": _rate(stats),  # all ranks' images over rank 0's loop time
        "tokenizer": run.tokenizer_id,
        "grid": list(grid),
        "codebook_size": run.codebook_size,
        "device": str(device),
        "workers": workers,
        "manifest": None,
        "shards_changed": changed,  # shards that differed from the finished run's manifest: encoded again
        "shards_changed_for_other_workers": others,  # a job-array worker's view: theirs to encode again
    }
    if world > 1:
        summary["images_per_s_by_rank"] = by_rank
    if manifest is not None:
        summary.update(manifest=str(Path(out_dir) / "manifest.json"), total_encoded=manifest["count"],
                       total_skipped=manifest["num_skipped"], skipped=manifest["skipped"])
    else:  # a job-array worker that did not finish last: the inputs it skipped itself, this run
        summary["skipped"] = stats["skipped_items"]
    return summary


_SUMMED = ("encoded", "skipped", "shards_written", "shards_reused")  # the summary's counts


def _rate(stats: dict) -> float:
    """Images encoded per second of the loop, as the summary gives it."""
    return round(stats["encoded"] / max(stats["compute_seconds"], 1e-9), 2)


class _FixedShards:
    """The shards left to a lone process or to job-array worker `worker` of `workers` (k % workers == worker), in
    order; `reused`: how many of its shards were complete already."""

    def __init__(self, plan, done, worker: int, workers: int):
        mine = shards_for_worker(plan, worker, workers)
        self.todo = [p for p in mine if p[0] not in done]
        self.reused = len(mine) - len(self.todo)

    def __iter__(self):
        return iter(self.todo)


class _ClaimedShards:
    """The shards of `plan` not in `done`, handed out one at a time to whichever torchrun rank asks first, through
    `counter` (an `engine.dist.SharedCounter` every rank holds): a rank's loader takes its next shard when it needs
    more inputs, so faster ranks take more shards than slower ones and all of them finish within about a shard of
    each other. Every plan entry goes to exactly one rank; a rank that draws a shard complete before the run counts
    it in `reused` and draws again. Iterate once."""

    def __init__(self, plan, done, counter):
        self.plan, self.done, self.counter = plan, done, counter
        self.reused = 0

    def __iter__(self):
        while (j := self.counter.add(1) - 1) < len(self.plan):
            if self.plan[j][0] in self.done:
                self.reused += 1
            else:
                yield self.plan[j]


class _Progress:
    """This run's inputs done and skipped so far, for the caller's `callback(done, skipped, total)`: this
    process's own, or with `shared` (torchrun) all ranks' together, through two counters in the process group's
    store that each rank adds its batches to; then `total` is every rank's work too."""

    def __init__(self, callback, total: int, shared: bool):
        self.callback, self.total = callback, total
        self.done = self.skipped = 0
        self.counters = (dist.shared_counter("encode-done"), dist.shared_counter("encode-skipped")) if shared else None

    def add(self, done: int, skipped: int) -> None:
        if self.counters is None:
            self.done, self.skipped = self.done + done, self.skipped + skipped
        else:  # every rank adds, so that the one that draws the bar sees them all
            self.done, self.skipped = self.counters[0].add(done), self.counters[1].add(skipped)
        if self.callback is not None:
            self.callback(self.done, self.skipped, self.total)


class _ShardBatches:
    """Input indices, batch by batch, shard after shard of `shards` ((k, start, stop), a list or drawn lazily);
    batches never cross a shard boundary. Made lazily: no list of every input, whatever the run's size."""

    def __init__(self, shards, batch_size: int):
        self.shards, self.batch_size = shards, batch_size

    def __iter__(self):
        for _, start, stop in self.shards:
            for b in range(start, stop, self.batch_size):
                yield list(range(b, min(b + self.batch_size, stop)))


def image_batches(listing, shards, opts: EncodeOptions, size: int, segmap_size=None, pin_memory: bool = False):
    """The decoding pipeline: a DataLoader over the inputs of `shards` ((k, start, stop), in order; an iterable
    drawn as the loader goes), batches that never cross a shard boundary, decoded by `opts.workers` processes:
    see `ImageDataset.collate` (decoded uint8 images [n, 3, size, size], or with opts.resize_on == "device" at
    their decoded sizes, and with opts.jpeg_decoder == "nvjpeg" the bytes of plain JPEGs)."""
    dataset = ImageDataset(listing, size, opts.resize, opts.background, opts.max_pixels,
                           segmap_size=segmap_size,
                           jpeg_passthrough=opts.jpeg_decoder == "nvjpeg",
                           fit_on_device=opts.resize_on == "device")
    workers = opts.workers
    if workers is None:  # pin_memory: the batches go to a GPU
        workers = dist.default_loader_workers(pin_memory and opts.jpeg_decoder == "pillow" and opts.resize_on == "workers")
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=_ShardBatches(shards, opts.batch_size), num_workers=workers,
        collate_fn=dataset.collate, pin_memory=pin_memory, prefetch_factor=4 if workers else None,
        persistent_workers=False, worker_init_fn=quiet_loader_worker,
    )


def _encode_shards(listing, run, plan, shards, out_dir, tokenizer, device, dtype, opts, size, progress,
                   marks) -> dict:
    """Encode and write `shards` (an iterable of entries (k, start, stop) of the run's `plan`); sets marks["loop"]
    (its start) and marks["first_batch"] (perf_counter)."""
    stats = {"encoded": 0, "skipped": 0, "shards_written": 0, "compute_seconds": 0.0, "input_wait_seconds": 0.0,
             "skipped_items": []}  # this process's skipped inputs, {key, reason}
    shards = iter(shards)
    first = next(shards, None)
    if first is None:  # nothing left to this process: no loader workers started
        return stats
    loader = image_batches(listing, itertools.chain([first], shards), opts, size, run.segmap_size,
                           pin_memory=device.type == "cuda")
    batches = iter(loader)  # the decoding workers start on the first batches

    def pictures(batch):  # decoded, on the device (on the device paths), not yet resized; they carry the batch
        return jpeg.batch_pictures(batch, device, (size, size), opts.resize, opts.background, opts.max_pixels)

    def pixels(pics):  # uint8 [n_ok, 3, size, size] in input order, on the host (pinned for a GPU) or, when
        # resized or decoded there, on the device; with ok [b] and the reasons for those skipped
        return pics.batch, jpeg.place_pictures(pics, device, (size, size), opts.resize, opts.background)

    if opts.jpeg_decoder == "nvjpeg" or opts.resize_on == "device":  # device work to make the pixels: each step
        # in a thread of its own (see _Ahead), from now, so that the first batch's one-time costs (nvjpeg's decoder
        # made, the resize's first launches) overlap the tokenizer's below
        batches = _Ahead(_Ahead(batches, pictures, device), pixels, device)
    else:
        batches = (pixels(pictures(batch)) for batch in batches)
    with contextlib.closing(batches):  # an error before or in the loop stops the thread too
        runner = prepare_tokenizer(tokenizer, device, dtype, compile=opts.compile, channels_last=opts.channels_last,
                                   cuda_graphs=opts.cuda_graphs)
        if device.type == "cuda":  # meanwhile, the tokenizer's first call: before the loop, not on its first batch
            _warm_up(runner, device, size, min(opts.batch_size, opts.shard_size, progress.total))
        parts = _ShardParts()
        t_start = marks["loop"] = time.perf_counter()
        with ThreadPoolExecutor(max_workers=1) as writer:
            pending = []
            waiting = None  # since when the loop waits for its next batch (from the end of the one before)
            for batch, (images, ok, reasons) in batches:  # a shard's batches in turn, then the next's
                now = time.perf_counter()
                marks.setdefault("first_batch", now)
                if waiting is not None:
                    stats["input_wait_seconds"] += now - waiting
                for i, good, reason in zip(batch["i"].tolist(), ok.tolist(), reasons):
                    if not good:
                        parts.skipped.append((listing.key(i), reason))
                        stats["skipped_items"].append({"key": parts.skipped[-1][0], "reason": reason})
                if ok.any():
                    parts.index += batch["i"][ok].tolist()
                    parts.tokens.append(runner.encode_uint8(images))
                    if run.segmap_size is not None:
                        parts.segmaps.append(batch["segmap"][ok].numpy())
                n_ok = int(ok.sum())
                stats["encoded"] += n_ok
                stats["skipped"] += len(ok) - n_ok
                k, start, stop = plan[int(batch["i"][0]) // opts.shard_size]  # this batch's shard (at k * size)
                if len(parts.index) + len(parts.skipped) == stop - start:
                    pending.append(writer.submit(_write, out_dir, k, run, listing, parts))
                    stats["shards_written"] += 1
                    for f in [f for f in pending if f.done()]:
                        f.result()  # surface a write error (a full disk) as soon as it happens
                        pending.remove(f)
                    parts = _ShardParts()
                progress.add(len(ok), len(ok) - n_ok)
                waiting = time.perf_counter()
            for f in pending:
                f.result()
    stats["compute_seconds"] = time.perf_counter() - t_start
    return stats


class _Ahead:
    """fn(item) for the items of `items`, in order, with fn run by a thread of its own up to two items ahead of the
    consumer. Encode makes a batch's pixels on the device paths so, in two steps, each a thread: nvjpeg's batched
    decode (`jpeg.batch_pictures`; its call returns when the batch is decoded, about 16 ms a batch of 128 JPEGs on
    an H200), then the resize (`jpeg.place_pictures`; about 4 ms of host work). The loop's own thread spent both
    before the tokenizer could start on a batch; now they overlap each other and the tokenizer's work.

    On a GPU each thread queues its work on a stream of its own: on the consumer's stream a batch's wait for its
    JPEGs would hold up the kernels queued before it. The consumer's stream waits for each value's work when it
    takes it, and the value's device tensors are marked as used there (for the allocator). An error in `items` or
    fn is raised to the consumer at that item; `close()` stops the thread, and `items` where it can be closed."""

    _END = object()

    def __init__(self, items, fn, device):
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._items = items
        self._queue, self._stop = queue.Queue(maxsize=1), threading.Event()
        self._thread = threading.Thread(target=self._run, args=(items, fn), name="regvq-pixels", daemon=True)
        self._thread.start()

    def _run(self, items, fn) -> None:
        try:
            # the thread's current stream (and device: Triton launches there), for fn and for `items` when that is
            # an _Ahead too, whose values this stream then waits for
            with torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext():
                for item in items:
                    value = fn(item)
                    done = self.stream.record_event() if self.stream is not None else None
                    if not self._put((value, done)):
                        return
            self._put(self._END)
        except BaseException as e:  # noqa: BLE001 -- handed to the consumer, raised there
            self._put(_Failed(e))

    def _put(self, value) -> bool:
        while not self._stop.is_set():  # a consumer that stopped early takes nothing more: give up then
            try:
                self._queue.put(value, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def __iter__(self):
        while (got := self._queue.get()) is not self._END:
            if isinstance(got, _Failed):
                raise got.error
            value, done = got
            if done is not None:
                here = torch.cuda.current_stream(self.device)
                here.wait_event(done)
                for t in _device_tensors(value):
                    t.record_stream(here)  # freed here: not reused by the thread's stream before `here` is done
            yield value

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        if hasattr(self._items, "close"):
            self._items.close()


def _device_tensors(value):
    """The CUDA tensors in value, in its tuples, lists, dicts and dataclasses."""
    if isinstance(value, torch.Tensor):
        if value.device.type == "cuda":
            yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _device_tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _device_tensors(v)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from _device_tensors(getattr(value, field.name))


@dataclasses.dataclass
class _Failed:
    error: BaseException


def _warm_up(runner, device, size: int, rows: int) -> None:
    """Pay a GPU run's one-time costs while the decoding workers make the first batches: the tokenizer's first call
    at the run's largest batch (`rows` images; cuDNN's choices, and the CUDA graph it records; on an H200 about
    0.75 s, which the loop's first batch paid before)."""
    runner.encode_uint8(torch.zeros((rows, 3, size, size), dtype=torch.uint8, device=device))


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
