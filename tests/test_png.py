"""engine/png.py: the Paeth filter of the PNG specification, files any decoder reads back exactly, and the same
scanlines from the device as from the CPU."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from regvq_cli.engine import png


def paeth_reference(pixels: np.ndarray) -> np.ndarray:
    """The specification's filter written out byte by byte: uint8 [H, W, 3] -> [H, 1 + 3W]."""
    h, w, _ = pixels.shape
    raw = pixels.reshape(h, 3 * w).astype(int)
    out = np.zeros((h, 1 + 3 * w), dtype=np.uint8)
    for y in range(h):
        out[y, 0] = 4
        for x in range(3 * w):
            a = raw[y, x - 3] if x >= 3 else 0
            b = raw[y - 1, x] if y >= 1 else 0
            c = raw[y - 1, x - 3] if x >= 3 and y >= 1 else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            predictor = a if pa <= pb and pa <= pc else b if pb <= pc else c
            out[y, 1 + x] = (raw[y, x] - predictor) % 256
    return out


def pictures():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:9, 0:11]
    smooth = np.stack([xx * 20, yy * 25, xx * 9 + yy * 7], -1).clip(0, 255).astype(np.uint8)
    return {"noise": rng.integers(0, 256, (7, 5, 3), dtype=np.uint8),
            "ties": rng.integers(0, 6, (12, 12, 3), dtype=np.uint8),  # few values: many equal distances
            "extremes": rng.choice(np.array([0, 1, 254, 255], dtype=np.uint8), (5, 6, 3)),  # differences wrap
            "smooth": smooth, "one pixel": rng.integers(0, 256, (1, 1, 3), dtype=np.uint8),
            "one row": rng.integers(0, 256, (1, 13, 3), dtype=np.uint8),
            "one column": rng.integers(0, 256, (10, 1, 3), dtype=np.uint8)}


@pytest.mark.parametrize("name", list(pictures()))
def test_filter_rows_is_the_specifications_paeth_filter(name):
    pixels = pictures()[name]
    assert np.array_equal(png.filter_rows(torch.from_numpy(pixels)).numpy(), paeth_reference(pixels))


def test_filter_rows_filters_a_batch_picture_by_picture():
    batch = np.random.default_rng(1).integers(0, 256, (3, 4, 6, 3), dtype=np.uint8)
    rows = png.filter_rows(torch.from_numpy(batch)).numpy()
    assert rows.shape == (3, 4, 19)
    for picture, picture_rows in zip(batch, rows):
        assert np.array_equal(picture_rows, paeth_reference(picture))


@pytest.mark.parametrize("name", list(pictures()))
def test_pngs_read_back_as_the_exact_pixels(name, tmp_path, monkeypatch):
    """Pillow decodes the files to the same pixels; stdout gets the bytes of the file."""
    pixels = pictures()[name]
    png.save_png(pixels, str(tmp_path / "sub" / "a.png"))
    with Image.open(tmp_path / "sub" / "a.png") as image:
        assert image.mode == "RGB" and np.array_equal(np.asarray(image), pixels)
    out = io.BytesIO()
    monkeypatch.setattr(png.sys, "stdout", io.TextIOWrapper(out))
    png.write_png_to_stdout(pixels)
    assert out.getvalue() == (tmp_path / "sub" / "a.png").read_bytes()
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["a.png"]  # no temporary file left


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(png.os, "replace", full)
    with pytest.raises(OSError) as e:
        png.save_png(pictures()["noise"], str(tmp_path / "a.png"))
    assert list(tmp_path.iterdir()) == []
    assert (e.value.errno, e.value.filename) == (28, str(tmp_path / "a.png"))  # the error names the picture


def test_a_name_as_long_as_a_name_can_be_is_written(tmp_path):
    """The temporary name does not lengthen the file's own: 255 bytes is the limit of most file systems."""
    name = "y" * 251 + ".png"
    png.save_png(pictures()["noise"], str(tmp_path / name))
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_huffman_coding_makes_smaller_files_than_level_1s_default_strategy():
    """The filters' residuals of a smooth picture with a little noise (what a decoder makes) compress better with
    Huffman coding alone than with deflate level 1's string matching."""
    yy, xx = np.mgrid[0:96, 0:128]
    noise = np.random.default_rng(0).integers(0, 4, (96, 128, 3))
    pixels = (np.stack([xx * 2, yy * 2, xx + yy], -1) + noise).clip(0, 255).astype(np.uint8)
    rows = png.filter_rows(torch.from_numpy(pixels)).numpy()
    level1 = __import__("zlib").compressobj(1)
    assert len(png.png_bytes(rows)) < len(level1.compress(rows) + level1.flush())


