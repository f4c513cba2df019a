"""Token grids -> images: the work behind `regvq decode`.

Sources: a token folder, a single shard file, or JSON lines of token grids (`-`: stdin), each line either
`[[...], ...]` (an h x w grid) or `{"tokens": [[...]], "key": "name"}`. Shards come from strangers: output
paths are confined to the output folder, token values outside the codebook name their shard and row, and the
tokenizer must match the shards' codebook size and grid.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import numpy as np
import torch

from regvq_cli.data.shards import OutputFolder, ShardReader
from regvq_cli.engine import dist
from regvq_cli.engine.png import PngWriter, save_png, write_png_to_stdout
from regvq_cli.engine.runtime import prepare_tokenizer
from regvq_cli.errors import RegvqError


class Batch:
    def __init__(self, tokens: np.ndarray | None, keys: list[str], where: list[str]):
        # tokens: [b, h, w], or None for rows another torchrun rank decodes; where: "shard-00003.safetensors row 7"
        self.tokens, self.keys, self.where = tokens, keys, where


def open_tokens(source) -> ShardReader | str:
    """A token folder or shard file as a ShardReader, which the functions below take in its place (so a run reads
    its manifest once); "-" (stdin) and a ShardReader as they are."""
    return source if source == "-" or isinstance(source, ShardReader) else ShardReader(source)


def recorded_tokenizer(source) -> tuple[str | None, str | None, tuple[int, int] | None, int | None,
                                         tuple[int, int] | None]:
    """(tokenizer id, weights sha256, grid, codebook size, image size (h, w) the images were encoded at) recorded
    with a token folder or shard file; the size is None where none, or no pair of positive integers, is recorded."""
    reader = open_tokens(source)
    if reader == "-":
        return None, None, None, None, None
    if reader.manifest is not None:
        t = reader.manifest["tokenizer"]
        size = reader.manifest["preprocessing"].get("size")
        return t.get("id"), t.get("sha256"), reader.grid, reader.codebook_size, _image_size(size)
    from regvq_cli.data.shards import read_shard

    run = read_shard(reader.paths[0])["run"]  # a single shard file
    return run.tokenizer_id, run.tokenizer_sha256, run.grid, run.codebook_size, _image_size(run.preprocessing.get("size"))


def _image_size(size) -> tuple[int, int] | None:
    """A recorded [h, w] as a tuple, or None when it is not a pair of positive integers."""
    ok = isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)
    return tuple(size) if ok else None


def _shard_rows(reader: ShardReader, limit: int | None, rank: int, world: int):
    """(j, n, mine) for the shards a run reads: shard j's first n rows (the whole folder or its first `limit` rows),
    and whether rank `rank` of `world` decodes them (j % world == rank)."""
    left = limit if limit is not None else len(reader)
    for j, count in enumerate(reader.counts):
        if left <= 0:
            return
        n = min(count, left)
        left -= n
        yield j, n, j % world == rank


def shard_batches(source, batch_size: int, limit: int | None, rank: int = 0, world: int = 1) -> Iterator[Batch]:
    """Batches of rows from a token folder or shard file; rank r takes the shards j with j % world == r.

    With several ranks, another rank's shard comes as one Batch of its keys with `tokens` None, so that every rank
    sees every key in the same order and names the PNG files as one process would (see png_path)."""
    reader = open_tokens(source)
    for j, n, mine in _shard_rows(reader, limit, rank, world):
        t = reader.shard(j)
        name = os.path.basename(reader.paths[j])
        offsets, blob = t["keys_offsets"], t["keys_blob"]

        def keys(s, e):
            return [blob[offsets[r]:offsets[r + 1]].tobytes().decode("utf-8", "surrogateescape") for r in range(s, e)]

        if not mine:
            yield Batch(None, keys(0, n), [])
            continue
        for s in range(0, n, batch_size):
            e = min(s + batch_size, n)
            where = [f"{name} row {r}" for r in range(s, e)]
            yield Batch(np.asarray(t["tokens"][s:e], dtype=np.int64), keys(s, e), where)


def rows_for_rank(source, limit: int | None, rank: int = 0, world: int = 1) -> int | None:
    """How many grids `shard_batches(source, ..., limit, rank, world)` gives this rank to decode; None for stdin."""
    reader = open_tokens(source)
    if reader == "-":
        return None
    return sum(n for _, n, mine in _shard_rows(reader, limit, rank, world) if mine)


def _json_line(line: str, lineno: int, shape) -> tuple[np.ndarray, object]:
    """One JSON line -> (grid, key or None); RegvqError naming the line when it is no grid of `shape`."""
    try:
        obj = json.loads(line)
    except ValueError as e:
        raise RegvqError(f"stdin line {lineno}: not JSON ({e}); expected a token grid [[...], ...]") from None
    grid, key = (obj.get("tokens"), obj.get("key")) if isinstance(obj, dict) else (obj, None)
    rows_of_ints = isinstance(grid, list) and all(
        isinstance(row, list) and all(type(v) is int for v in row) for row in grid)  # 1.5, true or "1" are no ids
    try:
        arr = np.asarray(grid, dtype=np.int64) if rows_of_ints else np.zeros(0)
    except (TypeError, ValueError, OverflowError):
        arr = np.zeros(0)
    if arr.ndim != 2 or arr.size == 0:
        raise RegvqError(f"stdin line {lineno}: expected an h x w grid of integer token ids")
    if shape is not None and arr.shape != shape:
        raise RegvqError(f"stdin line {lineno}: grid {arr.shape[0]}x{arr.shape[1]} differs from the first "
                         f"line's {shape[0]}x{shape[1]}")
    return arr, key


def json_lines_batches(stream, batch_size: int, limit: int | None) -> Iterator[Batch]:
    """Batches from JSON lines of token grids; every grid must have the first one's shape. At a line that is not
    one, the grids read before it still come out (stdin cannot be read again), then the error."""
    tokens, keys, where, shape, count = [], [], [], None, 0
    for lineno, line in enumerate(stream, 1):
        if limit is not None and count >= limit:
            break
        if not line.strip():
            continue
        try:
            arr, key = _json_line(line, lineno, shape)
        except RegvqError:
            if tokens:
                yield Batch(np.stack(tokens), keys, where)
            raise
        shape = arr.shape
        tokens.append(arr)
        keys.append(str(key) if key is not None else f"{count:06d}")
        where.append(f"stdin line {lineno}")
        count += 1
        if len(tokens) == batch_size:
            yield Batch(np.stack(tokens), keys, where)
            tokens, keys, where = [], [], []
    if tokens:
        yield Batch(np.stack(tokens), keys, where)


def check_tokens(batch: Batch, codebook_size: int, grid: tuple[int, int] | None) -> None:
    """RegvqError naming the first row that is no grid of `grid` or holds a token outside the codebook; its `row`
    is that row's index in the batch (the rows before it are good)."""
    if grid is not None and tuple(batch.tokens.shape[1:]) != tuple(grid):
        raise RegvqError(f"{batch.where[0]}: token grid {batch.tokens.shape[1]}x{batch.tokens.shape[2]} does not "
                         f"match the tokenizer's {grid[0]}x{grid[1]}; pass the tokenizer these tokens came from")
    flat = batch.tokens.reshape(len(batch.tokens), -1)
    bad = (flat < 0).any(1) | (flat >= codebook_size).any(1)
    if bad.any():
        i = int(np.argmax(bad))
        value = int(flat[i][(flat[i] < 0) | (flat[i] >= codebook_size)][0])
        error = RegvqError(f"{batch.where[i]}: token {value} is outside the codebook of {codebook_size}; "
                           "the data is corrupt or from another tokenizer")
        error.row = i
        raise error


