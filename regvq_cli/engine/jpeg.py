"""JPEG decoding on the GPU for `regvq encode` (nvjpeg, through torchvision).

On a many-core GPU host, decoding JPEGs with Pillow in the DataLoader workers caps `regvq encode` well below
what the tokenizer does. With this path on, the workers only read each JPEG's header (format, colour mode,
size, EXIF orientation, a complete stream: `data.images.passthrough_jpeg`) and hand its bytes on; the main
process decodes the batch's JPEGs in one `torchvision.io.decode_jpeg` call on the device, then orients,
resizes, crops and pads them there with `load_image`'s geometry (`resize_geometry`). Everything else (PNG,
GIF, CMYK JPEGs, truncated files, ...) is decoded by Pillow in the workers as before, and a JPEG that nvjpeg
refuses is decoded by Pillow in the main process, so every input is encoded or skipped with Pillow's reason.

The pixels are close to Pillow's, not identical: another IDCT and chroma upsampling, no reduced-scale draft
decode of large JPEGs, and bicubic resampling in float32 where Pillow rounds between its two passes. Tokens
agree at most positions, not all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from regvq_cli.data.images import ImageSkip, load_image, resize_geometry
from regvq_cli.errors import RegvqError

DECODERS = ("pillow", "nvjpeg")


def nvjpeg_available(device) -> bool:
    """True when `device` is a CUDA device and torchvision's JPEG decoder can be imported, in a version that
    decodes a list of files in one call (0.20 or later)."""
    if torch.device(device).type != "cuda":
        return False
    try:
        import torchvision
        from torchvision.io import decode_jpeg  # noqa: F401
    except Exception:  # not installed, or built for another torch (RuntimeError, OSError)
        return False
    major, minor = (int(v) for v in torchvision.__version__.split(".")[:2])
    return (major, minor) >= (0, 20)


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


def nvjpeg_decode(datas: list[torch.Tensor], device) -> list[torch.Tensor]:
    """JPEG files (uint8 [n_bytes] CPU tensors) -> uint8 [3, h, w] RGB on `device`, as stored (no EXIF
    orientation). One batched call; it raises for the whole batch if any stream fails."""
    from torchvision.io import ImageReadMode, decode_jpeg

    return decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)


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


def resize_tensor(img: torch.Tensor, out_h: int, out_w: int, resize: str = "crop",
                  background: tuple[int, int, int] = (255, 255, 255)) -> torch.Tensor:
    """uint8 [3, h, w] or [n, 3, h, w] (any device) -> uint8 [..., 3, out_h, out_w] with `load_image`'s
    geometry: the source box, bicubic resampling (antialiased when shrinking, Pillow's kernel), the crop and,
    for "pad", the `background` canvas."""
    h, w = img.shape[-2:]
    box, (rw, rh), crop, offset = resize_geometry(w, h, out_h, out_w, resize)
    x = img[..., box[1]:box[3], box[0]:box[2]]
    if (rh, rw) != tuple(x.shape[-2:]):
        batch = x.reshape(-1, *x.shape[-3:]).float()  # interpolate wants [n, c, h, w]
        y = F.interpolate(batch, size=(rh, rw), mode="bicubic", antialias=True, align_corners=False)
        x = y.round_().clamp_(0, 255).to(torch.uint8).reshape(*x.shape[:-2], rh, rw)
    x = x[..., crop[1]:crop[3], crop[0]:crop[2]]
    if resize == "pad" and (rw, rh) != (out_w, out_h):
        canvas = torch.tensor(background, dtype=torch.uint8, device=img.device).view(3, 1, 1)
        canvas = canvas.expand(*x.shape[:-2], out_h, out_w).clone()
        canvas[..., offset[1]:offset[1] + rh, offset[0]:offset[0] + rw] = x
        x = canvas
    return x


def batch_pixels(batch: dict, device, size: tuple[int, int], resize: str, background: tuple[int, int, int],
                 max_pixels: int | None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """A batch of `ImageDataset.collate` -> (pixels, ok, reasons): pixels uint8 [n_ok, 3, H, W] in input order,
    ok bool [b] and reasons [b] as the batch's, updated for the JPEGs decoded here.

    The workers' decoded images are copied over; the JPEG bytes are decoded on `device`, turned upright and
    resized there. A JPEG that nvjpeg refuses goes to `load_image` (Pillow), which decodes it or says why it is
    skipped. Without JPEG bytes the batch's own (pinned) image tensor comes back as it is.
    """
    if not batch["jpeg"].any():
        return batch["image"], batch["ok"], batch["reason"]
    out_h, out_w = size
    ok, reasons = batch["ok"].clone(), list(batch["reason"])
    rows = batch["jpeg"].nonzero().flatten().tolist()
    datas = list(batch["jpeg_bytes"].split(batch["jpeg_sizes"].tolist()))  # uint8 [n_bytes] each
    pictures = {}  # row -> uint8 [3, out_h, out_w] on the device
    same_shape = {}  # (h, w) -> [(row, uint8 [3, h, w] upright)]: resized together
    for row, data, img, orientation in zip(rows, datas, decode_jpegs(datas, device), batch["orientation"].tolist()):
        if img is not None:
            img = apply_orientation(img, orientation)
            same_shape.setdefault(tuple(img.shape[-2:]), []).append((row, img))
            continue
        try:
            px = load_image(data.numpy().tobytes(), size, resize, background, max_pixels)  # uint8 [H, W, 3]
            pictures[row] = torch.from_numpy(px).permute(2, 0, 1).to(device)
        except ImageSkip as e:
            ok[row], reasons[row] = False, e.reason
    for (h, w), group in same_shape.items():
        step = max(1, (1 << 26) // (3 * h * w))  # images per interpolate call: its float32 copy stays <= 256 MiB
        for k in range(0, len(group), step):
            part = group[k:k + step]
            resized = resize_tensor(torch.stack([img for _, img in part]), out_h, out_w, resize, background)
            pictures.update(zip([row for row, _ in part], resized))
    place = (ok.cumsum(0) - 1).tolist()  # row -> its index among the ok rows
    pixels = torch.empty((int(ok.sum()), 3, out_h, out_w), dtype=torch.uint8, device=device)
    decoded = [place[row] for row in (batch["ok"] & ~batch["jpeg"]).nonzero().flatten().tolist()]
    if decoded:
        pixels[torch.tensor(decoded, device=device)] = batch["image"].to(device, non_blocking=True)
    for row, px in pictures.items():
        pixels[place[row]] = px
    return pixels, ok, reasons
