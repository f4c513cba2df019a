"""`regvq encode --jpeg-decoder nvjpeg`: JPEGs decoded, oriented and resized on the device.

torchvision is not needed on a CPU: a Pillow decoder stands in for nvjpeg (same contract: RGB as stored, no EXIF
orientation, one failing stream fails the whole batch), so everything around the decoder runs here. The `gpu`
test runs the real decoder.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from regvq_cli.data.dataset import ImageDataset
from regvq_cli.data.images import ImageSkip, decode_image, load_image, passthrough_jpeg
from regvq_cli.data.inputs import list_inputs
from regvq_cli.data.shards import ShardReader
from regvq_cli.engine import jpeg
from regvq_cli.engine.checkpoint import save_model
from regvq_cli.errors import RegvqError
from regvq_cli.tokenizer.model import Tokenizer
from regvq_cli.tokenizer.presets import PRESETS
from tests.conftest import REPO, invoke, run_interpreted

PHOTOS = REPO / "examples" / "images"
REFUSED = b"a stream the decoder refuses"  # a JPEG comment that makes the stand-in decoder fail


def photo(name: str, size: tuple[int, int]) -> Image.Image:
    """An example photo resized to size (w, h): real picture content, any size."""
    return Image.open(PHOTOS / name).convert("RGB").resize(size, Image.Resampling.LANCZOS)


def make_folder(folder, scale: int = 1):
    """A folder mixing what nvjpeg takes, what Pillow must decode and what is skipped; scale multiplies the sizes.
    Returns {name: expected skip reason} for the inputs that are skipped."""
    folder.mkdir(parents=True)
    photo("chelsea.jpg", (120 * scale, 90 * scale)).save(folder / "a.jpg", quality=90)
    photo("coffee.jpg", (160 * scale, 200 * scale)).save(folder / "b.jpg", quality=85)  # Pillow drafts it
    photo("astronaut.jpg", (48 * scale, 64 * scale)).save(folder / "c1.jpg", quality=90)  # c1, c2: same shape
    photo("hubble_deep_field.jpg", (48 * scale, 64 * scale)).save(folder / "c2.jpg", quality=90)
    photo("chelsea.jpg", (70 * scale, 50 * scale)).convert("L").save(folder / "grey.jpg", quality=90)
    photo("coffee.jpg", (60 * scale, 60 * scale)).convert("CMYK").save(folder / "cmyk.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter anticlockwise
    photo("astronaut.jpg", (100 * scale, 60 * scale)).save(folder / "rotated.jpg", quality=90, exif=exif)
    rgba = photo("chelsea.jpg", (50 * scale, 40 * scale)).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    rgba.save(folder / "alpha.png")
    photo("coffee.jpg", (80 * scale, 60 * scale)).save(folder / "refused.jpg", quality=90, comment=REFUSED)
    good = (folder / "a.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("hello")
    return {"truncated.jpg": "truncated", "empty.jpg": "empty file", "text.jpg": "not an image"}


def pillow_decode(datas: list[torch.Tensor], device) -> list[torch.Tensor]:
    """Stands in for nvjpeg_decode: uint8 [3, h, w] RGB as stored; a marked stream fails the whole call."""
    raws = [d.numpy().tobytes() for d in datas]
    if any(REFUSED in raw for raw in raws):
        raise RuntimeError("nvjpeg: the stream cannot be decoded")
    return [torch.from_numpy(np.array(Image.open(io.BytesIO(raw)).convert("RGB"))).permute(2, 0, 1).to(device)
            for raw in raws]


@pytest.fixture
def stand_in(monkeypatch):
    """nvjpeg 'available' on any device, decoding with Pillow."""
    monkeypatch.setattr(jpeg, "nvjpeg_available", lambda device: True)
    monkeypatch.setattr(jpeg, "nvjpeg_decode", pillow_decode)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    torch.manual_seed(0)
    return save_model(Tokenizer(PRESETS["tok-test"]), tmp_path_factory.mktemp("tok") / "tok")


def chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(2, 0, 1).contiguous()


def png_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


# The device path computes Pillow's own bicubic weights and, like Pillow's classic order, a horizontal pass
# rounded to 8 bits, then the vertical one. What still differs: Pillow's fixed-point weights (+-1), the order of
# the passes that newer Pillow picks for some sizes (a few levels where the 8-bit intermediate clips), and its
# box-filter step when shrinking by 3x or more (`reducing_gap`). Measured on these crops of an example photo:
# most cases exact, the others mean <= 0.35 and max <= 3 grey levels.
@pytest.mark.parametrize("policy", ["crop", "shorter-crop", "pad", "stretch"])
@pytest.mark.parametrize("src, size", [((200, 300), (32, 32)), ((256, 385), (48, 40)), ((168, 93), (100, 100)),
                                       ((24, 20), (32, 32)), ((24, 20), (100, 100)), ((250, 250), (256, 256)),
                                       ((255, 199), (100, 120))])
def test_resize_tensor_matches_pillow_bicubic(policy, src, size):
    a = np.array(photo("chelsea.jpg", (385, 256)))[: src[0], : src[1]]
    ref = load_image(png_bytes(a), size, policy, (10, 200, 30), draft=False).astype(int)
    out = jpeg.resize_tensor(chw(a), *size, policy, (10, 200, 30))
    assert out.dtype == torch.uint8 and out.shape == (3, *size)
    diff = np.abs(out.permute(1, 2, 0).numpy().astype(int) - ref)
    assert diff.mean() < 0.4 and diff.max() <= 3 and (diff > 1).mean() < 0.01, (diff.mean(), diff.max())


def test_resize_tensor_is_pillow_up_to_fixed_point_along_one_axis():
    """One axis resized, the other kept: no pass order and no intermediate rounding to differ in."""
    a = np.random.default_rng(0).integers(0, 256, (37, 90, 3), dtype=np.uint8)
    for w in (23, 64, 90, 200):
        ref = np.array(Image.fromarray(a).resize((w, 37), Image.Resampling.BICUBIC, reducing_gap=None)).astype(int)
        diff = np.abs(jpeg.resize_tensor(chw(a), 37, w, "stretch").permute(1, 2, 0).numpy().astype(int) - ref)
        assert diff.max() <= 1 and diff.mean() < 0.01, (w, diff.mean(), diff.max())


def test_resize_tensor_batches_like_one_by_one():
    a = np.array(photo("coffee.jpg", (90, 70)))
    batch = torch.stack([chw(a), chw(a[::-1].copy())])
    out = jpeg.resize_tensor(batch, 32, 40, "pad", (1, 2, 3))
    assert out.shape == (2, 3, 32, 40)
    assert torch.equal(out[1], jpeg.resize_tensor(batch[1], 32, 40, "pad", (1, 2, 3)))
    assert torch.equal(jpeg.resize_tensor(chw(a[:32, :40].copy()), 32, 40, "stretch"), chw(a[:32, :40].copy()))


def test_resize_batch_of_mixed_sizes_in_chunks_is_one_by_one(monkeypatch):
    """Pictures of several sizes, in an order that is not by size, resized in chunks of a few (the weights made
    once for the batch, padded to its largest picture): each equals the picture resized alone, in its place."""
    rng = np.random.default_rng(1)
    shapes = [(40, 70), (90, 33), (17, 17), (64, 64), (33, 90), (120, 45), (25, 61)]
    pictures = [torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8)) for h, w in shapes]
    monkeypatch.setattr(jpeg, "_CHUNK_BYTES", 3 * 64 * 64 * 8 * 2)  # two 64x64 pictures a chunk
    for policy in ("crop", "pad"):
        out = jpeg.resize_batch(pictures, 32, 24, policy, (7, 8, 9))
        assert out.shape == (len(pictures), 3, 32, 24)
        for picture, got in zip(pictures, out):
            assert torch.equal(got, jpeg.resize_batch([picture], 32, 24, policy, (7, 8, 9))[0])


RESIZE_KERNELS_CHECK = """
import numpy as np, torch
import regvq_cli.engine.jpeg as jpeg