def png_path(folder: OutputFolder, key: str, taken: set[str]) -> tuple[str, bool]:
    """The PNG file for `key` under `folder`, not one of the paths in `taken` (which it joins), and whether that is
    not the key's usual file name.

    Keys that differ only in their extension ("cat.jpg", "cat.png") or a key given twice would share a file: the
    later one keeps its extension in the name ("cat.png.png"), then takes a number ("same-2.png")."""
    path = usual = folder.path(key, ".png")
    if path in taken:
        base = folder.path(key)
        path, n = base + ".png", 1
        while path in taken:
            n += 1
            path = f"{base}-{n}.png"
    taken.add(path)
    return path, path != usual


def decode_tokens(batches, out, tokenizer, device, dtype, grid_sheet: bool = False, grid_cols: int | None = None,
                  compile: bool = False, channels_last: bool | None = None, callback=None, grid=None,
                  cuda_graphs: bool = True) -> dict:
    """Decode every batch to PNG files under the folder `out` (or one contact sheet PNG at `out`, '-' for stdout).

    Every grid must be `grid` (h, w), the token folder's; None takes grids of any size (an h x w grid makes
    pictures of h x w times the tokenizer's downsampling factor; JSON lines hold one size). The summary's "grid" is
    the size of the grids decoded, and its "renamed" lists {key, file} for the grids whose key's usual file name was
    already taken."""
    runner = prepare_tokenizer(tokenizer, device, dtype, compile=compile, channels_last=channels_last,
                               cuda_graphs=cuda_graphs)
    native = tuple(grid) if grid is not None else None
    decoded_grid = None
    written, sheet, t0 = 0, [], time.perf_counter()
    taken: set[str] = set()
    renamed = []
    folder = None
    if not grid_sheet:
        os.makedirs(out, exist_ok=True)
        folder = OutputFolder(out)
    error = None
    with PngWriter() as pngs:  # threads deflate and write while the device decodes the next batch
        for batch in batches:
            if batch.tokens is None:  # another torchrun rank's rows: only claim their file names
                for key in batch.keys:
                    png_path(folder, key, taken)
                continue
            try:
                check_tokens(batch, tokenizer.codebook_size, native)
            except RegvqError as e:  # the rows before the bad one are decoded and written, then the error
                error, good = e, getattr(e, "row", 0)
                batch = Batch(batch.tokens[:good], batch.keys[:good], batch.where[:good])
                if not good:
                    raise
            indices = torch.from_numpy(batch.tokens)
            decoded_grid = decoded_grid or list(indices.shape[1:])
            if grid_sheet:
                sheet.append(runner.decode_uint8(indices).numpy())  # [b, H, W, 3]
            else:
                rows, arrived = runner.decode_png_rows(indices)  # [b, H, 1 + 3W], on a GPU still on its way
                paths = []
                for key in batch.keys:
                    path, is_renamed = png_path(folder, key, taken)
                    if is_renamed:
                        renamed.append({"key": key, "file": os.path.relpath(path, out)})
                    folder.make_parent(path)
                    paths.append(path)
                pngs.write(rows.numpy(), paths, arrived)
            written += len(batch.keys)
            if callback is not None:
                callback(written)
            if error is not None:
                break
    if error is not None:
        raise error
    if grid_sheet:
        if not sheet:
            raise RegvqError("nothing to decode: the input has no token grids")
        image = contact_sheet(np.concatenate(sheet), grid_cols)
        if out == "-":
            write_png_to_stdout(image)
        else:
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            save_png(image, out)
    elapsed = time.perf_counter() - t0
    return {"decoded": written, "out": str(out), "seconds": round(elapsed, 3),
            "images_per_s": round(written / max(elapsed, 1e-9), 2), "device": str(device), "grid": decoded_grid,
            "renamed": renamed}


