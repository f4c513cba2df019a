"""Open any image Pillow can open and turn it into a fixed-size RGB uint8 array.

`load_image` is the one entry point for pictures, `load_segmap` the one for segmentation
maps (same geometry, nearest-neighbour resampling); `decode_image` stops before the resize
(for a resize on the GPU) and `passthrough_jpeg` picks out the plain JPEGs a GPU decoder can
take undecoded (engine.jpeg). They raise `ImageSkip(reason)` for an
input that cannot be used; the reason is a short, stable string meant for the manifest's
`skipped` list:

    "empty file"                       the file has zero bytes
    "not an image"                     Pillow does not recognise the format
    "truncated"                        the data ends early (or the decoder says so)
    "too large: WxH > N px"            more pixels than `max_pixels` (decompression bombs)
    "unreadable: <errno text>"         the OS refused (missing, permission, is a directory, I/O)
    "decode error: <message>"          anything else the decoder complained about

Colour handling (every Pillow mode ends up RGB):

    RGB                    as is
    RGBA, LA, PA, La, RGBa alpha composited over `background` (white by default)
    P, L, RGB with a transparency key (GIF/PNG tRNS): likewise composited
    L, P, 1, CMYK, YCbCr, LAB, HSV, RGBX   Pillow's own conversion to RGB
    I;16, I;16B, I;16L     16-bit grey scaled to 8 bits (x / 257, rounded), never clipped
    I (32-bit int)         treated as 16-bit grey when all values lie in [0, 65535],
                           otherwise min-max scaled to [0, 255]
    F (32-bit float)       x * 255 when all finite values lie in [0, 1], otherwise min-max
                           scaled; NaN becomes 0

The EXIF orientation tag is applied (a phone photo comes out upright) and animations give
their first frame. Resampling is Pillow's BICUBIC, which is antialiased when shrinking (the
kernel widens with the scale factor, as in PIL's `thumbnail`), with `reducing_gap=3.0` (an
integer box reduction first when the factor is 3x or more; Pillow documents the result as
indistinguishable from the direct resize) and, for JPEG, DCT-domain draft decoding at 1/2,
1/4 or 1/8 scale while the decoded image stays at least twice the size it is resized to.
"""

from __future__ import annotations

import io
import math
import os
import stat
import warnings
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "RESIZE_POLICIES",
    "ImageSkip",
    "decode_image",
    "load_image",
    "load_segmap",
    "passthrough_jpeg",
    "to_rgb",
    "resize_geometry",
]

# Pillow refuses images above 2 * Image.MAX_IMAGE_PIXELS with an error; this is that number
# for Pillow <= 12 (about 179 megapixels, e.g. 13,377 x 13,377).
DEFAULT_MAX_PIXELS = 178_956_970

RESIZE_POLICIES = ("crop", "shorter-crop", "pad", "stretch")

Source = Union[str, os.PathLike, bytes, bytearray, memoryview]