rng = np.random.default_rng(0)
# shrinking (by up to 25x: many taps), enlarging (2x exactly: ties), edges, one picture of other strides
shapes = [(30, 42), (25, 25), (9, 12), (4, 100), (70, 6)]
pictures = [torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8)) for h, w in shapes]
pictures.append(pictures[0].transpose(-2, -1))
differ = total = 0
for policy in ("crop", "shorter-crop", "pad", "stretch"):
    for size in ((8, 8), (20, 24)):
        got = jpeg.resize_batch(pictures, *size, policy, (10, 20, 30))  # the kernels, interpreted
        jpeg.triton_runs_on = lambda device: False
        want = jpeg.resize_batch(pictures, *size, policy, (10, 20, 30))  # the matrix products
        jpeg.triton_runs_on = lambda device: True
        assert got.shape == want.shape == (len(pictures), 3, *size) and got.dtype == torch.uint8
        d = (got.int() - want.int()).abs()
        assert d.max() <= 1, (policy, size, d.max())
        differ, total = differ + int((d > 0).sum()), total + d.numel()
        assert torch.equal(jpeg.resize_batch(pictures[2:3], *size, policy, (10, 20, 30))[0], got[2])  # alone
assert differ <= total // 2000, (differ, total)  # float64 sums in another order: only exact ties differ
print("ok")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs the triton package (the test extra)")
def test_resize_kernels_are_the_matrix_products():
    """resize_batch's Triton kernels (where Triton runs: a GPU, or here its interpreter on the CPU, a process of its
    own) give the matrix products' pixels for every policy, shrinking with many taps and enlarging, a picture of
    other strides among them, each picture the same alone or in the batch; at most one step apart where float64
    sums in another order break an exact tie the other way (4 values of 39,168 when written)."""
    done = run_interpreted(RESIZE_KERNELS_CHECK)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_apply_orientation_matches_exif_transpose(orientation):
    a = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    im = Image.fromarray(a)
    im.getexif()[0x0112] = orientation
    ref = np.array(ImageOps.exif_transpose(im))
    assert torch.equal(jpeg.apply_orientation(chw(a), orientation), chw(ref))