@pytest.mark.gpu
def test_filter_rows_on_the_gpu_gives_the_cpus_bytes():
    batch = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (4, 33, 47, 3), dtype=np.uint8))
    assert torch.equal(png.filter_rows(batch.cuda()).cpu(), png.filter_rows(batch))


@pytest.mark.gpu
def test_the_gpu_runners_png_rows_arrive_by_their_event():
    """On a GPU decode_png_rows returns pinned memory still being filled and the event of its arrival: once the
    event is waited for, the rows are the pictures' filtered scanlines, batch after batch."""
    from regvq_cli.engine.runtime import prepare_tokenizer
    from regvq_cli.tokenizer.model import Tokenizer
    from regvq_cli.tokenizer.presets import PRESETS

    torch.manual_seed(0)
    tokenizer = Tokenizer(PRESETS["tok-test"]).eval()
    runner = prepare_tokenizer(tokenizer, torch.device("cuda"), torch.bfloat16)
    grid = tokenizer.grid_size(tokenizer.config.image_size)
    for seed in range(3):
        indices = torch.randint(0, tokenizer.codebook_size, (4, *grid), generator=torch.Generator().manual_seed(seed))
        rows, arrived = runner.decode_png_rows(indices)
        assert rows.is_pinned()
        arrived.synchronize()
        assert torch.equal(rows, png.filter_rows(runner.decode_uint8(indices)))


def test_the_runners_png_rows_are_its_pictures_filtered():
    """`regvq decode` writes the scanlines TokenizerRunner.decode_png_rows filters where the pictures were decoded:
    the same as filtering decode_uint8's pictures."""
    from regvq_cli.engine.runtime import prepare_tokenizer
    from regvq_cli.tokenizer.model import Tokenizer
    from regvq_cli.tokenizer.presets import PRESETS

    torch.manual_seed(0)
    tokenizer = Tokenizer(PRESETS["tok-test"]).eval()
    runner = prepare_tokenizer(tokenizer, torch.device("cpu"))
    indices = torch.randint(0, tokenizer.codebook_size, (2, *tokenizer.grid_size(tokenizer.config.image_size)))
    rows, arrived = runner.decode_png_rows(indices)
    assert arrived is None and torch.equal(rows, png.filter_rows(runner.decode_uint8(indices)))


def test_the_writer_threads_write_every_picture_after_its_rows_arrive(tmp_path):
    """PngWriter's files hold the pictures whose rows it was handed, in tasks that first wait for the rows' arrival
    event; leaving the block writes all of them."""
    rng = np.random.default_rng(3)
    batches = [rng.integers(0, 256, (n, 5, 7, 3), dtype=np.uint8) for n in (11, 3)]

    class Arrival:
        waited = 0

        def synchronize(self):
            Arrival.waited += 1

    paths = []
    with png.PngWriter() as writer:
        for b, pictures in enumerate(batches):
            names = [str(tmp_path / f"{b}-{i}.png") for i in range(len(pictures))]
            writer.write(png.filter_rows(torch.from_numpy(pictures)).numpy(), names, Arrival())
            paths += names
    assert Arrival.waited == 3  # tasks of up to 8 pictures: 2 for the first batch, 1 for the second
    for path, picture in zip(paths, np.concatenate(batches)):
        with Image.open(path) as image:
            assert np.array_equal(np.asarray(image), picture)


def test_a_writer_threads_error_reaches_the_caller(tmp_path):
    rows = png.filter_rows(torch.zeros(2, 4, 4, 3, dtype=torch.uint8)).numpy()
    with pytest.raises(FileNotFoundError):
        with png.PngWriter() as writer:
            writer.write(rows, [str(tmp_path / "a.png"), str(tmp_path / "missing" / "b.png")])
    assert (tmp_path / "a.png").exists() and not (tmp_path / "missing").exists()


def test_torchrun_processes_of_a_host_share_its_cores_for_writing(monkeypatch):
    from regvq_cli.engine import dist

    monkeypatch.setattr(dist.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert png.writer_threads() == 16
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert png.writer_threads() == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "64")
    assert png.writer_threads() == 1
