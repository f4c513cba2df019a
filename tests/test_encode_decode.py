"""`regvq encode` / `decode` / `shards` end to end: inputs, bad files, crash safety, scale-out, strangers' data."""

import filecmp
import itertools
import json
import os
import shutil
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file, save_file

from regvq_cli.engine.checkpoint import save_model
from regvq_cli.tokenizer.model import Tokenizer
from regvq_cli.tokenizer.presets import PRESETS
from tests.conftest import REPO, invoke, run_torchrun, torchrun_cmd, torchrun_env


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    torch.manual_seed(0)
    return save_model(Tokenizer(PRESETS["tok-test"]), tmp_path_factory.mktemp("tok") / "tok")


def make_images(folder, n, size=(40, 48), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        # smooth images: a tokenizer reconstructs them better than noise
        base = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(base).resize(size[::-1], Image.BILINEAR).save(folder / f"img{i:03d}.png")
    return folder


def encode(*args, **kw):
    return invoke("encode", "--workers", "0", *args, **kw)


def test_channels_last_gives_the_default_layouts_tokens_and_pictures_within_rounding(tmp_path, tokenizer_dir,
                                                                                      monkeypatch):
    from regvq_cli.engine import decode, encode as encode_engine, runtime

    layouts = []  # what the engine asked the runner for, encode and decode alike, and what the runner took

    def spy(*args, **kw):
        runner = runtime.prepare_tokenizer(*args, **kw)
        layouts.append((kw.get("channels_last"), runner.channels_last))
        return runner

    monkeypatch.setattr(decode, "prepare_tokenizer", spy)
    monkeypatch.setattr(encode_engine, "prepare_tokenizer", spy)
    imgs = make_images(tmp_path / "imgs", 6)
    for name, flags in (("plain", []), ("nchw", ["--no-channels-last"]), ("cl", ["--channels-last"])):
        r = encode(imgs, "-o", tmp_path / f"tok-{name}", "-m", tokenizer_dir, *flags)
        assert r.returncode == 0, r.stderr.decode()
        r = invoke("decode", tmp_path / "tok-plain", "-o", tmp_path / f"rec-{name}", *flags)
        assert r.returncode == 0, r.stderr.decode()
    tokens = [load_file(str(tmp_path / d / "shard-00000.safetensors"))["tokens"] for d in ("tok-plain", "tok-cl")]
    assert np.array_equal(*tokens)  # these images have no near-tie
    assert filecmp.cmp(tmp_path / "tok-plain" / "shard-00000.safetensors", tmp_path / "tok-nchw" / "shard-00000.safetensors",
                       shallow=False)
    for f in sorted(os.listdir(tmp_path / "rec-plain")):
        a, b = (np.asarray(Image.open(tmp_path / d / f)).astype(int) for d in ("rec-plain", "rec-cl"))
        assert np.abs(a - b).max() <= 1  # another summation order: at most a rounding step apart
    # on a CPU the default is NCHW (the runner's choice: default_channels_last)
    assert layouts == [(None, False), (None, False), (False, False), (False, False), (True, True), (True, True)]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_cuda_graphs_give_the_same_tokens_and_pictures_bit_for_bit(tmp_path, tokenizer_dir, monkeypatch, device):
    """encode and decode with --cuda-graphs (the default on CUDA) and --no-cuda-graphs write the same tokens and
    pictures, bit for bit: the same kernels, replayed; on a CPU the option is taken and changes nothing."""
    from regvq_cli.engine import decode, encode as encode_engine, runtime

    graphs = []  # whether each runner the commands made records graphs

    def spy(*args, **kw):
        runner = runtime.prepare_tokenizer(*args, **kw)
        graphs.append(runner.cuda_graphs)
        return runner

    monkeypatch.setattr(decode, "prepare_tokenizer", spy)
    monkeypatch.setattr(encode_engine, "prepare_tokenizer", spy)
    imgs = make_images(tmp_path / "imgs", 8)
    for name, flags in (("default", []), ("on", ["--cuda-graphs"]), ("off", ["--no-cuda-graphs"])):
        common = ["--device", device, "--batch-size", "4", *flags]
        r = encode(imgs, "-o", tmp_path / f"tok-{name}", "-m", tokenizer_dir, *common)
        assert r.returncode == 0, r.stderr.decode()
        r = invoke("decode", tmp_path / "tok-default", "-o", tmp_path / f"rec-{name}", *common)
        assert r.returncode == 0, r.stderr.decode()
    on_gpu = device == "cuda"
    assert graphs == [on_gpu, on_gpu, on_gpu, on_gpu, False, False]
    tokens = [load_file(str(tmp_path / f"tok-{d}" / "shard-00000.safetensors"))["tokens"] for d in ("default", "on", "off")]
    assert np.array_equal(tokens[0], tokens[2]) and np.array_equal(tokens[1], tokens[2])
    for f in sorted(os.listdir(tmp_path / "rec-off")):
        off = np.asarray(Image.open(tmp_path / "rec-off" / f))
        for d in ("default", "on"):
            assert np.array_equal(np.asarray(Image.open(tmp_path / f"rec-{d}" / f)), off)


def test_encode_says_where_its_time_went(tmp_path, tokenizer_dir, monkeypatch):
    """--json's timings split the command's seconds into phases, and -v prints them: slow decoding shows as the wait
    for the first batch."""
    from regvq_cli.data.dataset import ImageDataset

    imgs = make_images(tmp_path / "imgs", 3)
    decode_one = ImageDataset.__getitem__

    def slowly(self, j):
        time.sleep(0.3)
        return decode_one(self, j)

    monkeypatch.setattr(ImageDataset, "__getitem__", slowly)
    r = encode(imgs, "-o", tmp_path / "tok", "-m", tokenizer_dir, "--json", "-v")
    assert r.returncode == 0, r.stderr.decode()
    summary = json.loads(r.stdout)
    t = summary["timings"]
    assert set(t) == {"listing", "setup", "first_batch", "encoding", "finishing"} and min(t.values()) >= 0
    assert abs(sum(t.values()) - summary["seconds"]) < 0.01
    assert t["first_batch"] >= 0.9 > t["encoding"]  # the one batch's three images were decoded before it came
    assert summary["input_wait"] == 0  # one batch: nothing after the first to wait for
    assert b"loaded in" in r.stderr and b"seconds: listing" in r.stderr and b"s waiting for the next batch" in r.stderr
    assert b"3 of 3 inputs done, 0 skipped" in r.stderr  # a line at each tenth of the inputs (one batch here)
    # with later batches to wait for, the loop's wait for them is part of its encoding time
    r = encode(imgs, "-o", tmp_path / "tok3", "-m", tokenizer_dir, "--json", "--batch-size", "1", "--workers", "0")
    summary = json.loads(r.stdout)
    assert r.returncode == 0 and 0.5 <= summary["input_wait"] <= summary["timings"]["encoding"], summary
    r = encode(imgs, "-o", tmp_path / "tok2", "-m", tokenizer_dir)  # without -v: no such lines
    assert r.returncode == 0 and not any(w in r.stderr for w in (b"seconds:", b"loaded in", b"inputs done"))


def test_v_says_which_model_ran_and_vv_lasts_one_command(tmp_path, tokenizer_dir):
    """-v names the model each command loaded, where from, its size and load time; -vv's debug logging is switched
    off again by the next command in the same process."""
    import logging

    imgs = make_images(tmp_path / "imgs", 2)
    assert encode(imgs, "-o", tmp_path / "tok", "-m", tokenizer_dir).returncode == 0
    r = invoke("decode", tmp_path / "tok", "-o", tmp_path / "rec", "-v")
    assert r.returncode == 0, r.stderr.decode()
    assert re.search(rf"{re.escape(str(tokenizer_dir))}: [\d.]+[KMB]? parameters, loaded in [\d.]+ s",
                     r.stderr.decode()), r.stderr.decode()
    r = invoke("decode", tmp_path / "tok", "-o", tmp_path / "rec2")
    assert r.returncode == 0 and b"parameters" not in r.stderr
    assert invoke("-vv", "shards", "info", tmp_path / "tok").returncode == 0
    assert logging.getLogger("huggingface_hub").level == logging.DEBUG
    assert invoke("shards", "info", tmp_path / "tok").returncode == 0
    assert logging.getLogger("huggingface_hub").level == logging.NOTSET and not logging.getLogger("httpx").handlers


def test_round_trip_folder_to_images(tmp_path, tokenizer_dir, monkeypatch):
    imgs = make_images(tmp_path / "imgs", 5)
    r = encode(imgs, "-o", tmp_path / "tok", "-m", tokenizer_dir, "--json")
    assert r.returncode == 0, r.stderr.decode()
    summary = json.loads(r.stdout)
    assert summary["total_encoded"] == 5 and summary["total_skipped"] == 0 and summary["grid"] == [8, 8]
    r = invoke("decode", tmp_path / "tok", "-o", tmp_path / "rec")
    assert r.returncode == 0, r.stderr.decode()
    names = sorted(os.listdir(tmp_path / "rec"))
    assert names == [f"img{i:03d}.png" for i in range(5)]
    # each PNG holds the tokenizer's picture of its grid, exactly (decoded as one batch, as the command does: on a
    # CPU another batch size may take another convolution algorithm, a level apart here and there)
    from regvq_cli.data.shards import ShardReader
    from regvq_cli.engine.resolve import load
    from regvq_cli.engine.runtime import prepare_tokenizer

    rows = list(ShardReader(tmp_path / "tok"))
    assert [row["key"] for row in rows] == names
    pictures = prepare_tokenizer(load(tokenizer_dir), "cpu").decode_uint8(
        torch.from_numpy(np.stack([row["tokens"] for row in rows]))).numpy()
    for name, picture in zip(names, pictures):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "rec" / name)), picture), name
    r = invoke("decode", tmp_path / "tok", "--grid", "-o", tmp_path / "sheet.png")
    assert r.returncode == 0 and Image.open(tmp_path / "sheet.png").size == (3 * 34 + 2, 2 * 34 + 2)  # 3 x 2 images
    # a bare file name (no folder part), as in `regvq decode tokens/ --grid -o recon.png`
    monkeypatch.chdir(tmp_path)
    r = invoke("decode", "tok", "--grid", "-o", "recon.png")
    assert r.returncode == 0, r.stderr.decode()
    assert Image.open(tmp_path / "recon.png").size == Image.open(tmp_path / "sheet.png").size