class ImageSkip(Exception):
    """An input that cannot be used; `reason` is a short stable string for the manifest."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    """Target size as (height, width)."""
    if isinstance(size, int):
        h = w = size
    else:
        h, w = (int(s) for s in size)
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {size!r}")
    return h, w


def resize_geometry(src_w: int, src_h: int, out_h: int, out_w: int, resize: str):
    """Where the source goes in the output, for each resize policy.

    Returns (box, (rw, rh), crop, offset):
      box    - region of the source (left, top, right, bottom) that is resized,
      rw, rh - the size it is resized to,
      crop   - region of the resized picture that is kept (left, top, right, bottom),
      offset - where that region is pasted on the (out_w, out_h) canvas (pad only).

    Policies:
      crop          centre crop of the largest whole-pixel box with the target aspect ratio,
                    then resize it to the target (crop first: no work on discarded pixels)
      shorter-crop  resize the whole image so it covers the target (the shorter side, for a
                    square target, becomes `size`), then centre-crop: torchvision's
                    Resize(size) + CenterCrop(size)
      pad           resize so the whole image fits, centred on a `background` canvas
                    (letterbox); nothing is cut
      stretch       resize to the target ignoring the aspect ratio
    """
    full = (0, 0, src_w, src_h)
    if resize == "stretch":
        return full, (out_w, out_h), (0, 0, out_w, out_h), (0, 0)
    if resize == "crop":
        # Largest box with aspect out_w/out_h that fits; compare cross products in integers.
        if src_w * out_h > src_h * out_w:  # source is wider: cut the sides
            cw, ch = max(1, round(src_h * out_w / out_h)), src_h
        else:  # source is taller: cut top and bottom
            cw, ch = src_w, max(1, round(src_w * out_h / out_w))
        left, top = (src_w - cw) // 2, (src_h - ch) // 2
        return (left, top, left + cw, top + ch), (out_w, out_h), (0, 0, out_w, out_h), (0, 0)
    if resize == "shorter-crop":
        scale = max(out_w / src_w, out_h / src_h)
        rw, rh = max(out_w, round(src_w * scale)), max(out_h, round(src_h * scale))
        left, top = int(round((rw - out_w) / 2.0)), int(round((rh - out_h) / 2.0))
        return full, (rw, rh), (left, top, left + out_w, top + out_h), (0, 0)
    if resize == "pad":
        scale = min(out_w / src_w, out_h / src_h)
        rw, rh = min(out_w, max(1, round(src_w * scale))), min(out_h, max(1, round(src_h * scale)))
        return full, (rw, rh), (0, 0, rw, rh), ((out_w - rw) // 2, (out_h - rh) // 2)
    raise ValueError(f"unknown resize policy {resize!r}; choose one of {', '.join(RESIZE_POLICIES)}")


def _open_regular_file(path) -> io.IOBase:
    """The file at `path` opened for reading, or ImageSkip: a pipe, socket or device among the images (a FIFO
    named x.png) would block the reader or never end, and a path with a NUL byte cannot be opened at all."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO opens at once, to be refused
    except OSError as e:
        raise ImageSkip(f"unreadable: {e.strerror or e}") from None
    except ValueError:
        raise ImageSkip("unreadable: the path holds a NUL byte") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ImageSkip("unreadable: Is a directory" if stat.S_ISDIR(mode) else
                        "not a regular file (a pipe, socket or device)")
    return os.fdopen(fd, "rb")


def _open(src: Source) -> tuple[Image.Image, io.IOBase]:
    """Open a path or bytes with Pillow (header only), classifying failures."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise ImageSkip("empty file")
        fp: io.IOBase = io.BytesIO(bytes(src))
    else:
        fp = _open_regular_file(src)
    try:
        head = fp.read(1)
        if not head:
            raise ImageSkip("empty file")
        fp.seek(0)
        return Image.open(fp), fp
    except ImageSkip:
        fp.close()
        raise
    except UnidentifiedImageError:
        fp.close()
        raise ImageSkip("not an image") from None
    except Image.DecompressionBombError as e:
        fp.close()
        # Only reached beyond 2x Pillow's own limit (see _allow_pixels); the message holds the count.
        raise ImageSkip(f"too large: {_bomb_pixels(e)} px > limit") from None
    except OSError as e:
        fp.close()
        if e.errno is not None:
            raise ImageSkip(f"unreadable: {e.strerror or e}") from None
        raise ImageSkip(_decode_reason(e)) from None
    except Exception as e:  # a plugin choking on a malformed header (SyntaxError, ValueError, ...)
        fp.close()
        raise ImageSkip(_decode_reason(e)) from None


def _bomb_pixels(e: Exception) -> str:
    words = str(e).split("(")
    return words[1].split()[0] if len(words) > 1 else "?"


def _decode_reason(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    low = msg.lower()
    if isinstance(e, EOFError) or "truncated" in low or "broken data stream" in low or "premature end" in low:
        return "truncated"
    return f"decode error: {msg[:200]}"


def _allow_pixels(max_pixels: int | None) -> None:
    """Make sure Pillow's own bomb check never refuses what `max_pixels` allows.

    Pillow's limit is a module global; it is only ever raised here, never lowered, so other
    users of Pillow in the process keep at least the protection they had. Our own check
    (before any pixel is decoded) is what enforces `max_pixels`.
    """
    if Image.MAX_IMAGE_PIXELS is None:
        return
    if max_pixels is None:
        Image.MAX_IMAGE_PIXELS = None
    elif max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels


def _quiet() -> None:
    """Inside catch_warnings: silence what Pillow says about images it still decodes.

    Our own pixel limit is checked before load(), so the bomb warning adds nothing, and
    "Corrupt EXIF data" style notes would flood the terminal on a large, messy dataset.
    """
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation (1 = upright), read from the header only."""
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block must not lose an otherwise good image
        return 1


def _oriented_size(im: Image.Image) -> tuple[int, int]:
    """(width, height) after the EXIF orientation is applied, read from the header only."""
    w, h = im.size
    return (h, w) if _orientation(im) in (5, 6, 7, 8) else (w, h)