def test_passthrough_takes_only_complete_plain_jpegs(tmp_path):
    skipped = make_folder(tmp_path / "imgs")
    taken = {}
    for path in sorted((tmp_path / "imgs").iterdir()):
        try:
            got = passthrough_jpeg(path)
        except ImageSkip as e:
            taken[path.name] = e.reason
        else:
            taken[path.name] = None if got is None else got[1]  # the orientation
            assert got is None or got[0] == path.read_bytes()
    assert taken == {"a.jpg": 1, "b.jpg": 1, "c1.jpg": 1, "c2.jpg": 1, "grey.jpg": 1, "rotated.jpg": 6,
                     "refused.jpg": 1, "cmyk.jpg": None, "alpha.png": None, "truncated.jpg": None,
                     "empty.jpg": "empty file", "text.jpg": "not an image"}
    assert all(taken[name] == reason for name, reason in skipped.items() if reason != "truncated")
    assert passthrough_jpeg(tmp_path / "imgs" / "a.jpg", max_pixels=100) is None  # too large: Pillow reports it
    padded = tmp_path / "padded.jpg"
    padded.write_bytes((tmp_path / "imgs" / "a.jpg").read_bytes() + b"\0" * 16)
    assert passthrough_jpeg(padded) is not None


def test_batch_pixels_match_pillow_and_fall_back_to_it(tmp_path, stand_in):
    skipped = make_folder(tmp_path / "imgs")
    listing = list_inputs([str(tmp_path / "imgs")])
    ds = ImageDataset(listing, 32, "shorter-crop", jpeg_passthrough=True)
    batch = ds.collate([ds[j] for j in range(len(ds))])
    names = [listing.key(i) for i in batch["i"].tolist()]
    assert [n for n, j in zip(names, batch["jpeg"].tolist()) if j] == [
        "a.jpg", "b.jpg", "c1.jpg", "c2.jpg", "grey.jpg", "refused.jpg", "rotated.jpg"]
    assert batch["image"].shape == (2, 3, 32, 32)  # alpha.png and cmyk.jpg; the skipped ones carry no pixels
    pixels, ok, reasons = jpeg.batch_pixels(batch, "cpu", (32, 32), "shorter-crop", (255, 255, 255), None)
    assert {n: r for n, good, r in zip(names, ok.tolist(), reasons) if not good} == skipped
    kept = [n for n, good in zip(names, ok.tolist()) if good]
    assert pixels.shape == (len(kept), 3, 32, 32)
    for name, px in zip(kept, pixels):
        ref = load_image(tmp_path / "imgs" / name, 32, "shorter-crop", draft=False)
        diff = np.abs(px.permute(1, 2, 0).numpy().astype(int) - ref)
        assert diff.mean() < 1.0, (name, diff.mean())  # measured: at most 0.3
        if name in ("alpha.png", "cmyk.jpg", "refused.jpg"):  # decoded by Pillow (in the worker or as fallback)
            assert np.array_equal(px.permute(1, 2, 0).numpy(), load_image(tmp_path / "imgs" / name, 32, "shorter-crop"))