def test_decode_warns_when_the_recorded_tokenizer_has_other_weights_now(tmp_path, tokenizer_dir):
    """Decoding with the tokenizer the manifest names (no --model): weights changed since the encode are said."""
    tok = tmp_path / "tok"
    shutil.copytree(tokenizer_dir, tok)
    assert encode(make_images(tmp_path / "imgs", 2), "-o", tmp_path / "tokens", "-m", tok).returncode == 0
    r = invoke("decode", tmp_path / "tokens", "-o", tmp_path / "rec")
    assert r.returncode == 0 and b"warning" not in r.stderr, r.stderr.decode()
    torch.manual_seed(1)  # the same architecture, other weights
    other = save_model(Tokenizer(PRESETS["tok-test"]), tmp_path / "other")
    shutil.copy(other / "model.safetensors", tok / "model.safetensors")
    r = invoke("decode", tmp_path / "tokens", "-o", tmp_path / "rec2")
    assert r.returncode == 0 and b"has other weights now than when it made them" in r.stderr, r.stderr.decode()


def test_files_from_stdin_and_single_files(tmp_path, tokenizer_dir):
    imgs = make_images(tmp_path / "imgs", 4)
    listing = "\n".join(str(imgs / f"img{i:03d}.png") for i in (3, 1)) + "\n\n"
    r = encode("--files-from", "-", "-o", tmp_path / "a", "-m", tokenizer_dir, input=listing.encode())
    assert r.returncode == 0, r.stderr.decode()
    from regvq_cli.data.shards import ShardReader

    keys = load_file(str(tmp_path / "a" / "shard-00000.safetensors"))
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert m["count"] == 2 and m["num_inputs"] == 2
    # listed inputs keep the listing's order and their paths as keys; named files likewise
    assert [row["key"] for row in ShardReader(tmp_path / "a")] == [str(imgs / "img003.png"), str(imgs / "img001.png")]
    r = encode(imgs / "img002.png", imgs / "img000.png", "-o", tmp_path / "b", "-m", tokenizer_dir)
    assert r.returncode == 0 and json.loads((tmp_path / "b" / "manifest.json").read_text())["count"] == 2
    assert [row["key"] for row in ShardReader(tmp_path / "b")] == [str(imgs / "img002.png"), str(imgs / "img000.png")]
    assert keys["tokens"].dtype == np.uint16


def test_files_from_find_print0_and_a_fifo_among_the_images(tmp_path, tokenizer_dir):
    """`find -print0 | regvq encode --files-from -` takes the NUL-separated names; a FIFO named like an image is
    skipped with its reason instead of blocking the run."""
    imgs = make_images(tmp_path / "imgs", 2)
    os.mkfifo(imgs / "pipe.png")
    listing = "".join(f"{imgs / name}\0" for name in ("img000.png", "pipe.png", "img001.png"))
    r = encode("--files-from", "-", "-o", tmp_path / "a", "-m", tokenizer_dir, input=listing.encode())
    assert r.returncode == 0, r.stderr.decode()
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert m["count"] == 2 and [s["reason"] for s in m["skipped"]] == ["not a regular file (a pipe, socket or device)"]