def _draft(im: Image.Image, out_h: int, out_w: int, resize: str) -> None:
    """Ask the JPEG decoder for a 1/2, 1/4 or 1/8 scale decode when that loses nothing.

    The decoded image is kept at least twice as large as what the resize needs along each
    axis (the same margin as Pillow's thumbnail), so the final bicubic pass still averages
    several decoded pixels per output pixel.
    """
    if im.format not in ("JPEG", "MPO"):  # MPO: multi-picture JPEG from cameras
        return
    w, h = _oriented_size(im)
    if resize == "stretch":
        factor = min(w / out_w, h / out_h)  # per-axis shrink; the smaller one limits
    elif resize == "pad":
        factor = max(w / out_w, h / out_h)
    else:  # crop and shorter-crop cover the target
        factor = min(w / out_w, h / out_h)
    factor /= 2.0
    if factor < 2:
        return
    # draft() keeps the decoded size >= the requested size; ask for size / factor.
    im.draft("RGB", (max(1, math.ceil(im.size[0] / factor)), max(1, math.ceil(im.size[1] / factor))))


def _composite(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """RGBA -> RGB over a solid background: out = a * rgb + (1 - a) * bg, rounded."""
    rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
    a = rgba[..., 3:4] / 255.0
    out = rgba[..., :3] * a + np.asarray(background, dtype=np.float32) * (1.0 - a)
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), "RGB")