def shard_rows(folder) -> dict[str, np.ndarray]:
    reader = ShardReader(folder)
    return {row["key"]: row["tokens"] for row in reader}


def compare_encodes(ref, other) -> tuple[dict, dict, float]:
    """Two encodes of `make_folder`: both skipped the same 3 inputs and kept the same 9 keys; returns their
    manifests and the mean share of token positions that agree."""
    m_ref, m_other = (json.loads((d / "manifest.json").read_text()) for d in (ref, other))
    assert m_other["skipped"] == m_ref["skipped"] and len(m_ref["skipped"]) == 3
    a, b = shard_rows(ref), shard_rows(other)
    assert list(a) == list(b) and len(a) == 9
    return m_ref, m_other, float(np.mean([(a[k] == b[k]).mean() for k in a]))


def test_encode_with_the_device_decoder_skips_and_encodes_like_pillow(tmp_path, tokenizer_dir, stand_in):
    make_folder(tmp_path / "imgs")
    args = ["encode", tmp_path / "imgs", "-m", tokenizer_dir, "--device", "cpu", "--batch-size", "5",
            "--shard-size", "7", "--json"]
    r = invoke(*args, "-o", tmp_path / "pil", "--jpeg-decoder", "pillow", "--workers", "0")
    assert r.returncode == 0, r.stderr.decode()
    r = invoke(*args, "-o", tmp_path / "gpu", "--jpeg-decoder", "nvjpeg", "--workers", "1")
    assert r.returncode == 0, r.stderr.decode()
    pil, gpu, agree = compare_encodes(tmp_path / "pil", tmp_path / "gpu")
    assert "jpeg_decoder" not in pil["preprocessing"] and gpu["preprocessing"]["jpeg_decoder"] == "nvjpeg"
    assert agree >= 0.9, agree  # measured 0.988-0.995 with three random-weight tiny tokenizers (8 x 8 tokens)
    # the decoder is part of the run: resuming with the other one is refused, naming it
    r = invoke(*args, "-o", tmp_path / "pil", "--jpeg-decoder", "nvjpeg", "--workers", "0")
    assert r.returncode == 1 and b"preprocessing.jpeg_decoder null in the folder, \"nvjpeg\" now" in r.stderr