def contact_sheet(images: np.ndarray, cols: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 [n, H, W, 3] -> one uint8 image with the n images in a grid (white gaps of `pad` pixels); `cols`
    (default: a square) is capped at n, so a sheet is never wider than its images."""
    n, h, w, _ = images.shape
    cols = min(cols or int(np.ceil(np.sqrt(n))), n)
    rows = int(np.ceil(n / cols))
    sheet = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        sheet[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = img
    return sheet


def decode_source(source, out, tokenizer, device, dtype, batch_size=32, limit=None, grid_sheet=False,
                  grid_cols=None, stdin=None, compile=False, channels_last=None, callback=None, grid=None,
                  cuda_graphs=True) -> dict:
    """Decode a token folder or shard file (or open_tokens' reader of one) or a JSON-lines stream ("-"); split by
    torchrun rank when there are several.
    `grid`: the (h, w) every grid must have (None: any, as `decode_tokens`)."""
    with dist.group(device) as (rank, world):
        if grid_sheet and world > 1:  # each rank would write its own part of the sheet over the others'
            raise RegvqError("--grid makes one contact sheet, which torchrun ranks cannot share; run one process")
        if source == "-":
            if world > 1:
                raise RegvqError("decoding stdin cannot be split over torchrun ranks; run one process")
            batches = json_lines_batches(stdin, batch_size, limit)
        else:
            batches = shard_batches(source, batch_size, limit, rank, world)
        summary = decode_tokens(batches, out, tokenizer, device, dtype, grid_sheet, grid_cols, compile, channels_last,
                                callback, grid, cuda_graphs)
        summary["decoded"] = int(dist.all_sum([summary["decoded"]], device)[0])
        summary["renamed"] = [item for part in dist.all_gather(summary["renamed"]) for item in part]
        dist.barrier()
        return summary