def test_bad_files_are_listed_and_the_run_goes_on(tmp_path, tokenizer_dir):
    imgs = make_images(tmp_path / "imgs", 3)
    (imgs / "empty.png").write_bytes(b"")
    (imgs / "text.jpg").write_text("hello")
    good = (imgs / "img000.png").read_bytes()
    (imgs / "truncated.png").write_bytes(good[: len(good) // 2])
    r = encode(imgs, "-o", tmp_path / "tok", "-m", tokenizer_dir, "--json")
    assert r.returncode == 0, r.stderr.decode()
    m = json.loads((tmp_path / "tok" / "manifest.json").read_text())
    reasons = {s["key"]: s["reason"] for s in m["skipped"]}
    assert m["count"] == 3 and set(reasons) == {"empty.png", "text.jpg", "truncated.png"}
    assert reasons["empty.png"] == "empty file" and reasons["text.jpg"] == "not an image"
    assert m["count"] + m["num_skipped"] == m["num_inputs"]  # every input encoded or listed
    assert b"skipped text.jpg: not an image" in r.stderr
    (imgs / "evil\nregvq: error: fake.png").write_bytes(b"")  # a name cannot print a line of its own
    r = encode(imgs, "-o", tmp_path / "tok2", "-m", tokenizer_dir)
    assert r.returncode == 0 and b"skipped evil\\nregvq: error: fake.png: empty file" in r.stderr
    assert not any(line.startswith(b"regvq: error") for line in r.stderr.splitlines())


def test_only_bad_files_is_an_error_with_the_reasons_kept(tmp_path, tokenizer_dir):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "text.jpg").write_text("hello")
    r = encode(bad, "-o", tmp_path / "tok", "-m", tokenizer_dir)
    assert r.returncode == 1 and b"regvq: error: no input could be encoded (1 skipped" in r.stderr
    assert json.loads((tmp_path / "tok" / "manifest.json").read_text())["skipped"][0]["key"] == "text.jpg"


def test_missing_input_is_a_clean_error(tmp_path, tokenizer_dir):
    r = encode(tmp_path / "nope", "-o", tmp_path / "tok", "-m", tokenizer_dir)
    assert r.returncode == 1 and r.stderr.decode().count("\n") == 1 and b"regvq: error:" in r.stderr


def test_kill_then_rerun_is_byte_identical(tmp_path, tokenizer_dir):
    imgs = make_images(tmp_path / "imgs", 40)
    args = ["-m", tokenizer_dir, "--shard-size", "4", "--batch-size", "2"]
    assert encode(imgs, "-o", tmp_path / "whole", *args).returncode == 0
    cmd = [sys.executable, "-m", "regvq_cli", "encode", "--workers", "0", str(imgs), "-o", str(tmp_path / "killed"), *map(str, args)]
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / "killed" / "shard-00002.safetensors").exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (tmp_path / "killed" / "manifest.json").exists(), "the run finished before it could be killed"
    r = encode(imgs, "-o", tmp_path / "killed", *args, "--json")
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads(r.stdout)["shards_reused"] >= 3
    whole = sorted(f for f in os.listdir(tmp_path / "whole") if not f.startswith("."))
    assert whole == sorted(f for f in os.listdir(tmp_path / "killed") if not f.startswith("."))
    for name in whole:
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "killed" / name).read_bytes(), name


def test_a_rerun_encodes_again_the_shards_that_differ_from_the_manifest(tmp_path, tokenizer_dir):
    """A changed shard still parses; the rerun of the finished run finds it by the manifest's sha256, encodes it
    again and writes the manifest anew, so the folder is the first run's again and verifies."""
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    from regvq_cli.data.shards import verify

    imgs = make_images(tmp_path / "imgs", 8)
    args = ["-m", tokenizer_dir, "--shard-size", "4", "--json"]
    r = encode(imgs, "-o", tmp_path / "tok", *args)
    assert r.returncode == 0 and json.loads(r.stdout)["shards_changed"] == []
    first = {p.name: p.read_bytes() for p in (tmp_path / "tok").iterdir() if not p.name.startswith(".")}
    shard = str(tmp_path / "tok" / "shard-00001.safetensors")
    with safe_open(shard, "numpy") as f:
        metadata = f.metadata()
    tensors = load_file(shard)
    tensors["tokens"][0, 0, 0] ^= 1  # one token changed, the file as valid as before
    save_file(tensors, shard, metadata=metadata)
    assert verify(tmp_path / "tok")  # the manifest catches it
    r = encode(imgs, "-o", tmp_path / "tok", *args)
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads(r.stdout)["shards_changed"] == ["shard-00001.safetensors"]
    assert b"shard-00001.safetensors differed from the manifest" in r.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "tok").iterdir() if not p.name.startswith(".")} == first
    assert verify(tmp_path / "tok") == []
    r = encode(imgs, "-o", tmp_path / "tok", *args)
    assert json.loads(r.stdout)["shards_changed"] == [] and json.loads(r.stdout)["shards_reused"] == 2


def test_the_same_tokenizer_named_another_way_resumes_the_run(tmp_path, tokenizer_dir):
    """A moved or copied model folder has another id but the same weights (sha256): the run resumes under the
    folder's first name; other weights are still refused."""
    imgs = make_images(tmp_path / "imgs", 4)
    args = ["--shard-size", "2", "--json"]
    assert encode(imgs, "-o", tmp_path / "tok", "-m", tokenizer_dir, *args).returncode == 0
    first = json.loads((tmp_path / "tok" / "manifest.json").read_text())
    (tmp_path / "tok" / "shard-00001.safetensors").unlink()
    moved = shutil.copytree(tokenizer_dir, tmp_path / "moved")
    r = encode(imgs, "-o", tmp_path / "tok", "-m", moved, *args)
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads(r.stdout)["shards_reused"] == 1
    assert json.loads((tmp_path / "tok" / "manifest.json").read_text()) == first
    torch.manual_seed(1)
    other = save_model(Tokenizer(PRESETS["tok-test"]), tmp_path / "other")
    r = encode(imgs, "-o", tmp_path / "tok", "-m", other, *args)
    assert r.returncode == 1 and b"different run" in r.stderr


def test_a_second_concurrent_run_is_refused(tmp_path, tokenizer_dir):
    from regvq_cli.data.shards import OutputLock

    out = tmp_path / "tok"
    with OutputLock(out):  # another process (here: this one) holds the folder
        r = encode(make_images(tmp_path / "imgs", 2), "-o", out, "-m", tokenizer_dir)
    assert r.returncode == 1 and b"another regvq process is writing" in r.stderr


def test_job_array_workers_then_merge_equal_one_process(tmp_path, tokenizer_dir):
    imgs = make_images(tmp_path / "imgs", 9)
    args = ["-m", tokenizer_dir, "--shard-size", "2"]
    assert encode(imgs, "-o", tmp_path / "one", *args).returncode == 0
    for w in range(3):
        r = encode(imgs, "-o", tmp_path / "split", *args, "--num-workers", "3", "--worker-id", str(w))
        assert r.returncode == 0, r.stderr.decode()
    r = invoke("shards", "merge", tmp_path / "split")
    assert r.returncode == 0, r.stderr.decode()
    for name in os.listdir(tmp_path / "one"):
        if not name.startswith("."):
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "split" / name).read_bytes(), name