def _scale_to_u8(x: np.ndarray, mode: str) -> np.ndarray:
    """High bit depth grey (I;16, I, F) to uint8 by scaling, never by clipping."""
    if mode.startswith("I;16"):
        return ((x.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)  # == round(x / 257)
    x = x.astype(np.float64)
    finite = np.isfinite(x)
    if not finite.any():
        return np.zeros(x.shape, np.uint8)
    lo, hi = float(x[finite].min()), float(x[finite].max())
    if mode == "I" and lo >= 0 and hi <= 65535:
        y = x / 257.0
    elif mode == "F" and lo >= 0 and hi <= 1:
        y = x * 255.0
    elif hi > lo:
        y = (x - lo) * (255.0 / (hi - lo))
    else:
        y = np.zeros_like(x)
    y[~finite] = 0
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def to_rgb(im: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any Pillow mode to RGB, following the table in the module docstring."""
    mode = im.mode
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info
    if mode.startswith("I;16") or mode in ("I", "F"):
        grey = _scale_to_u8(np.asarray(im), mode)
        im = Image.fromarray(grey, "L")
        return im.convert("RGB")
    if has_alpha:
        return _composite(im, background)
    if mode == "RGB":
        return im
    try:
        return im.convert("RGB")
    except ValueError:  # a mode Pillow has no RGB conversion for
        raise ImageSkip(f"decode error: cannot convert mode {mode} to RGB") from None


def _decode(im: Image.Image, max_pixels: int | None) -> Image.Image:
    """Check the declared size, then decode the first frame and apply the EXIF orientation."""
    w, h = im.size
    if max_pixels is not None and w * h > max_pixels:
        raise ImageSkip(f"too large: {w}x{h} > {max_pixels} px")
    try:
        im.load()
    except ImageSkip:
        raise
    except Image.DecompressionBombError as e:
        raise ImageSkip(f"too large: {_bomb_pixels(e)} px > limit") from None
    except OSError as e:
        if e.errno is not None:
            raise ImageSkip(f"unreadable: {e.strerror or e}") from None
        raise ImageSkip(_decode_reason(e)) from None
    except Exception as e:  # decoders raise SyntaxError, ValueError, EOFError, struct.error ...
        raise ImageSkip(_decode_reason(e)) from None
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # a broken EXIF block must not lose an otherwise good image
        pass
    return im


def load_image(
    src: Source,
    size: int | tuple[int, int],
    resize: str = "crop",
    background: tuple[int, int, int] = (255, 255, 255),
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft: bool = True,
) -> np.ndarray:
    """Read one image into a uint8 array [H, W, 3].

    src        - a path or the file's bytes
    size       - int (square) or (height, width)
    resize     - "crop" | "shorter-crop" | "pad" | "stretch" (see `resize_geometry`)
    background - RGB colour under transparent pixels and around a padded image
    max_pixels - refuse images with more pixels than this before decoding them (None: no limit)
    draft      - let JPEGs decode at reduced scale when much larger than needed (faster,
                 visually the same; False for a full-resolution decode)

    Raises ImageSkip(reason) for an input that cannot be used.
    """
    out_h, out_w = _hw(size)
    return _with_rgb(src, out_h, out_w, resize, background, max_pixels, draft,
                     lambda rgb: _fit(rgb, out_h, out_w, resize, background))


def decode_image(
    src: Source,
    size: int | tuple[int, int],
    resize: str = "crop",
    background: tuple[int, int, int] = (255, 255, 255),
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_side: float = 4.0,
) -> np.ndarray:
    """`load_image` up to the resize, for a resize elsewhere (`engine.jpeg.resize_batch`, on a GPU): uint8
    [h, w, 3], upright RGB at the decoded size (a JPEG's reduced-scale draft included, as in `load_image`).
    A picture with more than `max_side`^2 times the target's pixels is resized here as `load_image` does, so
    what travels stays bounded; resizing a picture of the target size again changes nothing."""
    out_h, out_w = _hw(size)

    def keep_or_fit(rgb: Image.Image) -> np.ndarray:
        if rgb.size[0] * rgb.size[1] > max_side * max_side * out_h * out_w:
            return _fit(rgb, out_h, out_w, resize, background)
        return np.array(rgb, dtype=np.uint8)

    return _with_rgb(src, out_h, out_w, resize, background, max_pixels, True, keep_or_fit)


def _with_rgb(src: Source, out_h: int, out_w: int, resize: str, background, max_pixels: int | None, draft: bool,
              use):
    """Open `src`, decode it (reduced-scale JPEG draft where allowed), turn it upright and to RGB, and return
    use(rgb) while the file is still open. Raises ImageSkip(reason)."""
    if resize not in RESIZE_POLICIES:
        raise ValueError(f"unknown resize policy {resize!r}; choose one of {', '.join(RESIZE_POLICIES)}")
    background = tuple(int(c) for c in background)
    _allow_pixels(max_pixels)
    with warnings.catch_warnings():
        _quiet()
        im, fp = _open(src)
        with fp, im:
            if draft and (max_pixels is None or im.size[0] * im.size[1] <= max_pixels):
                _draft(im, out_h, out_w, resize)
            try:
                return use(to_rgb(_decode(im, max_pixels), background))
            except MemoryError:  # this picture, not the run: the next one may fit
                raise ImageSkip("out of memory: too large to decode here") from None


# pixels of a resized picture past which `_fit` resizes only the part of it that is kept (48 MB of RGB)
LARGE_RESIZE = 2 ** 24


def _upscaled_crop(img: Image.Image, size: tuple[int, int], crop: tuple[int, int, int, int],
                   resample=Image.Resampling.BICUBIC) -> Image.Image:
    """`img.resize(size).crop(crop)` for an enlargement, without making the whole enlarged picture.

    shorter-crop enlarges a long thin picture until its short side covers the output: 1 x 8,000 px became
    256 x 2,048,000 (6 GB) before its centre was cut out. Bicubic: only the source rows the crop needs (and the
    filter's reach of 2 rows) are taken, filtered along the rows, then along the columns, as Pillow's two-pass
    resize does: the same picture but for a few values 1 or 2 levels apart (the filter positions are summed in
    another order). Nearest (maps): the crop's source box in one pass, which may pick the neighbouring source row
    or column at an exact tie."""
    (src_w, src_h), (rw, rh) = img.size, size
    sx, sy = src_w / rw, src_h / rh
    left, top, right, bottom = crop
    if resample == Image.Resampling.NEAREST:
        return img.resize((right - left, bottom - top), resample, box=(left * sx, top * sy, right * sx, bottom * sy))
    r0, r1 = max(0, math.floor(top * sy) - 3), min(src_h, math.ceil(bottom * sy) + 3)
    rgb = img.crop((0, r0, src_w, r1))
    rgb = rgb.resize((right - left, r1 - r0), Image.Resampling.BICUBIC, box=(left * sx, 0, right * sx, r1 - r0))
    return rgb.resize((right - left, bottom - top), Image.Resampling.BICUBIC,
                      box=(0, top * sy - r0, right - left, bottom * sy - r0))


def _fit(rgb: Image.Image, out_h: int, out_w: int, resize: str, background) -> np.ndarray:
    """An RGB picture -> uint8 [out_h, out_w, 3] by `resize_geometry`, Pillow's bicubic and, for pad, the
    background canvas."""
    background = tuple(int(c) for c in background)
    box, (rw, rh), crop, offset = resize_geometry(rgb.size[0], rgb.size[1], out_h, out_w, resize)
    if rw * rh > LARGE_RESIZE and rw >= rgb.size[0] and rh >= rgb.size[1]:
        rgb = _upscaled_crop(rgb, (rw, rh), crop)
        rw, rh = rgb.size
        crop = (0, 0, rw, rh)
    elif (rw, rh) != rgb.size or box != (0, 0) + rgb.size:
        rgb = rgb.resize((rw, rh), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)
    if crop != (0, 0, rw, rh):
        rgb = rgb.crop(crop)
    if resize == "pad" and (rw, rh) != (out_w, out_h):
        canvas = Image.new("RGB", (out_w, out_h), background)
        canvas.paste(rgb, offset)
        rgb = canvas
    return np.array(rgb, dtype=np.uint8)


def passthrough_jpeg(src: Source, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[bytes, int] | None:
    """The file's bytes and EXIF orientation when another JPEG decoder can take it as is; else None.

    That is a JPEG (not MPO) in mode RGB or L (not CMYK), within `max_pixels`, whose stream ends with the EOI
    marker FF D9 (a little zero or whitespace padding after it is allowed): a truncated file is left to
    `load_image`, which reports it. Only the header is parsed. Raises ImageSkip with `load_image`'s reason for
    a file that is no image at all (empty, unreadable, not an image).
    """
    _allow_pixels(max_pixels)
    with warnings.catch_warnings():
        _quiet()
        im, fp = _open(src)
        with fp, im:
            w, h = im.size
            if im.format != "JPEG" or im.mode not in ("RGB", "L") or (max_pixels is not None and w * h > max_pixels):
                return None
            orientation = _orientation(im)
            try:
                fp.seek(0)
                data = fp.read()
            except OSError as e:
                raise ImageSkip(f"unreadable: {e.strerror or e}") from None
    complete = data[-32:].rstrip(b"\0 \t\r\n").endswith(b"\xff\xd9")
    return (data, orientation) if complete else None


def load_segmap(
    src: Source,
    size: int | tuple[int, int],
    resize: str = "crop",
    fill: int = 0,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Read a segmentation map (class ids per pixel) with the same geometry as `load_image`.

    Resampling is NEAREST (ids must not blend). Modes L, P and 1 give uint8 ids; 16/32-bit
    modes (I;16, I) give int16 (an error past 32767). RGB(A) maps are refused: colour-coded
    maps need a palette to turn them into ids. Pad areas take `fill`. Failures raise
    ImageSkip with the reason prefixed by "segmap ", e.g. "segmap unreadable: No such file or
    directory".
    """
    out_h, out_w = _hw(size)
    _allow_pixels(max_pixels)
    try:
        with warnings.catch_warnings():
            _quiet()
            im, fp = _open(src)
            with fp, im:
                frame = _decode(im, max_pixels)
                if frame.mode in ("L", "P", "1"):
                    ids = np.asarray(frame.convert("L") if frame.mode == "1" else frame).astype(np.uint8)
                    if frame.mode == "1":
                        ids = (ids > 0).astype(np.uint8)
                    dtype = np.uint8
                elif frame.mode.startswith("I"):
                    ids = np.asarray(frame).astype(np.int64)
                    if ids.min() < 0 or ids.max() > np.iinfo(np.int16).max:
                        raise ImageSkip("segmap decode error: class ids outside 0..32767")
                    dtype = np.int16
                else:
                    raise ImageSkip(f"segmap decode error: mode {frame.mode} is not a class-id map (use L, P or I;16)")
    except ImageSkip as e:
        if e.reason.startswith("segmap "):
            raise
        raise ImageSkip("segmap " + e.reason) from None
    h, w = ids.shape
    box, (rw, rh), crop, offset = resize_geometry(w, h, out_h, out_w, resize)
    # NEAREST on the int32 image keeps every id exact (mode "I" holds both uint8 and int16).
    pil = Image.fromarray(ids.astype(np.int32), "I")
    if rw * rh > LARGE_RESIZE and rw >= w and rh >= h:
        pil = _upscaled_crop(pil, (rw, rh), crop, Image.Resampling.NEAREST)
        rw, rh = pil.size
        crop = (0, 0, rw, rh)
    elif (rw, rh) != (w, h) or box != (0, 0, w, h):
        pil = pil.resize((rw, rh), Image.Resampling.NEAREST, box=box)
    out = np.asarray(pil.crop(crop) if crop != (0, 0, rw, rh) else pil)
    if resize == "pad" and (rw, rh) != (out_w, out_h):
        canvas = np.full((out_h, out_w), fill, dtype=np.int32)
        canvas[offset[1] : offset[1] + rh, offset[0] : offset[0] + rw] = out
        out = canvas
    return out.astype(dtype)