def test_device_paths_make_pixels_in_a_thread_started_before_the_tokenizer(tmp_path, tokenizer_dir, monkeypatch,
                                                                           stand_in):
    """With the resize or the decoding on the device, a batch's pixels are made by two threads (encode._Ahead: the
    decoding, then the resize) that start before the tokenizer is placed and warmed up, so that the first batch's
    one-time costs overlap that; the workers' path makes none. They write the tokens of a plain loop."""
    from regvq_cli.engine import encode as encode_engine

    events = []
    real_ahead, real_prepare = encode_engine._Ahead, encode_engine.prepare_tokenizer

    class Ahead(real_ahead):
        def __init__(self, *args):
            events.append("pixels thread")
            super().__init__(*args)

    monkeypatch.setattr(encode_engine, "_Ahead", Ahead)
    monkeypatch.setattr(encode_engine, "prepare_tokenizer",
                        lambda *args, **kw: events.append("tokenizer") or real_prepare(*args, **kw))
    make_folder(tmp_path / "imgs")
    args = ["encode", tmp_path / "imgs", "-m", tokenizer_dir, "--device", "cpu", "--workers", "0", "--batch-size", "3"]
    for resize_on, expected in (("workers", ["tokenizer"]), ("device", ["pixels thread"] * 2 + ["tokenizer"])):
        events.clear()
        r = invoke(*args, "-o", tmp_path / resize_on, "--resize-on", resize_on)
        assert r.returncode == 0 and events == expected, (resize_on, events, r.stderr.decode())
    monkeypatch.setattr(encode_engine, "_Ahead", lambda items, fn, device: (fn(item) for item in items))
    assert invoke(*args, "-o", tmp_path / "plain", "--resize-on", "device").returncode == 0
    names = sorted(p.name for p in (tmp_path / "device").glob("shard-*"))
    assert names and names == sorted(p.name for p in (tmp_path / "plain").glob("shard-*"))
    for name in names:
        assert (tmp_path / "device" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name


def test_encode_warms_up_only_on_a_gpu(tmp_path, tokenizer_dir, monkeypatch):
    from regvq_cli.engine import encode as encode_engine

    warmed = []
    monkeypatch.setattr(encode_engine, "_warm_up", lambda *args: warmed.append(args))
    make_folder(tmp_path / "imgs")
    r = invoke("encode", tmp_path / "imgs", "-o", tmp_path / "tok", "-m", tokenizer_dir, "--device", "cpu",
               "--workers", "0")
    assert r.returncode == 0 and warmed == [], r.stderr.decode()


def test_nvjpeg_without_a_gpu_is_a_clean_error(tmp_path, tokenizer_dir):
    make_folder(tmp_path / "imgs")
    r = invoke("encode", tmp_path / "imgs", "-o", tmp_path / "tok", "-m", tokenizer_dir, "--device", "cpu",
               "--jpeg-decoder", "nvjpeg")
    err = r.stderr.decode()
    assert r.returncode == 1 and err.count("\n") == 1 and "--jpeg-decoder nvjpeg needs a CUDA device" in err, err


def test_pillow_is_always_available_and_unknown_names_are_refused():
    assert jpeg.pick_decoder("pillow", "cpu") == "pillow"
    with pytest.raises(RegvqError, match="unknown JPEG decoder"):
        jpeg.pick_decoder("auto", "cpu")


def test_nvjpeg_without_torchvision_020_is_a_clean_error(monkeypatch):
    """No torchvision, or one older than 0.20 (no batched decode): the decoder is unavailable and picking it says
    what to install; nothing is imported or loaded for that."""
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    for version in (missing, lambda name: "0.19.1+cu121"):
        monkeypatch.setattr(importlib.metadata, "version", version)
        jpeg._nvjpeg_op.cache_clear()
        try:
            assert jpeg._nvjpeg_op() is None and not jpeg.nvjpeg_available("cuda")
            with pytest.raises(RegvqError, match="needs torchvision 0.20 or later"):
                jpeg.pick_decoder("nvjpeg", torch.device("cuda"))
        finally:
            jpeg._nvjpeg_op.cache_clear()


@pytest.mark.gpu
def test_nvjpeg_on_cuda_matches_the_pillow_path(tmp_path, monkeypatch):
    pytest.importorskip("torchvision")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    device = torch.device("cuda")
    assert jpeg.nvjpeg_available(device)
    real = jpeg.nvjpeg_decode

    def refusing(datas, dev):  # the real decoder, failing the batch on the marked file as on a bad stream
        if any(REFUSED in d.numpy().tobytes() for d in datas):
            raise RuntimeError("refused")
        return real(datas, dev)

    monkeypatch.setattr(jpeg, "nvjpeg_decode", refusing)
    skipped = make_folder(tmp_path / "imgs", scale=3)
    listing = list_inputs([str(tmp_path / "imgs")])
    ds = ImageDataset(listing, 256, "shorter-crop", jpeg_passthrough=True)
    batch = ds.collate([ds[j] for j in range(len(ds))])
    pixels, ok, reasons = jpeg.batch_pixels(batch, device, (256, 256), "shorter-crop", (255, 255, 255), None)
    names = [listing.key(i) for i in batch["i"].tolist()]
    assert {n: r for n, good, r in zip(names, ok.tolist(), reasons) if not good} == skipped
    kept = [n for n, good in zip(names, ok.tolist()) if good]
    for name, px in zip(kept, pixels.cpu()):
        ref = load_image(tmp_path / "imgs" / name, 256, "shorter-crop", draft=False)
        diff = np.abs(px.permute(1, 2, 0).numpy().astype(int) - ref)
        assert diff.mean() < 3, (name, diff.mean())
    # the shipped tokenizer, end to end on the GPU
    args = ["encode", tmp_path / "imgs", "--device", "cuda", "--batch-size", "4", "--json", "--workers", "2"]
    assert invoke(*args, "-o", tmp_path / "pil", "--jpeg-decoder", "pillow").returncode == 0
    r = invoke(*args, "-o", tmp_path / "gpu", "--jpeg-decoder", "nvjpeg")
    assert r.returncode == 0, r.stderr.decode()
    pil, gpu = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("pil", "gpu"))
    assert gpu["skipped"] == pil["skipped"] and gpu["preprocessing"]["jpeg_decoder"] == "nvjpeg"
    a, b = shard_rows(tmp_path / "pil"), shard_rows(tmp_path / "gpu")
    assert list(a) == list(b)
    agree = np.mean([(a[k] == b[k]).mean() for k in a])
    assert agree >= 0.9, agree