def test_a_job_array_worker_encodes_again_only_its_own_changed_shards(tmp_path, tokenizer_dir):
    """A finished split run with a changed shard: the worker that encodes it writes it again; another worker leaves
    it (and the manifest) as it is. A hand-edited manifest listing other files never gets them removed."""
    from regvq_cli.data.shards import verify

    imgs = make_images(tmp_path / "imgs", 4)
    args = ["-m", tokenizer_dir, "--shard-size", "2", "--num-workers", "2", "--json"]
    for w in ("0", "1"):
        assert encode(imgs, "-o", tmp_path / "split", *args, "--worker-id", w).returncode == 0
    first = {p.name: p.read_bytes() for p in (tmp_path / "split").iterdir() if not p.name.startswith(".")}
    shard = tmp_path / "split" / "shard-00000.safetensors"  # worker 0's
    shard.write_bytes(shard.read_bytes()[:-1] + b" ")  # the header's padding: still a valid shard
    r = encode(imgs, "-o", tmp_path / "split", *args, "--worker-id", "1")
    assert r.returncode == 0, r.stderr.decode()
    summary = json.loads(r.stdout)
    assert summary["shards_changed"] == [] and summary["shards_changed_for_other_workers"] == [shard.name]
    assert b"rerun those workers" in r.stderr
    assert shard.exists() and verify(tmp_path / "split")  # the manifest stays, still saying so
    r = encode(imgs, "-o", tmp_path / "split", *args, "--worker-id", "0")
    assert r.returncode == 0 and json.loads(r.stdout)["shards_changed"] == ["shard-00000.safetensors"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "split").iterdir() if not p.name.startswith(".")} == first
    # a manifest that lists a file of the user's: the rerun does not remove it
    (tmp_path / "split" / "notes.txt").write_text("mine")
    manifest = json.loads((tmp_path / "split" / "manifest.json").read_text())
    manifest["shards"].append({"file": "notes.txt", "count": 0, "sha256": "0" * 64})
    (tmp_path / "split" / "manifest.json").write_text(json.dumps(manifest))
    encode(imgs, "-o", tmp_path / "split", "-m", tokenizer_dir, "--shard-size", "2")
    assert (tmp_path / "split" / "notes.txt").read_text() == "mine"


def test_a_job_array_worker_reports_the_inputs_it_skipped(tmp_path, tokenizer_dir):
    """Only the worker that finishes last writes the manifest; each one still lists the bad files it met."""
    imgs = make_images(tmp_path / "imgs", 3)
    (imgs / "img000.png").write_bytes(b"")  # shard 0 (worker 0's), then img001 | img002 in shard 1 (worker 1's)
    args = ["-m", tokenizer_dir, "--shard-size", "2", "--num-workers", "2", "--json"]
    r = encode(imgs, "-o", tmp_path / "split", *args, "--worker-id", "0")
    assert r.returncode == 0, r.stderr.decode()
    summary = json.loads(r.stdout)
    assert summary["manifest"] is None and summary["skipped"] == [{"key": "img000.png", "reason": "empty file"}]
    assert b"skipped img000.png: empty file" in r.stderr
    r = encode(imgs, "-o", tmp_path / "split", *args, "--worker-id", "1")  # the last: the whole folder's
    assert json.loads(r.stdout)["skipped"] == [{"key": "img000.png", "reason": "empty file"}]


TWO_GPUS = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 GPUs")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, TWO_GPUS])])
def test_torchrun_two_ranks_equal_one_process(tmp_path, tokenizer_dir, device):
    """gloo ranks on a CPU, or NCCL ranks on two GPUs: the shards of one process, and each rank decoding its own."""
    imgs = make_images(tmp_path / "imgs", 7)
    Image.open(imgs / "img003.png").save(imgs / "img001.jpg")  # rows 1 and 2, in two ranks' shards: one PNG name
    args = ["-m", str(tokenizer_dir), "--shard-size", "2", "--workers", "0", "--device", device]
    assert encode(imgs, "-o", tmp_path / "one", *args).returncode == 0
    cmd = ["encode", imgs, "-o", tmp_path / "two", *args, "--json"]
    r = run_torchrun(*cmd)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    for name in os.listdir(tmp_path / "one"):
        if not name.startswith("."):
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    summary = json.loads(r.stdout)  # rank 0's, counting both ranks (which drew the 4 shards between them)
    assert (summary["encoded_this_run"], summary["shards_written"], summary["shards_reused"]) == (8, 4, 0)
    assert len(summary["images_per_s_by_rank"]) == 2 and all(v >= 0 for v in summary["images_per_s_by_rank"])
    r = run_torchrun(*cmd)  # nothing left
    summary = json.loads(r.stdout)
    assert (summary["encoded_this_run"], summary["shards_written"], summary["shards_reused"]) == (0, 0, 4)
    r = run_torchrun("decode", tmp_path / "two", "-o", tmp_path / "rec", "--device", device, "--json")
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    names = sorted([f"img{i:03d}.png" for i in range(7)] + ["img001.png.png"])
    assert sorted(os.listdir(tmp_path / "rec")) == names  # ranks split the shards, and never write one file twice
    summary = json.loads(r.stdout)  # one document, from rank 0, counting both ranks
    assert summary["decoded"] == 8 and summary["renamed"] == [{"key": "img001.png", "file": "img001.png.png"}]
    assert r.stderr.count(b"was written as") == 1
    # one sheet: each rank would write its own part over the other's
    r = run_torchrun("decode", tmp_path / "two", "-o", tmp_path / "sheet.png", "--device", device, "--grid")
    assert r.returncode != 0 and b"run one process" in r.stderr and not (tmp_path / "sheet.png").exists()


def test_torchrun_two_ranks_with_the_pixels_threads_equal_one_process(tmp_path, tokenizer_dir):
    """--resize-on device makes each batch's pixels in threads of the main process, a batch ahead: under torchrun
    each rank's threads follow the shards that rank draws, and the folder is one process's, byte for byte."""
    imgs = make_images(tmp_path / "imgs", 9)
    args = ["-m", str(tokenizer_dir), "--shard-size", "2", "--batch-size", "1", "--workers", "0", "--device", "cpu",
            "--resize-on", "device"]
    assert encode(imgs, "-o", tmp_path / "one", *args).returncode == 0
    r = run_torchrun("encode", imgs, "-o", tmp_path / "two", *args, "--json")
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    assert json.loads(r.stdout)["encoded_this_run"] == 9
    for name in os.listdir(tmp_path / "one"):
        if not name.startswith("."):
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


@pytest.mark.parametrize("resize", ["shorter-crop", "crop", "pad"])
def test_encoded_segmentation_maps_line_up_with_their_pictures_as_sampling_reads_them(tmp_path, tokenizer_dir,
                                                                                       resize):
    """A map is cropped (or padded) at the pictures' size and then nearest-resized to the token grid, as `regvq
    sample` makes a map's condition: taken straight to the grid, a wide picture's crop moved by up to half a cell."""
    from regvq_cli.data.images import load_segmap
    from regvq_cli.data.shards import ShardReader
    from regvq_cli.priors.conditioning import resize_segmap

    make_images(tmp_path / "imgs", 1, size=(30, 100))  # wide: the crop's offset is 35 px of 100
    (tmp_path / "maps").mkdir()
    columns = np.tile(np.arange(100, dtype=np.uint8), (30, 1))  # each pixel's label: its column
    Image.fromarray(columns, mode="L").save(tmp_path / "maps" / "img000.png")
    r = encode(tmp_path / "imgs", "--maps", tmp_path / "maps", "-o", tmp_path / "tok", "-m", tokenizer_dir,
               "--resize", resize)
    assert r.returncode == 0, r.stderr.decode()
    got = ShardReader(tmp_path / "tok")[0]["segmap"]
    at_size = torch.from_numpy(load_segmap(tmp_path / "maps" / "img000.png", 32, resize).astype(np.int64))
    assert np.array_equal(got, resize_segmap(at_size[None], (8, 8))[0].numpy())
    straight = load_segmap(tmp_path / "maps" / "img000.png", (8, 8), resize)  # as encode made them before
    assert not np.array_equal(got, straight)


