"""Image loading: every Pillow mode and format, broken files, bomb limit, resize policies."""

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from regvq_cli.data.images import ImageSkip, load_image, load_segmap, resize_geometry

RED = (220, 30, 40)


def save(tmp_path, name, im, **kw):
    path = tmp_path / name
    im.save(path, **kw)
    return str(path)


def solid(mode_rgb=RED, size=(40, 30)):
    return Image.new("RGB", size, mode_rgb)


def assert_colour(arr, colour, tol=3):
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
    centre = arr[arr.shape[0] // 2, arr.shape[1] // 2].astype(int)
    assert np.abs(centre - np.array(colour)).max() <= tol, (centre, colour)


@pytest.mark.parametrize("fmt,ext,tol", [("PNG", "png", 0), ("JPEG", "jpg", 6), ("BMP", "bmp", 0),
                                          ("TIFF", "tif", 0), ("WEBP", "webp", 6), ("GIF", "gif", 30)])
def test_formats(tmp_path, fmt, ext, tol):
    path = save(tmp_path, f"a.{ext}", solid(), format=fmt)
    out = load_image(path, 16)
    assert out.shape == (16, 16, 3)
    assert_colour(out, RED, tol)


def test_bytes_input_and_hw_size(tmp_path):
    buf = io.BytesIO()
    solid().save(buf, "PNG")
    out = load_image(buf.getvalue(), (12, 20))
    assert out.shape == (12, 20, 3)
    assert_colour(out, RED, 0)


def test_rgba_composited_on_background(tmp_path):
    im = Image.new("RGBA", (20, 20), (255, 0, 0, 0))  # fully transparent red
    im.paste((0, 0, 255, 255), (0, 0, 20, 10))  # opaque blue top half
    path = save(tmp_path, "a.png", im)
    out = load_image(path, 20)
    assert tuple(out[2, 10]) == (0, 0, 255)
    assert tuple(out[17, 10]) == (255, 255, 255)  # white default background
    out = load_image(path, 20, background=(0, 128, 0))
    assert tuple(out[17, 10]) == (0, 128, 0)


def test_half_alpha_blends():
    im = Image.new("RGBA", (8, 8), (0, 0, 0, 128))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    out = load_image(buf.getvalue(), 8)
    assert abs(int(out[4, 4, 0]) - 127) <= 1  # 0 * a + 255 * (1 - a), a = 128/255


def test_la_mode(tmp_path):
    im = Image.new("LA", (10, 10), (50, 0))
    im.paste((50, 255), (0, 0, 10, 5))
    out = load_image(save(tmp_path, "a.png", im), 10)
    assert tuple(out[2, 5]) == (50, 50, 50)
    assert tuple(out[8, 5]) == (255, 255, 255)


def test_palette_with_transparency(tmp_path):
    im = Image.new("P", (10, 10), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.paste(1, (0, 0, 10, 5))  # index 1 = red on top; index 0 transparent below
    path = save(tmp_path, "a.png", im, transparency=0)
    assert Image.open(path).mode == "P" and "transparency" in Image.open(path).info
    out = load_image(path, 10, background=(0, 0, 255))
    assert tuple(out[2, 5]) == (255, 0, 0)
    assert tuple(out[8, 5]) == (0, 0, 255)


def test_16bit_grey_scaled_not_clipped(tmp_path):
    a = np.full((16, 16), 32896, dtype=np.uint16)  # 128 * 257: mid grey in 16 bits
    a[:8] = 65535
    path = save(tmp_path, "a.png", Image.fromarray(a))
    assert Image.open(path).mode.startswith("I;16")
    out = load_image(path, 16, resize="stretch")
    assert tuple(out[12, 8]) == (128, 128, 128)
    assert tuple(out[2, 8]) == (255, 255, 255)
    tif = save(tmp_path, "a.tif", Image.fromarray(a))
    assert tuple(load_image(tif, 16)[12, 8]) == (128, 128, 128)


def test_32bit_int_and_float_modes(tmp_path):
    i32 = Image.fromarray(np.full((8, 8), 257 * 200, dtype=np.int32))
    assert i32.mode == "I"
    assert tuple(load_image(save(tmp_path, "i.tif", i32), 8)[4, 4]) == (200, 200, 200)
    f = np.zeros((8, 8), dtype=np.float32)
    f[:, 4:] = 1.0
    out = load_image(save(tmp_path, "f.tif", Image.fromarray(f)), 8, resize="stretch")
    assert out[4, 0, 0] == 0 and out[4, 7, 0] == 255
    f2 = np.linspace(-5, 5, 64, dtype=np.float32).reshape(8, 8)  # outside [0, 1]: min-max
    out = load_image(save(tmp_path, "f2.tif", Image.fromarray(f2)), 8, resize="stretch")
    assert out[0, 0, 0] == 0 and out[7, 7, 0] == 255


def test_cmyk_jpeg(tmp_path):
    path = save(tmp_path, "a.jpg", solid().convert("CMYK"), quality=95)
    assert Image.open(path).mode == "CMYK"
    assert_colour(load_image(path, 16), RED, 8)


def test_bilevel_and_ycbcr(tmp_path):
    im = Image.new("1", (16, 16), 0)
    im.paste(1, (8, 0, 16, 16))
    out = load_image(save(tmp_path, "a.bmp", im), 16, resize="stretch")
    assert tuple(out[8, 2]) == (0, 0, 0) and tuple(out[8, 13]) == (255, 255, 255)
    out = load_image(save(tmp_path, "y.tif", solid().convert("YCbCr")), 8)
    assert_colour(out, RED, 4)


def test_exif_orientation_applied(tmp_path):
    im = Image.new("RGB", (40, 20), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 20, 20))  # red left half as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    path = save(tmp_path, "a.jpg", im, exif=exif, quality=95)
    out = load_image(path, (40, 20), resize="stretch")  # (h, w): upright is 20 wide, 40 tall
    # After a 90 degree clockwise turn the stored left half is on top.
    assert out[5, 10, 0] > 200 and out[5, 10, 2] < 60
    assert out[35, 10, 2] > 200 and out[35, 10, 0] < 60


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    path = tmp_path / "a.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(path).n_frames == 3
    assert_colour(load_image(str(path), 8), (255, 0, 0), 2)
    apng = tmp_path / "a.png"
    frames[1].save(apng, save_all=True, append_images=[frames[2]])
    assert_colour(load_image(str(apng), 8), (0, 255, 0), 2)


def skip_reason(src, **kw):
    with pytest.raises(ImageSkip) as e:
        load_image(src, 16, **kw)
    return e.value.reason


def test_broken_files(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert skip_reason(str(tmp_path / "empty.jpg")) == "empty file"
    assert skip_reason(b"") == "empty file"
    (tmp_path / "text.jpg").write_text("hello, not an image\n")
    assert skip_reason(str(tmp_path / "text.jpg")) == "not an image"
    assert skip_reason(str(tmp_path / "missing.jpg")) == "unreadable: No such file or directory"
    assert skip_reason(str(tmp_path)).startswith("unreadable: ")  # a folder
    assert skip_reason(str(tmp_path / "a\0b.jpg")) == "unreadable: the path holds a NUL byte"  # find -print0's
    os.mkfifo(tmp_path / "pipe.png")  # would block a reader until something wrote to it
    assert skip_reason(str(tmp_path / "pipe.png")) == "not a regular file (a pipe, socket or device)"
    assert skip_reason("/dev/zero") == "not a regular file (a pipe, socket or device)"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated(tmp_path, fmt):
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    buf = io.BytesIO()
    im.save(buf, fmt)
    data = buf.getvalue()
    assert skip_reason(data[: len(data) // 2], draft=False) == "truncated"


def png_header(w, h):
    """A PNG that declares w x h but holds one tiny IDAT: only the header is ever read."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def test_pixel_limit(tmp_path):
    (tmp_path / "bomb.png").write_bytes(png_header(100_000, 100_000))  # 10^10 px, 30 GB if decoded
    assert skip_reason(str(tmp_path / "bomb.png")).startswith("too large: ")
    (tmp_path / "big.png").write_bytes(png_header(300, 300))
    assert skip_reason(str(tmp_path / "big.png"), max_pixels=1000) == "too large: 300x300 > 1000 px"
    ok = save(tmp_path, "ok.png", solid((1, 2, 3), (30, 30)))
    assert load_image(ok, 8, max_pixels=900).shape == (8, 8, 3)


def test_permission_denied(tmp_path, monkeypatch):
    path = save(tmp_path, "a.png", solid())
    if os.getuid() == 0:  # root reads files whatever their mode: have the OS refuse this one
        real_open = os.open

        def refusing_open(p, *args, **kwargs):
            if str(p) == str(path):
                raise PermissionError(13, "Permission denied")
            return real_open(p, *args, **kwargs)

        monkeypatch.setattr(os, "open", refusing_open)
    else:
        os.chmod(path, 0)
    try:
        assert skip_reason(path) == "unreadable: Permission denied"
    finally:
        os.chmod(path, 0o644)


def quadrants(w, h):
    """Left half red, right half blue, a green band 2 px wide at the very top."""
    im = Image.new("RGB", (w, h), (255, 0, 0))
    im.paste((0, 0, 255), (w // 2, 0, w, h))
    return im


def test_a_long_thin_picture_is_enlarged_only_where_it_is_kept(tmp_path, monkeypatch):
    """shorter-crop made the whole enlarged picture before cutting its centre (1 x 8,000 px: 256 x 2,048,000, GBs).
    Past LARGE_RESIZE pixels only the kept part is made: the same picture and map within a level or a row."""
    from regvq_cli.data import images

    rng = np.random.default_rng(0)
    for w, h in ((3, 900), (700, 5), (1, 400)):
        path = save(tmp_path, f"thin{w}x{h}.png", Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
        whole = load_image(path, 32, resize="shorter-crop")
        seg_path = str(tmp_path / f"map{w}x{h}.png")
        Image.fromarray(rng.integers(0, 9, (h, w), dtype=np.uint8)).save(seg_path)
        seg_whole = load_segmap(seg_path, 32, resize="shorter-crop")
        monkeypatch.setattr(images, "LARGE_RESIZE", 4 * 32 * 32)  # these pictures now take the other way
        part = load_image(path, 32, resize="shorter-crop")
        seg_part = load_segmap(seg_path, 32, resize="shorter-crop")
        monkeypatch.undo()
        diff = np.abs(whole.astype(int) - part)
        assert part.shape == (32, 32, 3) and diff.max() <= 2 and (diff > 0).mean() < 0.02, (w, h)
        assert seg_part.shape == (32, 32) and (seg_part != seg_whole).any(axis=1).sum() <= 1  # a row at most
        assert (seg_part != seg_whole).any(axis=0).sum() <= 1, (w, h)
    huge = save(tmp_path, "huge.png", Image.fromarray(rng.integers(0, 256, (8000, 1, 3), dtype=np.uint8)))
    assert load_image(huge, 256, resize="shorter-crop").shape == (256, 256, 3)  # 6 GB the whole way


def test_a_picture_that_runs_out_of_memory_is_skipped_not_the_run(tmp_path, monkeypatch):
    from regvq_cli.data import images

    def no_memory(*args):
        raise MemoryError

    monkeypatch.setattr(images, "_fit", no_memory)
    assert skip_reason(save(tmp_path, "a.png", solid())).startswith("out of memory: ")


def test_resize_policies(tmp_path):
    wide = save(tmp_path, "wide.png", quadrants(80, 20))
    crop = load_image(wide, 10, resize="crop")
    # Centre square 20x20 of an 80-wide image: half red, half blue.
    assert crop[5, 2, 0] > 200 and crop[5, 8, 2] > 200
    pad = load_image(wide, 16, resize="pad", background=(0, 255, 0))
    assert tuple(pad[0, 8]) == (0, 255, 0) and tuple(pad[15, 8]) == (0, 255, 0)  # bars top/bottom
    assert pad[8, 1, 0] > 200 and pad[8, 14, 2] > 200
    stretch = load_image(wide, 10, resize="stretch")
    assert stretch[5, 1, 0] > 200 and stretch[5, 8, 2] > 200
    shorter = load_image(wide, 10, resize="shorter-crop")
    assert np.abs(shorter.astype(int) - crop.astype(int)).max() <= 40
    # a left-to-right ramp (red = 3 x column) tells the kept regions apart: crop and shorter-crop keep columns
    # 30-50 of 80 (resized before or after cutting), stretch keeps them all
    ramp = np.zeros((20, 80, 3), np.uint8)
    ramp[..., 0] = 3 * np.arange(80)
    ramp = save(tmp_path, "ramp.png", Image.fromarray(ramp))
    red = {policy: load_image(ramp, 10, resize=policy)[5, :, 0].astype(int) for policy in ("crop", "shorter-crop",
                                                                                          "stretch")}
    assert abs(red["crop"][0] - 3 * 31) <= 6 and abs(red["crop"][-1] - 3 * 48) <= 6
    assert np.abs(red["shorter-crop"] - red["crop"]).max() <= 6
    assert abs(red["stretch"][0] - 3 * 4) <= 8 and abs(red["stretch"][-1] - 3 * 76) <= 8
    with pytest.raises(ValueError):
        load_image(wide, 10, resize="zoom")


def test_geometry_boxes():
    assert resize_geometry(400, 300, 100, 100, "crop")[0] == (50, 0, 350, 300)
    box, (rw, rh), crop, _ = resize_geometry(400, 300, 100, 100, "shorter-crop")
    assert (rw, rh) == (133, 100) and crop == (16, 0, 116, 100)
    _, (rw, rh), _, off = resize_geometry(400, 300, 100, 100, "pad")
    assert (rw, rh) == (100, 75) and off == (0, 12)
    # (h, w) = (50, 100) from 300x300: crop a 300x150 band
    assert resize_geometry(300, 300, 50, 100, "crop")[0] == (0, 75, 300, 225)


def test_jpeg_draft_is_close_to_full_decode(tmp_path):
    yy, xx = np.mgrid[0:1600, 0:2400]
    arr = np.stack([(xx // 7) % 256, (yy // 5) % 256, ((xx + yy) // 11) % 256], -1).astype(np.uint8)
    path = save(tmp_path, "big.jpg", Image.fromarray(arr), quality=92)
    with Image.open(path) as im:
        im.draft("RGB", (300, 200))
        assert im.size[0] < 2400  # the draft path is really taken for this file
    fast = load_image(path, 64).astype(int)
    full = load_image(path, 64, draft=False).astype(int)
    assert np.abs(fast - full).mean() < 3.0


def test_segmap_nearest_and_dtypes(tmp_path):
    ids = np.zeros((40, 40), dtype=np.uint8)
    ids[:, 20:] = 7
    ids[:5, :5] = 3
    path = save(tmp_path, "m.png", Image.fromarray(ids))
    out = load_segmap(path, 8, resize="stretch")
    assert out.dtype == np.uint8 and set(np.unique(out)) <= {0, 3, 7}
    assert out[4, 6] == 7 and out[4, 1] == 0 and out[0, 0] == 3
    big = np.full((10, 10), 1000, dtype=np.uint16)
    out = load_segmap(save(tmp_path, "b.png", Image.fromarray(big)), 4)
    assert out.dtype == np.int16 and (out == 1000).all()
    padded = load_segmap(save(tmp_path, "w.png", Image.fromarray(np.full((10, 40), 5, np.uint8))), 8, "pad", fill=255)
    assert padded[0, 0] == 255 and padded[4, 4] == 5
    with pytest.raises(ImageSkip, match="segmap unreadable"):
        load_segmap(str(tmp_path / "nope.png"), 8)
    with pytest.raises(ImageSkip, match="segmap decode error"):
        load_segmap(save(tmp_path, "rgb.png", solid()), 8)


def test_segmap_matches_image_geometry(tmp_path):
    im = quadrants(60, 20)
    ids = Image.fromarray((np.asarray(im)[..., 2] > 128).astype(np.uint8))  # 1 where blue
    ip, mp = save(tmp_path, "i.png", im), save(tmp_path, "i_map.png", ids)
    for policy in ("crop", "shorter-crop", "pad", "stretch"):
        img = load_image(ip, 12, policy, background=(0, 0, 0))
        seg = load_segmap(mp, 12, policy)
        blue = (img[..., 2] > 200)
        agree = (blue == (seg == 1)).mean()
        assert agree > 0.9, (policy, agree)


def test_image_dataset_marks_skips(tmp_path):
    from regvq_cli.data.dataset import ImageDataset
    from regvq_cli.data.inputs import list_inputs

    (tmp_path / "imgs").mkdir()
    save(tmp_path / "imgs", "a.png", solid())
    (tmp_path / "imgs" / "b.jpg").write_bytes(b"")
    maps = tmp_path / "maps"
    maps.mkdir()
    Image.fromarray(np.full((30, 40), 4, np.uint8)).save(maps / "a.png")
    ds = ImageDataset(list_inputs([str(tmp_path / "imgs")], maps_dir=str(maps)), 8, segmap_size=(4, 4))
    a, b = ds[0], ds[1]
    assert a["ok"] and a["image"].shape == (3, 8, 8) and int(a["image"][0, 4, 4]) == RED[0]
    assert a["segmap"].shape == (4, 4) and int(a["segmap"][0, 0]) == 4
    assert not b["ok"] and b["reason"] == "empty file" and "image" not in b


def test_an_image_whose_map_is_missing_is_skipped_with_its_pixels(tmp_path):
    """The picture reads, its map does not: the item is skipped and carries no pixels, so a batch stacks only the
    pictures of the rows it keeps."""
    from regvq_cli.data.dataset import ImageDataset
    from regvq_cli.data.inputs import list_inputs

    (tmp_path / "imgs").mkdir()
    for name in ("a.png", "b.png", "c.png"):
        save(tmp_path / "imgs", name, solid())
    maps = tmp_path / "maps"
    maps.mkdir()
    for name in ("a.png", "c.png"):
        Image.fromarray(np.full((30, 40), 4, np.uint8)).save(maps / name)
    ds = ImageDataset(list_inputs([str(tmp_path / "imgs")], maps_dir=str(maps)), 8, segmap_size=(4, 4))
    items = [ds[j] for j in range(3)]
    assert not items[1]["ok"] and "segmap" in items[1]["reason"] and "image" not in items[1]
    batch = ds.collate(items)
    assert batch["ok"].tolist() == [True, False, True] and batch["image"].shape == (2, 3, 8, 8)
