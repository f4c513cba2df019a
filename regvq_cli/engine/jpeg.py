"""Pixels made on the device for `regvq encode`: batched resizing, and JPEG decoding with nvjpeg (torchvision).

On a many-core GPU host the CPU decoding workers, not the tokenizer, set the pace of `regvq encode`, and most
of a worker's time goes to resizing (Pillow's bicubic: about 1.6 of 2.5 ms for a 256-512 px JPEG). Two steps
move work to the device:

- `--resize-on device`: the workers decode (and turn upright, composite alpha) but do not resize; a batch's
  pictures travel at their decoded sizes and are resized at once by `resize_batch`.
- `--jpeg-decoder nvjpeg`: the workers only read each plain JPEG's header (format, colour mode, size, EXIF
  orientation, a complete stream: `data.images.passthrough_jpeg`) and hand its bytes on; the main process
  decodes the batch's JPEGs in one call of torchvision's nvjpeg decoder on the device and turns them upright.
  Everything else (PNG, GIF, CMYK JPEGs, truncated files, ...) is decoded by Pillow in the workers, and a JPEG
  that nvjpeg refuses is decoded by Pillow in the main process, so every input is encoded or skipped with
  Pillow's reason.

`resize_batch` applies `load_image`'s geometry (`resize_geometry`) with Pillow's bicubic weights to a whole batch
at once: on a GPU two Triton kernels (engine/resize_kernel.py), on the CPU two batched matrix products; a few kernels
per batch, not per picture. The pixels are close to Pillow's, not identical
(see `resize_batch`; nvjpeg also has its own IDCT and chroma upsampling and no reduced-scale draft decode of
large JPEGs). Tokens agree at most positions, not all.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.machinery
import importlib.metadata
import importlib.util
import itertools
from pathlib import Path

import torch

from regvq_cli.data.images import ImageSkip, load_image, resize_geometry
from regvq_cli.engine.device import cdiv, next_power_of_two, to_device, triton_runs_on
from regvq_cli.errors import RegvqError

DECODERS = ("pillow", "nvjpeg")


def nvjpeg_available(device) -> bool:
    """True when `device` is a CUDA device and torchvision's batched JPEG decoder (0.20 or later, built for this
    torch) can be loaded."""
    return torch.device(device).type == "cuda" and _nvjpeg_op() is not None


_RGB = 3  # torchvision.io.ImageReadMode.RGB's value


@functools.cache
def _nvjpeg_op():
    """torchvision's batched nvjpeg decode, `torch.ops.image.decode_jpegs_cuda(datas, mode, device)` (what
    `torchvision.io.decode_jpeg` calls for a list on a CUDA device), or None where there is none. Its extension is
    loaded on its own where it can be: `import torchvision` imports its models and through them torch._dynamo,
    about 1.1 s of an encode's start-up on an H200 host, for this one op. Otherwise through torchvision.io."""
    try:
        major, minor = (int(v) for v in importlib.metadata.version("torchvision").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None
    if (major, minor) < (0, 20):
        return None
    try:
        folder = Path(importlib.util.find_spec("torchvision").origin).parent
        loaders = (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES)
        torch.ops.load_library(importlib.machinery.FileFinder(str(folder), loaders).find_spec("image").origin)
        return torch.ops.image.decode_jpegs_cuda
    except Exception:  # noqa: BLE001 -- a layout or a build this does not know: torchvision's own loading
        pass
    try:
        import torchvision.io  # noqa: F401

        return torch.ops.image.decode_jpegs_cuda
    except Exception:  # noqa: BLE001 -- built for another torch (RuntimeError, OSError)
        return None


def pick_decoder(name: str, device) -> str:
    """--jpeg-decoder pillow | nvjpeg -> the same name, once it is known that the decoder can run here."""
    if name not in DECODERS:
        raise RegvqError(f"unknown JPEG decoder {name!r}; use {', '.join(DECODERS)}")
    if name == "nvjpeg" and not nvjpeg_available(device):
        if torch.device(device).type != "cuda":
            raise RegvqError(f"--jpeg-decoder nvjpeg needs a CUDA device, not {device}; "
                             "use --device cuda, or --jpeg-decoder pillow")
        raise RegvqError("--jpeg-decoder nvjpeg needs torchvision 0.20 or later built for this torch "
                         "(pip install torchvision), or use --jpeg-decoder pillow")
    return name


_decode_streams: dict = {}  # device -> the stream nvjpeg's outputs are made on


def nvjpeg_decode(datas: list[torch.Tensor], device) -> list[torch.Tensor]:
    """JPEG files (uint8 [n_bytes] CPU tensors) -> uint8 [3, h, w] RGB on `device`, as stored (no EXIF
    orientation). One batched call; it raises for the whole batch if any stream fails.

    torchvision makes its outputs on the current stream and writes them on a stream of its own without waiting for
    the current stream: memory the host has freed while queued kernels still read it can be written under them (it
    corrupted the resize's indices once the tokenizer's CUDA graphs let the host run a batch ahead). So they are made
    on a stream kept for this, whose memory the allocator keeps apart, marked as used by the current stream, which
    waits for the decode."""
    device = torch.device(device)
    here = torch.cuda.current_stream(device)
    side = _decode_streams.setdefault(device, torch.cuda.Stream(device))
    with torch.cuda.stream(side):
        images = _nvjpeg_op()(datas, _RGB, device)
    here.wait_stream(side)
    for image in images:
        image.record_stream(here)
    return images


def decode_jpegs(datas: list[torch.Tensor], device) -> list[torch.Tensor | None]:
    """`nvjpeg_decode` of a batch; when the batch call fails, one file at a time, None for each that fails."""
    if not datas:
        return []
    try:
        return list(nvjpeg_decode(datas, device))
    except Exception:  # one bad stream fails the whole call and gives no partial results: find the bad ones
        out = []
        for data in datas:
            try:
                out.append(nvjpeg_decode([data], device)[0])
            except Exception:
                out.append(None)
        return out


def apply_orientation(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """uint8 [..., h, w] -> the picture upright for EXIF orientation 1..8 (PIL's ImageOps.exif_transpose);
    other values leave it as is."""
    if orientation == 2:  # mirrored
        return img.flip(-1)
    if orientation == 3:  # upside down
        return img.flip(-2, -1)
    if orientation == 4:  # upside down, mirrored
        return img.flip(-2)
    if orientation == 5:  # transposed
        return img.transpose(-2, -1)
    if orientation == 6:  # turned a quarter anticlockwise: turn it back clockwise
        return img.rot90(-1, (-2, -1))
    if orientation == 7:  # transposed across the other diagonal
        return img.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:  # turned a quarter clockwise
        return img.rot90(1, (-2, -1))
    return img


def _bicubic(x: torch.Tensor) -> torch.Tensor:
    """Pillow's BICUBIC kernel: Keys' cubic convolution with a = -0.5, zero beyond |x| >= 2."""
    a, x = -0.5, x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def _axis_taps(n_in, box0, box1, n_resized, first, n_kept, offset, n_out: int, taps: int):
    """Pillow's resampling along one axis, for a batch, as taps: (lo, w), lo long [B, n_out] the first source pixel
    that canvas position j reads and w float64 [B, n_out, taps] the weights of that pixel and the next taps - 1
    (zero past the kernel's reach, and for positions outside the pasted region).

    Every argument but n_out / taps is a float64 tensor [B]: the source length, the resized box [box0, box1) of the
    source, the length it is resized to, the first kept position and the number kept of the resized line, and where
    that part lands on the canvas. The taps and their normalisation follow Pillow's `precompute_coeffs` (the kernel
    widened by the shrink factor, so shrinking is antialiased; source pixels outside the box are read where the
    kernel reaches them, as Pillow does). `taps` must cover the widest reach (`_taps_needed`)."""
    j = torch.arange(n_out, device=n_in.device, dtype=torch.float64)[None]  # [1, n_out]
    pasted = (j >= offset[:, None]) & (j < (offset + n_kept)[:, None])  # [B, n_out]
    scale = ((box1 - box0) / n_resized)[:, None]  # source pixels per resized pixel, [B, 1]
    widen = scale.clamp(min=1.0)
    center = box0[:, None] + (j - offset[:, None] + first[:, None] + 0.5) * scale  # [B, n_out], source coordinates
    support = 2.0 * widen
    lo = (center - support + 0.5).floor().clamp(min=0)  # Pillow's xmin, inclusive
    hi = torch.minimum((center + support + 0.5).floor(), n_in[:, None])  # its xmax, exclusive
    x = lo[..., None] + torch.arange(taps, device=n_in.device, dtype=torch.float64)  # [B, n_out, taps]
    w = _bicubic((x + 0.5 - center[..., None]) / widen[..., None]) * (x < hi[..., None])
    total = w.sum(-1, keepdim=True)
    w = torch.where(total != 0, w / total, w)
    return lo.long(), w * pasted[..., None]


def _taps_needed(geo: list[tuple]) -> int:
    """The most source pixels one output pixel reads along either axis, for `resize_batch`'s geometry rows: Pillow's
    window [center - 2 * widen + 0.5, center + 2 * widen + 0.5) rounded down at both ends, widen = max(1, shrink)."""
    widest = max(max(1.0, (x1 - x0) / rw, (y1 - y0) / rh) for _, _, x0, y0, x1, y1, rw, rh, *_ in geo)
    return int(4 * widest) + 2


def _dense(lo: torch.Tensor, w: torch.Tensor, n_max: int) -> torch.Tensor:
    """Taps (lo [B, n_out], w [B, n_out, taps]) as the matrix float64 [B, n_out, n_max] whose row j holds canvas
    position j's weights at their source pixels."""
    at = (lo[..., None] + torch.arange(w.shape[-1], device=w.device)).clamp(max=n_max - 1)  # past n_max: zero weight
    return torch.zeros((*lo.shape, n_max), dtype=w.dtype, device=w.device).scatter_add_(2, at, w)


_CHUNK_BYTES = 1 << 28  # resize_batch's float64 copy of a chunk of pictures: at most 256 MiB (one picture at least)


def resize_batch(images: list[torch.Tensor], out_h: int, out_w: int, resize: str = "crop",
                 background: tuple[int, int, int] = (255, 255, 255)) -> torch.Tensor:
    """uint8 [3, h_i, w_i] pictures of any sizes (one device) -> uint8 [n, 3, out_h, out_w] with `load_image`'s
    geometry and Pillow's bicubic kernel: each output pixel the weighted sum of the source pixels its taps reach
    along x, rounded to 8 bits as in Pillow, then the same along y. What differs from Pillow is its fixed-point
    weights and, for shrinking by 3x or more, its box-filter `reducing_gap` step (pure bicubic here). The arithmetic
    is float64: no TF32 or single-precision rounding to make a GPU's pixels differ from the CPU's (bar exact ties).

    Where Triton runs, two kernels make and read the taps (`_resize_in_kernels`); elsewhere (the CPU) the passes
    are two batched matrix products, out = Wy @ x @ Wx^T per channel, the pictures zero-padded to the largest of a
    chunk."""
    if not images:
        return torch.empty((0, 3, out_h, out_w), dtype=torch.uint8)
    device = images[0].device
    order = sorted(range(len(images)), key=lambda i: images[i].shape[-2] * images[i].shape[-1])  # less padding
    shapes = [tuple(images[i].shape[-2:]) for i in order]
    geo = []  # per picture, in `order`: (source w, h), box, resized size, crop, offset, its place in the batch
    for i, (h, w) in zip(order, shapes):
        box, (rw, rh), crop, offset = resize_geometry(w, h, out_h, out_w, resize)
        geo.append((w, h, *box, rw, rh, *crop, *offset, i))
    taps = _taps_needed(geo)
    geometry = to_device(torch.tensor(geo, dtype=torch.float64), device)  # [n, 15]: one copy for the whole batch
    bg = to_device(torch.tensor(background, dtype=torch.float64), device)
    if triton_runs_on(device):
        return _resize_in_kernels([images[i] for i in order], shapes, geometry, taps, bg, out_h, out_w)
    (w, h, x0, y0, x1, y1, rw, rh, cx0, cy0, cx1, cy1, ox, oy, place) = geometry.unbind(1)
    lo_x, wx = _axis_taps(w, x0, x1, rw, cx0, cx1 - cx0, ox, out_w, taps)  # [n, out_w], [n, out_w, taps]
    lo_y, wy = _axis_taps(h, y0, y1, rh, cy0, cy1 - cy0, oy, out_h, taps)
    h_all, w_all = max(s[0] for s in shapes), max(s[1] for s in shapes)
    # the canvas the picture covers: the positions whose weights sum to more than zero, [n, 1, out_h, out_w]
    covered = ((wy.sum(-1) > 0)[:, :, None] & (wx.sum(-1) > 0)[:, None, :])[:, None]
    wx, wy = _dense(lo_x, wx, w_all), _dense(lo_y, wy, h_all)  # [n, out_w, w_all], [n, out_h, h_all]
    bg = bg.view(1, 3, 1, 1)
    resized = torch.empty((len(images), 3, out_h, out_w), dtype=torch.uint8, device=device)  # in `order`
    start = 0
    while start < len(order):  # chunks whose float64 copy stays within _CHUNK_BYTES (one picture at least)
        stop, h_max, w_max = start, 0, 0
        while stop < len(order):
            h, w = shapes[stop]
            if stop > start and (stop + 1 - start) * 3 * max(h_max, h) * max(w_max, w) * 8 > _CHUNK_BYTES:
                break
            h_max, w_max, stop = max(h_max, h), max(w_max, w), stop + 1
        x = torch.zeros((stop - start, 3, h_max, w_max), dtype=torch.float64, device=device)
        for k in range(start, stop):
            h, w = shapes[k]
            x[k - start, :, :h, :w] = images[order[k]]
        # horizontal pass, rounded to 8 bits as Pillow stores it, then the vertical pass
        t = (x @ wx[start:stop, None, :, :w_max].transpose(-1, -2)).add_(0.5).floor_().clamp_(0, 255)
        y = wy[start:stop, None, :, :h_max] @ t  # [chunk, 3, out_h, out_w]
        y = torch.where(covered[start:stop], y, bg)  # "pad": the background around the picture
        resized[start:stop] = y.add_(0.5).floor_().clamp_(0, 255).to(torch.uint8)  # half up
        start = stop
    return torch.empty_like(resized).index_copy_(0, place.long(), resized)  # back to the batch's order


RESIZE_ROWS, RESIZE_COLUMNS = 8, 8  # source rows a program of the horizontal pass, output rows of the vertical one


def _resize_in_kernels(images, shapes, geometry, taps: int, bg, out_h: int, out_w: int) -> torch.Tensor:
    """`resize_batch` as two Triton kernels (engine/resize_kernel.py): the pictures, one after another in one flat
    buffer, resized along x row by row into uint8 [3, h, out_w] each (rounded as Pillow's first pass), then along y,
    each output pixel reading only its taps; each picture written at its place in the batch. The kernels make the
    taps from the geometry rows themselves: on an H200 the host's part of a batch of 128 was about 4.4 ms when it
    made them with some hundred small tensor operations (`_axis_taps`), from threads that share the interpreter.
    A float64 sum of a few taps instead of a product with mostly-zero matrices: on an H200 a batch of 128 JPEGs of
    256-512 px took about 5 ms of kernels the other way (docs/performance.md)."""
    from regvq_cli.engine.resize_kernel import resize_columns_kernel, resize_rows_kernel

    device, n = images[0].device, len(images)
    # where each picture starts in `flat`, and where its rows resized along x start in `rows` (resize_kernel.py)
    starts = itertools.accumulate((3 * h * w for h, w in shapes), initial=0)
    rows_at = itertools.accumulate((3 * h * out_w for h, _ in shapes), initial=0)
    meta = to_device(torch.tensor([(s, h, w, r) for s, r, (h, w) in zip(starts, rows_at, shapes)],
                                  dtype=torch.int64), device)
    flat = torch.cat([image.reshape(-1) for image in images])  # uint8 [sum of 3 * h * w]
    rows = torch.empty(3 * out_w * sum(h for h, _ in shapes), dtype=torch.uint8, device=device)
    h_max, j = max(h for h, _ in shapes), next_power_of_two(out_w)
    # no fused multiply-adds: each product and sum rounded as the CPU's separate operations round them
    resize_rows_kernel[(n, cdiv(h_max, RESIZE_ROWS))](flat, meta, geometry, rows, taps, out_w, BR=RESIZE_ROWS,
                                                      BJ=j, enable_fp_fusion=False)
    out = torch.empty((n, 3, out_h, out_w), dtype=torch.uint8, device=device)
    resize_columns_kernel[(n, cdiv(out_h, RESIZE_COLUMNS))](rows, meta, geometry, bg, out, taps, out_h, out_w,
                                                            BI=RESIZE_COLUMNS, BJ=j, enable_fp_fusion=False)
    return out


def resize_tensor(img: torch.Tensor, out_h: int, out_w: int, resize: str = "crop",
                  background: tuple[int, int, int] = (255, 255, 255)) -> torch.Tensor:
    """uint8 [3, h, w] or [n, 3, h, w] (any device) -> uint8 [..., 3, out_h, out_w]: `resize_batch` of one size."""
    if img.dim() == 3:
        return resize_batch([img], out_h, out_w, resize, background)[0]
    return resize_batch(list(img), out_h, out_w, resize, background)


def batch_pixels(batch: dict, device, size: tuple[int, int], resize: str, background: tuple[int, int, int],
                 max_pixels: int | None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """A batch of `ImageDataset.collate` -> (pixels, ok, reasons): pixels uint8 [n_ok, 3, H, W] in input order,
    ok bool [b] and reasons [b] as the batch's, updated for the JPEGs decoded here.

    The workers' resized images are copied over; their decoded but unresized pictures ("raw") go to the device
    in one copy; the JPEG bytes are decoded on `device` and turned upright. Both kinds are then resized together
    (`resize_batch`). A JPEG that nvjpeg refuses goes to `load_image` (Pillow), which decodes it or says why it
    is skipped. With neither kind the batch's own (pinned) image tensor comes back as it is. In two steps, which
    encode runs in threads of their own: `batch_pictures`, then `place_pictures`.
    """
    return place_pictures(batch_pictures(batch, device, size, resize, background, max_pixels), device, size, resize,
                          background)


@dataclasses.dataclass
class Pictures:
    """A batch's pictures on the device before they are resized and placed (`batch_pictures`)."""

    batch: dict  # as ImageDataset.collate made it
    ok: torch.Tensor  # bool [b]: the batch's, less the JPEGs that neither nvjpeg nor Pillow decoded
    reasons: list  # [b]: why each row not ok was skipped
    upright: dict  # row -> uint8 [3, h, w] on the device, upright, at its decoded size
    fallback: dict  # row -> uint8 [3, H, W] on the device: JPEGs nvjpeg refused, decoded and resized by Pillow


def batch_pictures(batch: dict, device, size: tuple[int, int], resize: str, background: tuple[int, int, int],
                   max_pixels: int | None) -> Pictures:
    """`batch_pixels`' first step: the raw pictures copied to the device, the JPEGs decoded there (nvjpeg's call
    returns when the batch is decoded) and turned upright, or by Pillow where nvjpeg refuses one."""
    ok, reasons = batch["ok"].clone(), list(batch["reason"])
    pictures = Pictures(batch, ok, reasons, upright={}, fallback={})
    if not batch["jpeg"].any() and not batch["raw"].any():
        return pictures
    if batch["raw"].any():
        flat = batch["raw_pixels"].to(device, non_blocking=True)
        shapes = batch["raw_shapes"].tolist()
        parts = flat.split([h * w * 3 for h, w in shapes])
        for row, part, (h, w) in zip(batch["raw"].nonzero().flatten().tolist(), parts, shapes):
            pictures.upright[row] = part.view(h, w, 3).permute(2, 0, 1)
    rows = batch["jpeg"].nonzero().flatten().tolist()
    datas = list(batch["jpeg_bytes"].split(batch["jpeg_sizes"].tolist()))  # uint8 [n_bytes] each
    for row, data, img, orientation in zip(rows, datas, decode_jpegs(datas, device), batch["orientation"].tolist()):
        if img is not None:
            pictures.upright[row] = apply_orientation(img, orientation)
            continue
        try:
            px = load_image(data.numpy().tobytes(), size, resize, background, max_pixels)  # uint8 [H, W, 3]
            pictures.fallback[row] = torch.from_numpy(px).permute(2, 0, 1).to(device)
        except ImageSkip as e:
            ok[row], reasons[row] = False, e.reason
    return pictures


def place_pictures(pictures: Pictures, device, size: tuple[int, int], resize: str,
                   background: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """`batch_pixels`' second step: the pictures resized together and every row's pixels in place."""
    batch, ok = pictures.batch, pictures.ok
    if not batch["jpeg"].any() and not batch["raw"].any():
        return batch["image"], batch["ok"], batch["reason"]
    out_h, out_w = size
    place = (ok.cumsum(0) - 1).tolist()  # row -> its index among the ok rows
    pixels = torch.empty((int(ok.sum()), 3, out_h, out_w), dtype=torch.uint8, device=device)

    def put(rows: list[int], images: torch.Tensor) -> None:  # one indexed copy for a group of rows
        if rows:
            pixels[to_device(torch.tensor([place[row] for row in rows]), device)] = images

    put((batch["ok"] & ~batch["jpeg"] & ~batch["raw"]).nonzero().flatten().tolist(),
        batch["image"].to(device, non_blocking=True))  # resized by the workers
    upright = pictures.upright
    put(list(upright), resize_batch(list(upright.values()), out_h, out_w, resize, background))
    for row, px in pictures.fallback.items():
        pixels[place[row]] = px
    return pixels, ok, pictures.reasons