def test_labels_and_captions_are_carried(tmp_path, tokenizer_dir):
    for cls in ("cat", "dog"):
        make_images(tmp_path / "imgs" / cls, 2, seed=len(cls))
    assert encode(tmp_path / "imgs", "-o", tmp_path / "tok", "-m", tokenizer_dir).returncode == 0
    m = json.loads((tmp_path / "tok" / "manifest.json").read_text())
    assert m["label_names"] == ["cat", "dog"] and "labels" in m["fields"]
    shard = load_file(str(tmp_path / "tok" / m["shards"][0]["file"]))
    assert shard["labels"].tolist() == [0, 0, 1, 1]
    capdir = make_images(tmp_path / "cap", 2)
    with open(capdir / "metadata.jsonl", "w") as f:
        for i in range(2):
            f.write(json.dumps({"file_name": f"img{i:03d}.png", "text": f"a picture number {i}"}) + "\n")
    assert encode(capdir, "-o", tmp_path / "captok", "-m", tokenizer_dir).returncode == 0
    from regvq_cli.data.dataset import TokenDataset

    ds = TokenDataset(tmp_path / "captok")
    assert [ds[i]["caption"] for i in range(2)] == ["a picture number 0", "a picture number 1"]


def test_decode_confines_stranger_keys_and_checks_tokens(tmp_path, tokenizer_dir):
    assert encode(make_images(tmp_path / "imgs", 2), "-o", tmp_path / "tok", "-m", tokenizer_dir).returncode == 0
    lines = [json.dumps({"tokens": [[1] * 8] * 8, "key": "../../escape"}), json.dumps({"tokens": [[2] * 8] * 8, "key": "/abs/path"})]
    r = invoke("decode", "-", "-m", tokenizer_dir, "-o", tmp_path / "out" / "rec", input="\n".join(lines).encode())
    assert r.returncode == 0, r.stderr.decode()
    written = [os.path.relpath(os.path.join(d, f), tmp_path) for d, _, fs in os.walk(tmp_path) for f in fs
               if f.endswith(".png") and not d.startswith(str(tmp_path / "imgs"))]
    assert all(p.startswith(os.path.join("out", "rec")) for p in written) and len(written) == 2
    bad = json.dumps([[70] * 8] * 8)  # the tok-test codebook has 64 codes
    r = invoke("decode", "-", "-m", tokenizer_dir, "-o", tmp_path / "rec2", input=bad.encode())
    assert r.returncode == 1 and b"stdin line 1: token 70 is outside the codebook of 64" in r.stderr
    shard = tmp_path / "tok" / "shard-00000.safetensors"
    data = load_file(str(shard))
    data["tokens"][1, 3, 3] = 999
    save_file(data, str(shard), metadata={"format": "regvq-tokens"})
    r = invoke("decode", shard, "-o", tmp_path / "rec3", "-m", tokenizer_dir)
    assert r.returncode == 1 and r.stderr.count(b"\n") == 1


def test_malformed_manifest_is_a_clean_error(tmp_path, tokenizer_dir):
    assert encode(make_images(tmp_path / "imgs", 2), "-o", tmp_path / "tok", "-m", tokenizer_dir).returncode == 0
    (tmp_path / "tok" / "manifest.json").write_text("{broken")
    for cmd in (["decode", tmp_path / "tok", "-o", tmp_path / "rec"], ["shards", "info", tmp_path / "tok"]):
        r = invoke(*cmd)
        assert r.returncode == 1 and b"not valid JSON" in r.stderr and b"Traceback" not in r.stderr


def test_verify_catches_a_flipped_byte(tmp_path, tokenizer_dir):
    assert encode(make_images(tmp_path / "imgs", 2), "-o", tmp_path / "tok", "-m", tokenizer_dir).returncode == 0
    assert invoke("shards", "verify", tmp_path / "tok").returncode == 0
    shard = tmp_path / "tok" / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    r = invoke("shards", "verify", tmp_path / "tok")
    assert r.returncode == 1 and b"sha256" in r.stdout
    assert r.stderr.decode().strip().splitlines()[-1].startswith("regvq: error: 1 problem in "), r.stderr
    r = encode(tmp_path / "imgs", "-o", tmp_path / "tok", "-m", tokenizer_dir)  # as the error says: it repairs
    assert r.returncode == 0 and invoke("shards", "verify", tmp_path / "tok").returncode == 0
    (tmp_path / "tok" / "manifest.json").unlink()  # as after split jobs: the manifest's own advice, alone
    r = invoke("shards", "verify", tmp_path / "tok")
    assert r.returncode == 1 and r.stdout == b"" and r.stderr.decode().count("\n") == 1
    assert b"no manifest.json" in r.stderr and b"regvq shards merge" in r.stderr


def test_ctrl_c_ends_quietly(tmp_path, tokenizer_dir):
    imgs = make_images(tmp_path / "imgs", 200, size=(64, 64))
    cmd = [sys.executable, "-m", "regvq_cli", "encode", "--workers", "0", str(imgs), "-o", str(tmp_path / "tok"),
           "-m", str(tokenizer_dir), "--shard-size", "2", "--batch-size", "1"]
    # a child inherits an ignored SIGINT (a test run started as a background job has one), and Python then
    # leaves it ignored: give the child the default, as a terminal's Ctrl-C finds it
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not (tmp_path / "tok" / "shard-00000.safetensors").exists() and time.time() < deadline:
        time.sleep(0.01)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err.decode()
    assert b"Traceback" not in err and err.decode().strip().endswith("regvq: interrupted")
    assert b"run the same command again to resume" in err


@pytest.mark.parametrize("workers, group", [("0", False), ("2", False), ("2", True)],
                         ids=["no-workers", "workers", "workers-and-group"])