@pytest.mark.gpu
def test_nvjpeg_loads_without_importing_torchvision():
    """The decoder's extension loads on its own (importing torchvision costs about a second of an encode's start-up)
    and decodes as torchvision.io.decode_jpeg does."""
    pytest.importorskip("torchvision")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    script = """
import io, sys, torch
from PIL import Image
from regvq_cli.engine import jpeg
buffer = io.BytesIO()
Image.effect_noise((40, 24), 60).convert("RGB").save(buffer, "JPEG")
data = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
ours = jpeg.nvjpeg_decode([data], "cuda")[0]
print("torchvision" in sys.modules)
from torchvision.io import ImageReadMode, decode_jpeg
print(torch.equal(ours, decode_jpeg([data], mode=ImageReadMode.RGB, device="cuda")[0]))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "True"]


@pytest.mark.gpu
def test_device_pixels_do_not_make_the_host_wait(tmp_path):
    """batch_pixels on CUDA with JPEGs for nvjpeg and pictures to resize: no copy in it waits for the device's
    queue (under torch's sync debug mode any such wait raises), so the host prepares the next batch while the
    device encodes this one."""
    pytest.importorskip("torchvision")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    (tmp_path / "imgs").mkdir()
    for i, size in enumerate([(300, 200), (256, 256), (97, 130)]):
        photo("coffee.jpg", size).save(tmp_path / "imgs" / f"{i}.jpg", quality=90)
        photo("chelsea.jpg", size).save(tmp_path / "imgs" / f"{i}.png")
    ds = ImageDataset(list_inputs([str(tmp_path / "imgs")]), 128, "crop", jpeg_passthrough=True, fit_on_device=True)
    batch = ds.collate([ds[j] for j in range(len(ds))])
    batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}  # as the loader's
    assert batch["jpeg"].sum() == 3 and batch["raw"].sum() == 3
    first, ok, _ = jpeg.batch_pixels(batch, torch.device("cuda"), (128, 128), "crop", (255, 255, 255), None)
    assert ok.all()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        again, _, _ = jpeg.batch_pixels(batch, torch.device("cuda"), (128, 128), "crop", (255, 255, 255), None)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.equal(first, again)


@pytest.mark.gpu
def test_warming_up_before_the_loop_changes_no_token(tmp_path, monkeypatch):
    """On a GPU, encode's warm-up (the tokenizer recorded before the first batch, nvjpeg and the resize called once)
    writes the same token files, bit for bit, as a run whose first batch pays for them."""
    pytest.importorskip("torchvision")
    from regvq_cli.engine import encode as encode_engine

    make_folder(tmp_path / "imgs", scale=3)
    args = ["encode", tmp_path / "imgs", "--device", "cuda", "--batch-size", "4", "--workers", "2",
            "--jpeg-decoder", "nvjpeg", "--resize-on", "device"]
    assert invoke(*args, "-o", tmp_path / "warm").returncode == 0
    monkeypatch.setattr(encode_engine, "_warm_up", lambda *a: None)
    assert invoke(*args, "-o", tmp_path / "cold").returncode == 0
    names = sorted(p.name for p in (tmp_path / "warm").glob("shard-*"))
    assert names and names == sorted(p.name for p in (tmp_path / "cold").glob("shard-*"))
    for name in names:
        assert (tmp_path / "warm" / name).read_bytes() == (tmp_path / "cold" / name).read_bytes(), name


@pytest.mark.gpu
def test_nvjpeg_never_writes_memory_queued_kernels_still_read():
    """A buffer freed on the host while a queued kernel still has to read it: the decoded pictures must not land
    in it before that kernel has run (torchvision decodes on a stream of its own, which does not wait for ours).
    The device is kept busy so that the read is still queued when the decoder runs; on the code before the fix
    the copy read decoded pixels instead of the buffer's 7s."""
    pytest.importorskip("torchvision")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    buf = io.BytesIO()
    photo("coffee.jpg", (320, 240)).save(buf, format="JPEG", quality=90)
    data = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
    device = torch.device("cuda")
    jpeg.nvjpeg_decode([data], device)  # decoder and allocator warmed up
    torch.cuda.synchronize()
    for _ in range(3):
        held = torch.full((3, 240, 320), 7, dtype=torch.uint8, device=device)  # a decoded picture's size
        torch.cuda._sleep(200_000_000)  # the device busy for a while (about 0.1 s)
        copy = held.clone()  # queued behind it: reads `held` once the device gets there
        del held  # back to the allocator, free for the next allocation on this stream
        jpeg.nvjpeg_decode([data], device)
        torch.cuda.synchronize()
        assert bool((copy == 7).all())


def test_bench_encode_with_the_device_decoder(tmp_path, capsys, stand_in):
    from tests.conftest import load_benchmark

    make_folder(tmp_path / "imgs")
    bench = load_benchmark("bench_encode")
    bench.main(["--jpeg-dir", str(tmp_path / "imgs"), "--preset", "tok-test", "--batch-size", "4", "--workers", "0",
                "--device", "cpu", "--jpeg-decoder", "nvjpeg", "--loader-only", "--json"])
    r = json.loads(capsys.readouterr().out)
    assert r["jpeg_decoder"] == "nvjpeg" and r["images_per_s"] > 0 and r["loader_only_images_per_s"] > 0


def test_workers_can_leave_the_resize_to_the_device(tmp_path):
    """fit_on_device: the workers send pictures at their decoded size (upright, RGB, alpha composited); the batch
    is resized at once by batch_pixels, close to the workers' own Pillow resize."""
    skipped = make_folder(tmp_path / "imgs")
    listing = list_inputs([str(tmp_path / "imgs")])
    ds = ImageDataset(listing, 32, "shorter-crop", fit_on_device=True)
    batch = ds.collate([ds[j] for j in range(len(ds))])
    names = [listing.key(i) for i in batch["i"].tolist()]
    shapes = dict(zip([n for n, r in zip(names, batch["raw"].tolist()) if r], map(tuple, batch["raw_shapes"].tolist())))
    assert shapes["a.jpg"] == (90, 120) and shapes["rotated.jpg"] == (100, 60) and shapes["alpha.png"] == (40, 50)
    assert set(shapes) == {n for n in names if n not in skipped} and batch["image"].shape[0] == 0
    pixels, ok, reasons = jpeg.batch_pixels(batch, "cpu", (32, 32), "shorter-crop", (255, 255, 255), None)
    assert {n: r for n, good, r in zip(names, ok.tolist(), reasons) if not good} == skipped
    for name, px in zip([n for n, good in zip(names, ok.tolist()) if good], pixels):
        diff = np.abs(px.permute(1, 2, 0).numpy().astype(int) - load_image(tmp_path / "imgs" / name, 32, "shorter-crop"))
        assert diff.mean() < 0.5 and diff.max() <= 8, (name, diff.mean(), diff.max())


def test_decode_image_resizes_a_very_large_picture_itself(tmp_path):
    photo("coffee.jpg", (900, 700)).save(tmp_path / "big.png")
    assert decode_image(tmp_path / "big.png", 32).shape == (32, 32, 3)  # > 4x the side: resized in the worker
    assert np.array_equal(decode_image(tmp_path / "big.png", 32), load_image(tmp_path / "big.png", 32))
    assert decode_image(tmp_path / "big.png", 256).shape == (700, 900, 3)


def test_encode_with_the_resize_on_the_device_skips_and_encodes_like_the_workers(tmp_path, tokenizer_dir):
    make_folder(tmp_path / "imgs")
    args = ["encode", tmp_path / "imgs", "-m", tokenizer_dir, "--device", "cpu", "--batch-size", "5",
            "--shard-size", "7", "--json", "--workers", "1"]
    assert invoke(*args, "-o", tmp_path / "workers").returncode == 0
    r = invoke(*args, "-o", tmp_path / "device", "--resize-on", "device")
    assert r.returncode == 0, r.stderr.decode()
    w, d, agree = compare_encodes(tmp_path / "workers", tmp_path / "device")
    assert "resize_on" not in w["preprocessing"] and d["preprocessing"]["resize_on"] == "device"
    # measured 1.0 with three random-weight tiny tokenizers; 0.99993 with regvq-tokenizer over 400 JPEGs
    assert agree >= 0.9, agree
    r = invoke(*args, "-o", tmp_path / "workers", "--resize-on", "device")
    assert r.returncode == 1 and b"preprocessing.resize_on null in the folder, \"device\" now" in r.stderr


@pytest.mark.gpu
def test_resize_on_a_cuda_device_matches_the_cpu_and_the_workers(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    rng = np.random.default_rng(0)
    pictures = [torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8)) for h, w in
                [(300, 420), (256, 256), (511, 300), (90, 120), (256, 256)]]
    for policy in ("crop", "shorter-crop", "pad", "stretch"):
        cpu = jpeg.resize_batch(pictures, 256, 256, policy, (10, 20, 30))
        gpu = jpeg.resize_batch([p.cuda() for p in pictures], 256, 256, policy, (10, 20, 30)).cpu()
        assert (cpu.int() - gpu.int()).abs().max() <= 1, policy  # float32 matmuls may round differently
    # the shipped tokenizer, end to end: the workers' resize against the device's
    make_folder(tmp_path / "imgs", scale=3)
    args = ["encode", tmp_path / "imgs", "--device", "cuda", "--batch-size", "4", "--json", "--workers", "2"]
    assert invoke(*args, "-o", tmp_path / "workers").returncode == 0
    r = invoke(*args, "-o", tmp_path / "device", "--resize-on", "device")
    assert r.returncode == 0, r.stderr.decode()
    w, d = (json.loads((tmp_path / x / "manifest.json").read_text()) for x in ("workers", "device"))
    assert d["skipped"] == w["skipped"] and d["preprocessing"]["resize_on"] == "device"
    a, b = shard_rows(tmp_path / "workers"), shard_rows(tmp_path / "device")
    assert list(a) == list(b) and np.mean([(a[k] == b[k]).mean() for k in a]) >= 0.95