def test_sigterm_says_so_and_a_rerun_finishes_the_same_folder(tmp_path, tokenizer_dir, workers, group):
    imgs = make_images(tmp_path / "imgs", 60, size=(64, 64))
    cmd = [sys.executable, "-m", "regvq_cli", "encode", "--workers", workers, str(imgs), "-o", str(tmp_path / "tok"),
           "-m", str(tokenizer_dir), "--shard-size", "2", "--batch-size", "1"]
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=group)
    deadline = time.time() + 120
    while not (tmp_path / "tok" / "shard-00000.safetensors").exists() and time.time() < deadline:
        time.sleep(0.01)
    if group:  # a scheduler signals every process of the job, the loader workers too
        os.killpg(p.pid, signal.SIGTERM)
    else:  # as `kill` or `timeout` send it
        p.terminate()
    out, err = p.communicate(timeout=60)
    lines = err.decode().strip().splitlines()
    assert p.returncode == 128 + signal.SIGTERM and b"Traceback" not in err, err.decode()
    assert lines[-1] == "regvq: terminated (SIGTERM)" and "run the same command again to resume" in lines[-2], lines
    r = encode(imgs, "-o", tmp_path / "tok", "-m", tokenizer_dir, "--shard-size", "2", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["shards_reused"] >= 1, r.stderr.decode()


def test_torchrun_pre_empted_as_a_group_resumes_to_one_process_folder(tmp_path, tokenizer_dir):
    """SIGTERM to a whole torchrun encode (agent, ranks, loader workers) once shards are written: rank 0 alone says
    the complete shards are kept, each rank says it was terminated, and the same command resumes, drawing only the
    shards left, into the folder one process writes."""
    imgs = make_images(tmp_path / "imgs", 120, size=(64, 64))
    args = [str(imgs), "-m", str(tokenizer_dir), "--shard-size", "2", "--batch-size", "1", "--workers", "1",
            "--device", "cpu"]
    assert encode(*args, "-o", tmp_path / "one").returncode == 0
    cmd = ["encode", *args, "-o", tmp_path / "two"]
    p = subprocess.Popen(torchrun_cmd(*cmd), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         start_new_session=True, env=torchrun_env())
    deadline = time.time() + 120
    while len(list((tmp_path / "two").glob("shard-*.safetensors"))) < 2 and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(p.pid, signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    ours = [line for line in err.decode().splitlines() if line.startswith("regvq")]
    assert ours.count("regvq: terminated (SIGTERM)") == 2, err.decode()[-3000:]
    assert sum("the complete shards in" in line for line in ours) == 1, ours
    r = run_torchrun(*cmd, "--json")
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    summary = json.loads(r.stdout)
    assert summary["shards_reused"] >= 2 and summary["shards_reused"] + summary["shards_written"] == 60
    for name in os.listdir(tmp_path / "one"):
        if not name.startswith("."):
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_resumed_work_is_planned_without_listing_every_index():
    from regvq_cli.engine.encode import _ShardBatches

    todo = [(1, 4, 8), (3, 12, 15), (4, 16, 17)]  # (shard, start, stop) left to do
    assert list(_ShardBatches(todo, 3)) == [[4, 5, 6], [7], [12, 13, 14], [16]]  # never across shards
    huge = iter(_ShardBatches([(0, 0, 10**9)], 2))  # batches made as the loader asks: no list of every input
    assert next(huge) == [0, 1] and next(huge) == [2, 3]


def test_torchrun_ranks_draw_every_shard_left_exactly_once():
    """_ClaimedShards over one counter (a store like torchrun's): ranks drawing in any interleaving get disjoint
    shards that cover every shard not done before, a faster rank more of them; the done ones count as reused."""
    import torch.distributed as tdist

    from regvq_cli.data.shards import plan_shards
    from regvq_cli.engine.dist import SharedCounter
    from regvq_cli.engine.encode import _ClaimedShards

    plan, done = plan_shards(23, 2), {0, 5, 6}  # 12 shards, three complete
    store = tdist.HashStore()
    ranks = [iter(_ClaimedShards(plan, done, SharedCounter(store, "shards"))) for _ in range(2)]
    drawn = [[], []]
    for step in range(40):  # rank 0 draws three shards for every one of rank 1's
        r = 0 if step % 4 else 1
        p = next(ranks[r], None)
        if p is not None:
            drawn[r].append(p[0])
    assert sorted(drawn[0] + drawn[1]) == [k for k, _, _ in plan if k not in done]
    assert len(drawn[0]) == 2 * len(drawn[1]) == 6
    assert next(iter(_ClaimedShards(plan, done, SharedCounter(store, "shards"))), None) is None  # all drawn
    again = [_ClaimedShards(plan, done, SharedCounter(store, "rerun")) for _ in range(2)]
    assert len(list(again[0])) == 9 and list(again[1]) == [] and again[0].reused + again[1].reused == 3


def test_pixels_made_ahead_come_in_order_and_errors_at_their_item():
    """encode's device paths make a batch's pixels in threads (_Ahead, one a step, chained): every item once, in
    order, fn run off the consuming thread; an error in fn or in the items reaches the consumer after the values
    before it; a consumer that stops early leaves no thread running, down the chain."""
    import threading

    from regvq_cli.engine.encode import _Ahead

    threads = set()

    def square(x):
        threads.add(threading.current_thread())
        if x == 7:
            raise ValueError("bad item 7")
        return x * x

    assert list(_Ahead(range(7), square, "cpu")) == [i * i for i in range(7)]
    assert threading.current_thread() not in threads
    assert list(_Ahead(_Ahead(range(5), square, "cpu"), lambda y: y + 1, "cpu")) == [i * i + 1 for i in range(5)]
    got = []
    with pytest.raises(ValueError, match="bad item 7"):
        for value in _Ahead(_Ahead(range(10), square, "cpu"), lambda y: y, "cpu"):
            got.append(value)
    assert got == [i * i for i in range(7)]

    def failing_items():
        yield 1
        raise OSError("loader died")

    values = iter(_Ahead(failing_items(), square, "cpu"))
    assert next(values) == 1
    with pytest.raises(OSError, match="loader died"):
        next(values)
    inner = _Ahead(itertools.count(), lambda x: x, "cpu")
    endless = _Ahead(inner, lambda x: x, "cpu")
    assert next(iter(endless)) == 0
    endless.close()
    assert not endless._thread.is_alive() and not inner._thread.is_alive()


@pytest.mark.gpu
def test_pixels_made_ahead_on_a_gpu_are_complete_when_taken():
    """On a GPU each _Ahead thread queues its work on a stream of its own: what the consumer reads on its stream
    is the finished result, however long the threads' kernels take, through a chain of two as encode has."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from regvq_cli.engine.encode import _Ahead

    def slow_fill(i):
        torch.cuda._sleep(20_000_000)  # the thread's stream busy for a while before the values land
        return {"values": torch.full((1 << 20,), float(i), device="cuda")}, i

    def slow_double(got):
        torch.cuda._sleep(20_000_000)
        return got[0]["values"] * 2, got[1]

    for values, i in _Ahead(_Ahead(range(4), slow_fill, "cuda"), slow_double, "cuda"):
        assert values.sum().item() == 2 * i * (1 << 20)


def test_compile_says_the_first_batch_waits_for_it(tmp_path, tokenizer_dir, monkeypatch):
    """--compile on encode and decode: a line on stderr says the first batch waits for the compilation (so a minute
    without progress is not taken for a hang); none without --compile. (torch.compile made a no-op here: the
    compiled path itself is tested in test_runtime.py.)"""
    import torch

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    imgs = make_images(tmp_path / "imgs", 2)
    for flags in ([], ["--compile"]):
        r = encode(imgs, "-o", tmp_path / f"tok{len(flags)}", "-m", tokenizer_dir, *flags)
        assert r.returncode == 0 and (b"compiling the tokenizer's encoder" in r.stderr) == bool(flags)
        r = invoke("decode", tmp_path / f"tok{len(flags)}", "-o", tmp_path / f"rec{len(flags)}", *flags)
        assert r.returncode == 0 and (b"compiling the tokenizer's decoder" in r.stderr) == bool(flags)


def test_decode_never_writes_two_grids_to_one_file(tmp_path, tokenizer_dir):
    """cat.jpg and cat.png (and a key given twice on stdin) would both become cat.png: each grid gets a file."""
    imgs = make_images(tmp_path / "imgs", 2)
    os.rename(imgs / "img000.png", imgs / "cat.png")
    Image.open(imgs / "img001.png").save(imgs / "cat.jpg")
    os.remove(imgs / "img001.png")
    assert encode(imgs, "-o", tmp_path / "tok", "-m", tokenizer_dir).returncode == 0
    r = invoke("decode", tmp_path / "tok", "-o", tmp_path / "rec", "--json")
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads(r.stdout)["decoded"] == 2 and len(os.listdir(tmp_path / "rec")) == 2
    assert b"warning" in r.stderr and b"cat.png" in r.stderr
    line = json.dumps({"tokens": [[1] * 8] * 8, "key": "same"})
    r = invoke("decode", "-", "-m", tokenizer_dir, "-o", tmp_path / "rec2", input=f"{line}\n{line}\n{line}\n")
    assert r.returncode == 0, r.stderr.decode()
    assert len(os.listdir(tmp_path / "rec2")) == 3


def test_torchrun_ranks_name_clashing_files_as_one_process(tmp_path, tokenizer_dir):
    """cat.jpg and cat.png in shards of two ranks: each rank claims the other's file names in the folder's order,
    so together they write what one process writes, and neither overwrites the other's cat.png."""
    from regvq_cli.engine.checkpoint import load_model
    from regvq_cli.engine.decode import decode_tokens, shard_batches

    imgs = make_images(tmp_path / "imgs", 3)
    os.rename(imgs / "img000.png", imgs / "cat.png")
    Image.open(imgs / "img001.png").save(imgs / "cat.jpg")
    os.remove(imgs / "img001.png")
    assert encode(imgs, "-o", tmp_path / "tok", "-m", tokenizer_dir, "--shard-size", "1").returncode == 0
    tok = load_model(tokenizer_dir)
    cpu = torch.device("cpu")
    one = decode_tokens(shard_batches(tmp_path / "tok", 4, None), tmp_path / "one", tok, cpu, torch.float32)
    assert len(one["renamed"]) == 1
    split = [decode_tokens(shard_batches(tmp_path / "tok", 4, None, rank, 2), tmp_path / "two", tok, cpu,
                           torch.float32) for rank in (0, 1)]
    assert [s["decoded"] for s in split] == [2, 1]
    names = sorted(os.listdir(tmp_path / "one"))
    assert len(names) == 3 and sorted(os.listdir(tmp_path / "two")) == names
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_decode_reads_the_token_folders_manifest_once(tmp_path, tokenizer_dir, monkeypatch):
    """`regvq decode` of a token folder reads its manifest once (the recorded tokenizer, the count for the bar and
    the batches all come from one reader): a run over millions of grids has a manifest of thousands of shards."""
    from regvq_cli.data import shards

    imgs = make_images(tmp_path / "imgs", 3)
    assert encode(imgs, "-o", tmp_path / "tok", "-m", tokenizer_dir, "--shard-size", "2").returncode == 0
    reads = []
    read = shards.read_manifest
    monkeypatch.setattr(shards, "read_manifest", lambda path: reads.append(path) or read(path))
    r = invoke("decode", tmp_path / "tok", "-o", tmp_path / "rec")
    assert r.returncode == 0, r.stderr.decode()
    assert len(reads) == 1 and len(os.listdir(tmp_path / "rec")) == 3


def test_decode_counts_its_grids_for_the_bar_and_v_lines(tmp_path, tokenizer_dir):
    """rows_for_rank gives the number of grids shard_batches hands a rank (with --limit and several ranks), which
    the bar and -v's lines at every tenth count against."""
    from regvq_cli.engine.decode import rows_for_rank, shard_batches

    imgs = make_images(tmp_path / "imgs", 5)
    assert encode(imgs, "-o", tmp_path / "tok", "-m", tokenizer_dir, "--shard-size", "2").returncode == 0
    for limit in (None, 1, 3, 4, 9):
        for rank, world in ((0, 1), (0, 2), (1, 2), (2, 3)):
            batches = shard_batches(tmp_path / "tok", 2, limit, rank, world)
            got = sum(len(b.keys) for b in batches if b.tokens is not None)  # its own rows, not the others' names
            assert rows_for_rank(tmp_path / "tok", limit, rank, world) == got, (limit, rank, world)
    assert rows_for_rank("-", None) is None
    r = invoke("decode", tmp_path / "tok", "-o", tmp_path / "rec", "--batch-size", "2", "-v")
    assert r.returncode == 0, r.stderr.decode()
    assert [line.split(" (")[0] for line in r.stderr.decode().splitlines() if "grids done" in line] == [
        "2 of 5 grids done", "4 of 5 grids done", "5 of 5 grids done"]


def test_decode_refuses_an_unusable_out_before_decoding(tmp_path, tokenizer_dir, monkeypatch):
    """--grid onto a folder, or below a file, and PNGs into a file: one line naming --out, before any grid is
    decoded, and no temporary file left behind."""
    from regvq_cli.engine import decode as decode_engine

    assert encode(make_images(tmp_path / "imgs", 2), "-o", tmp_path / "tok", "-m", tokenizer_dir).returncode == 0
    (tmp_path / "sheet.png").mkdir()
    (tmp_path / "afile").write_text("x")

    def no_decoding(*args, **kw):
        raise AssertionError("decoded before checking --out")

    monkeypatch.setattr(decode_engine, "prepare_tokenizer", no_decoding)
    for args in (["--grid", "-o", tmp_path / "sheet.png"], ["--grid", "-o", tmp_path / "afile" / "sheet.png"],
                 ["-o", tmp_path / "afile"], ["-o", tmp_path / "afile" / "rec"],
                 ["-o", tmp_path / "recon.png"]):  # the last: --grid forgotten
        r = invoke("decode", tmp_path / "tok", *args)
        assert r.returncode in (1, 2) and b"--out" in r.stderr, r.stderr.decode()
        assert b"decoded before" not in r.stderr and b"Traceback" not in r.stderr
    assert sorted(os.listdir(tmp_path / "sheet.png")) == [] and sorted(os.listdir(tmp_path)) == [
        "afile", "imgs", "sheet.png", "tok"]
    r = invoke("decode", tmp_path / "tok", "-o", tmp_path / "rec", "--cols", "2")
    assert b"--cols lays out the contact sheet: pass --grid too" in r.stderr


def test_tokens_encoded_at_another_size_decode_at_that_size(tmp_path, tokenizer_dir):
    """encode --size gives smaller grids than the tokenizer's own size; decode makes pictures of that size."""
    assert encode(make_images(tmp_path / "imgs", 2), "-o", tmp_path / "tok", "-m", tokenizer_dir,
                  "--size", "16").returncode == 0
    for source in (tmp_path / "tok", tmp_path / "tok" / "shard-00000.safetensors"):
        r = invoke("decode", source, "-o", tmp_path / "rec")
        assert r.returncode == 0, r.stderr.decode()
        assert Image.open(tmp_path / "rec" / "img000.png").size == (16, 16)
    torch.manual_seed(1)
    other = save_model(Tokenizer(PRESETS["tok-test"]), tmp_path / "other")
    r = invoke("decode", tmp_path / "tok", "-o", tmp_path / "rec2", "-m", other)
    assert r.returncode == 0, r.stderr.decode()  # the same kind of tokenizer: a warning, pictures of 16 px
    line = json.dumps([[1] * 4] * 4)
    r = invoke("decode", "-", "-m", tokenizer_dir, "-o", tmp_path / "rec3", input=line)  # stdin records no size:
    assert r.returncode == 0, r.stderr.decode()  # the grids' own, with a warning
    assert Image.open(tmp_path / "rec3" / "000000.png").size == (16, 16)
    assert b"the grids were 4x4, so the pictures 16x16 px: this tokenizer makes 8x8 grids" in r.stderr
    r = invoke("decode", "-", "-m", tokenizer_dir, "-o", tmp_path / "rec5", input=json.dumps([[1] * 8] * 8))
    assert r.returncode == 0 and b"the grids were" not in r.stderr
    f8 = save_model(Tokenizer(PRESETS["tok-test-f8"]), tmp_path / "f8")
    r = invoke("decode", tmp_path / "tok", "-o", tmp_path / "rec4", "-m", f8)
    assert r.returncode == 1 and b"4x4" in r.stderr and b"None" not in r.stderr, r.stderr.decode()


def test_a_bad_line_on_stdin_keeps_the_grids_before_it(tmp_path, tokenizer_dir):
    """stdin cannot be read twice: the good lines before a malformed one are decoded, then the error names it."""
    good = json.dumps([[1] * 8] * 8)
    others = [json.dumps([[1] * 8] * 7 + [[1] * 7 + [v]]) for v in (1.5, True, "1")]  # no integer ids: no rounding
    for n, bad in enumerate(["{broken", json.dumps([[1] * 4] * 4), *others]):
        out = tmp_path / f"rec{n}"
        r = invoke("decode", "-", "-m", tokenizer_dir, "-o", out, input=f"{good}\n{good}\n{bad}\n{good}\n")
        assert r.returncode == 1 and b"stdin line 3" in r.stderr, r.stderr.decode()
        assert sorted(os.listdir(out)) == ["000000.png", "000001.png"]


def test_a_size_the_tokenizer_cannot_grid_says_which_sizes_work(tmp_path, tokenizer_dir):
    r = encode(make_images(tmp_path / "imgs", 1), "-o", tmp_path / "tok", "-m", tokenizer_dir, "--size", "30")
    assert r.returncode == 1 and b"--size" in r.stderr and b"28 or 32" in r.stderr, r.stderr.decode()
    assert not (tmp_path / "tok").exists()


def test_a_bad_row_in_a_batch_keeps_the_rows_before_it(tmp_path, tokenizer_dir):
    """Nothing already done is lost: the rows of a batch before one with a token outside the codebook are
    decoded and written, then the error names the bad row."""
    assert encode(make_images(tmp_path / "imgs", 3), "-o", tmp_path / "tok", "-m", tokenizer_dir).returncode == 0
    shard = tmp_path / "tok" / "shard-00000.safetensors"
    from safetensors import safe_open

    with safe_open(str(shard), "np") as f:
        metadata = f.metadata()
    data = load_file(str(shard))
    data["tokens"][2, 3, 3] = 999
    save_file(data, str(shard), metadata=metadata)
    r = invoke("decode", shard, "-o", tmp_path / "rec", "-m", tokenizer_dir)
    assert r.returncode == 1 and r.stderr.count(b"\n") == 1, r.stderr.decode()
    assert b"shard-00000.safetensors row 2: token 999 is outside the codebook" in r.stderr
    assert sorted(os.listdir(tmp_path / "rec")) == ["img000.png", "img001.png"]
    good, bad = json.dumps([[1] * 8] * 8), json.dumps([[70] * 8] * 8)
    r = invoke("decode", "-", "-m", tokenizer_dir, "-o", tmp_path / "rec2", input=f"{good}\n{good}\n{bad}\n{good}\n")
    assert r.returncode == 1 and b"stdin line 3: token 70" in r.stderr, r.stderr.decode()
    assert sorted(os.listdir(tmp_path / "rec2")) == ["000000.png", "000001.png"]


def test_a_contact_sheet_is_never_wider_than_its_images():
    from regvq_cli.engine.decode import contact_sheet

    images = np.zeros((3, 4, 5, 3), np.uint8)
    assert contact_sheet(images, cols=8).shape == contact_sheet(images, cols=3).shape == (2 + 4 + 2, 2 + 3 * 7, 3)
    assert contact_sheet(images).shape == (2 * 6 + 2, 2 * 7 + 2, 3)  # square by default: 2 x 2


def test_decode_writes_a_contact_sheet_to_stdout_with_dash(tmp_path, tokenizer_dir, monkeypatch):
    assert encode(make_images(tmp_path / "imgs", 3), "-o", tmp_path / "tok", "-m", tokenizer_dir).returncode == 0
    assert invoke("decode", tmp_path / "tok", "--grid", "-o", tmp_path / "sheet.png").returncode == 0
    monkeypatch.chdir(tmp_path)
    r = invoke("decode", tmp_path / "tok", "--grid", "-o", "-")
    assert r.returncode == 0 and r.stdout == (tmp_path / "sheet.png").read_bytes(), r.stderr.decode()
    assert b"stdout: 3 images decoded" in r.stderr
    r = invoke("decode", tmp_path / "tok", "-o", "-")  # one PNG a grid cannot go to stdout; no folder "-" is made
    assert r.returncode == 2 and b"pass --grid" in r.stderr and not (tmp_path / "-").exists()
    r = invoke("decode", tmp_path / "tok", "--grid", "-o", "-", "--json")
    assert r.returncode == 2 and b"both write to stdout" in r.stderr


def test_encode_limit_takes_the_first_inputs_and_is_its_own_run(tmp_path, tokenizer_dir):
    imgs = make_images(tmp_path / "imgs", 5)
    r = encode(imgs, "-o", tmp_path / "tok", "-m", tokenizer_dir, "--limit", "3", "--json")
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads(r.stdout)["total_encoded"] == 3
    from regvq_cli.data.dataset import TokenDataset

    ds = TokenDataset(tmp_path / "tok")
    assert [ds[i]["key"] for i in range(len(ds))] == sorted(os.listdir(imgs))[:3]  # the first three of the listing
    r = encode(imgs, "-o", tmp_path / "tok", "-m", tokenizer_dir)  # all five: another run, refused
    assert r.returncode == 1 and b"different run" in r.stderr


def test_the_default_decoding_workers_take_a_gpu_hosts_cores_only_where_they_are_the_limit(monkeypatch):
    """For a GPU with Pillow decoding and resizing, every core but the main process's; elsewhere one a core up to
    8; the torchrun processes of a host share its cores."""
    from regvq_cli.engine import dist

    monkeypatch.setattr(dist.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert dist.default_loader_workers() == 8
    assert dist.default_loader_workers(pillow_on_gpu_host=True) == 15
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert dist.default_loader_workers(pillow_on_gpu_host=True) == 7 and dist.default_loader_workers() == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert dist.default_loader_workers() == 4
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setattr(dist.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert dist.default_loader_workers() == 2 and dist.default_loader_workers(pillow_on_gpu_host=True) == 1
