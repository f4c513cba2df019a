"""Token shards: round trips, atomic writes, manifest determinism, verify, lock, safe paths."""

import errno
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from regvq_cli.data import shards as S
from regvq_cli.data.shards import (
    OutputLock, RunInfo, ShardReader, completed_shards, info, merge, plan_shards, read_manifest,
    read_shard, safe_output_path, shards_for_worker, verify, write_manifest, write_shard,
)
from regvq_cli.errors import RegvqError


def make_run(n=7, shard_size=3, codebook=1024, **kw):
    return RunInfo("test-tok", "ab" * 32, (4, 5), codebook, n, shard_size,
                   {"size": [64, 64], "resize": "crop", "background": [255, 255, 255]}, **kw)


def fake_tokens(start, n, run, seed=0):
    rng = np.random.default_rng(seed + start)
    return rng.integers(0, run.codebook_size, (n, *run.grid))


def write_all(out, run, skip=(), ks=None, labels=False, captions=False, segmaps=False):
    """Write the shards of `run`, skipping the global input positions in `skip`."""
    for k, start, stop in plan_shards(run.num_inputs, run.shard_size):
        if ks is not None and k not in ks:
            continue
        keep = [i for i in range(start, stop) if i not in skip]
        write_shard(
            out, k, run, fake_tokens(start, len(keep), run), [f"dir/img{i}.jpg" for i in keep], keep,
            labels=[i % 3 for i in keep] if labels else None,
            captions=[f"caption {i} ü" for i in keep] if captions else None,
            segmaps=np.full((len(keep), 8, 8), 2, np.uint8) if segmaps else None,
            skipped=[(f"dir/img{i}.jpg", "truncated") for i in range(start, stop) if i in skip],
        )


def test_plan_and_workers():
    plan = plan_shards(7, 3)
    assert plan == [(0, 0, 3), (1, 3, 6), (2, 6, 7)]
    assert plan_shards(0, 3) == []
    assert [p[0] for p in shards_for_worker(plan_shards(10, 1), 1, 3)] == [1, 4, 7]
    with pytest.raises(RegvqError):
        shards_for_worker(plan, 3, 3)


def test_run_info_json_round_trip():
    run = make_run(labels=True, label_names=["a", "b"], segmap_size=[8, 8], extra={"t": (1, 2)})
    back = RunInfo.from_dict(json.loads(json.dumps(run.to_dict())))
    assert back == run and back.segmap_size == (8, 8) and back.label_names == ("a", "b")
    assert make_run(codebook=65536).dtype == "uint16" and make_run(codebook=65537).dtype == "int32"


@pytest.mark.parametrize("codebook", [1024, 65536, 100_000])
def test_round_trip(tmp_path, codebook):
    run = make_run(codebook=codebook, labels=True, label_names=["x", "y", "z"], captions=True, segmap_size=(8, 8))
    write_all(tmp_path, run, skip={4}, labels=True, captions=True, segmaps=True)
    m = write_manifest(tmp_path)
    assert m["dtype"] == ("int32" if codebook > 65536 else "uint16")
    assert m["count"] == 6 and m["num_skipped"] == 1
    assert m["skipped"] == [{"key": "dir/img4.jpg", "reason": "truncated"}]
    assert [s["first_index"] for s in m["shards"]] == [0, 3, 5]
    reader = ShardReader(tmp_path)
    assert len(reader) == 6
    rows = [reader[i] for i in range(6)]
    assert [r["index"] for r in rows] == [0, 1, 2, 3, 5, 6]
    assert [r["key"] for r in rows] == [f"dir/img{i}.jpg" for i in (0, 1, 2, 3, 5, 6)]
    assert rows[4]["caption"] == "caption 5 ü" and rows[4]["label"] == 5 % 3
    assert (rows[3]["tokens"] == fake_tokens(3, 2, run)[0]).all() and rows[3]["tokens"].dtype == np.int64
    assert rows[0]["segmap"].shape == (8, 8)
    assert reader.all_tokens().shape == (6, 4, 5)
    s = read_shard(tmp_path / "shard-00001.safetensors")
    assert s["tensors"]["tokens"].dtype == np.dtype(m["dtype"])
    assert s["skipped"] == [{"key": "dir/img4.jpg", "reason": "truncated"}]
    single = ShardReader(tmp_path / "shard-00002.safetensors")
    assert len(single) == 1 and single[0]["key"] == "dir/img6.jpg"


def test_plain_safetensors_and_json_read(tmp_path):
    run = make_run(captions=True)
    write_all(tmp_path, run, captions=True)
    write_manifest(tmp_path)
    # the snippet from the module docstring, verbatim in spirit: no regvq import needed
    code = textwrap.dedent(f"""
        import json, sys
        from safetensors.numpy import load_file
        from safetensors import safe_open
        assert "regvq_cli" not in sys.modules
        m = json.load(open({str(tmp_path / 'manifest.json')!r}))
        s = load_file({str(tmp_path)!r} + "/" + m["shards"][1]["file"])
        o, b = s["keys_offsets"], s["keys_blob"]
        keys = [b[o[i]:o[i + 1]].tobytes().decode() for i in range(len(o) - 1)]
        with safe_open({str(tmp_path)!r} + "/" + m["shards"][1]["file"], "np") as f:
            meta = f.metadata()
        print(json.dumps([keys, list(s["tokens"].shape), str(s["tokens"].dtype), meta["format"], meta["count"]]))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    keys, shape, dtype, fmt, count = json.loads(out.stdout)
    assert keys == ["dir/img3.jpg", "dir/img4.jpg", "dir/img5.jpg"]
    assert shape == [3, 4, 5] and dtype == "uint16" and fmt == "regvq-tokens" and count == "3"


def test_write_validates(tmp_path):
    run = make_run()
    with pytest.raises(ValueError, match="tokens must be"):
        write_shard(tmp_path, 0, run, np.zeros((3, 5, 4)), ["a", "b", "c"])
    with pytest.raises(ValueError, match="inputs in its slice"):
        write_shard(tmp_path, 0, run, np.zeros((2, 4, 5)), ["a", "b"])
    with pytest.raises(ValueError, match="token ids"):
        write_shard(tmp_path, 0, run, np.full((3, 4, 5), 1024), ["a", "b", "c"])
    with pytest.raises(ValueError, match="labels given"):
        write_shard(tmp_path, 0, run, np.zeros((3, 4, 5)), ["a", "b", "c"], labels=[0, 1, 2])
    with pytest.raises(ValueError, match="outside the plan"):
        write_shard(tmp_path, 3, run, np.zeros((1, 4, 5)), ["a"])
    assert os.listdir(tmp_path) == []


def test_all_skipped_shard(tmp_path):
    run = make_run(n=2, shard_size=2)
    write_shard(tmp_path, 0, run, np.zeros((0, 4, 5)), [], skipped=[("a", "empty file"), ("b", "not an image")])
    m = write_manifest(tmp_path)
    assert m["count"] == 0 and m["num_skipped"] == 2 and verify(tmp_path) == []
    assert len(ShardReader(tmp_path)) == 0


def test_disk_full_leaves_no_partial_shard(tmp_path, monkeypatch):
    run = make_run()
    write_all(tmp_path, run, ks={0})
    before = sorted(os.listdir(tmp_path))
    real_open = open

    class FullFile:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, b):
            self.written += len(b)
            if self.written > 100:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    def full_open(path, mode="r", *a, **kw):
        f = real_open(path, mode, *a, **kw)
        return FullFile(f) if "w" in mode and ".tmp-" in str(path) else f

    monkeypatch.setattr("builtins.open", full_open)
    with pytest.raises(RegvqError, match="disk full.*complete shards are kept"):
        write_all(tmp_path, run, ks={1})
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == before  # shard 0 kept, no temp file, no shard 1
    assert completed_shards(tmp_path, run) == [0]
    with pytest.raises(RegvqError, match=r"1 of 3 shards missing|2 of 3 shards missing"):
        write_manifest(tmp_path)


def folder_bytes(d):
    return {n: (d / n).read_bytes() for n in sorted(os.listdir(d)) if not n.startswith(".lock")}


def test_resume_and_workers_give_identical_folders(tmp_path):
    run = make_run(n=10, shard_size=3, labels=True, label_names=["a", "b", "c"])
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_all(a, run, skip={1, 7}, labels=True)
    write_manifest(a, run)
    # b: "killed" after two shards plus a stray temp file, then resumed under the lock.
    write_all(b, run, skip={1, 7}, labels=True, ks={0, 2})
    (b / f".tmp-{os.getpid() + 1}-shard-00001.safetensors").write_bytes(b"partial")
    with OutputLock(b):
        done = completed_shards(b, run)
        assert done == [0, 2]
        write_all(b, run, skip={1, 7}, labels=True, ks={k for k, _, _ in plan_shards(10, 3) if k not in done})
        write_manifest(b, run)
    # c: two workers in reverse order, then merged without the settings.
    for rank in (1, 0):
        with OutputLock(c, worker=(rank, 2)):
            write_all(c, run, skip={1, 7}, labels=True, ks={p[0] for p in shards_for_worker(plan_shards(10, 3), rank, 2)})
    merge(c)
    assert folder_bytes(a) == folder_bytes(b) == folder_bytes(c)
    text = (a / "manifest.json").read_text()
    assert str(os.getpid()) not in text and json.loads(text) == read_manifest(a)


def test_resume_with_other_settings_refused(tmp_path):
    write_all(tmp_path, make_run(), ks={0})
    other = RunInfo("other-tok", "cd" * 32, (4, 5), 1024, 7, 3)
    with pytest.raises(RegvqError, match="different run.*tokenizer_id") as refused:
        completed_shards(tmp_path, other)
    # which value is whose, and a long one (a hash) cut inside its quotes
    message = str(refused.value)
    assert re.search(r'tokenizer_sha256 "[0-9a-f]{30,}\.\.\." in the folder, "(cd){15,}c?\.\.\." now', message)
    with pytest.raises(RegvqError, match="different run"):
        write_manifest(tmp_path, other)


def test_merge_names_missing_shards(tmp_path):
    write_all(tmp_path, make_run(n=10, shard_size=2), ks={0, 2})
    with pytest.raises(RegvqError, match=r"3 of 5 shards missing.*shard-00001.*shard-00003.*shard-00004"):
        merge(tmp_path)
    with pytest.raises(RegvqError, match="no shards"):
        merge(tmp_path / "empty")


def test_verify_catches_flipped_byte_and_wrong_count(tmp_path):
    run = make_run()
    write_all(tmp_path, run)
    write_manifest(tmp_path)
    assert verify(tmp_path) == []
    path = tmp_path / "shard-00001.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # a token byte
    path.write_bytes(bytes(data))
    problems = verify(tmp_path)
    assert len(problems) == 1 and "shard-00001" in problems[0] and "sha256" in problems[0]
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))
    m = json.loads((tmp_path / "manifest.json").read_text())
    m["shards"][2]["count"] = 5
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    problems = verify(tmp_path)
    assert any("shard-00002" in p and "manifest says 5" in p for p in problems)
    assert any("manifest count" in p for p in problems)


def test_reader_refuses_shards_whose_grid_differs_from_the_manifest(tmp_path):
    """Every command that reads the folder gets one clear error, not numpy's broadcast error."""
    write_all(tmp_path, make_run())
    m = write_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({**m, "grid": [5, 4]}))  # the shards hold 4x5 grids
    for read in (lambda r: r[0], lambda r: r.all_tokens(), lambda r: r.shard(1)):
        with pytest.raises(RegvqError, match=r"shard-0000\d.safetensors holds 4x5 token grids, the manifest says "
                                             r"5x4.*regvq shards verify"):
            read(ShardReader(tmp_path))


def test_verify_reports_out_of_range_tokens_and_extra_files(tmp_path):
    run = make_run(codebook=1000)
    write_all(tmp_path, run)
    write_manifest(tmp_path)
    # Corrupt a token to 1001 (still uint16) and fix the sha so only the range check sees it.
    path = tmp_path / "shard-00000.safetensors"
    h = S._read_header(str(path))
    data = bytearray(path.read_bytes())
    begin = h.data_start + h.tensors["tokens"]["data_offsets"][0]
    data[begin : begin + 2] = (1001).to_bytes(2, "little")
    path.write_bytes(bytes(data))
    m = json.loads((tmp_path / "manifest.json").read_text())
    m["shards"][0]["sha256"] = S._file_sha256(str(path))
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    (tmp_path / ".tmp-12-shard-00009.safetensors").write_bytes(b"")
    problems = verify(tmp_path)
    assert any("row 0 has token ids >= codebook size 1000" in p for p in problems)
    assert any("temporary file" in p for p in problems)
    with pytest.raises(RegvqError, match=r"shard-00000.safetensors row 0: token 1001 outside the codebook"):
        ShardReader(tmp_path)[0]


def test_read_manifest_errors(tmp_path):
    with pytest.raises(RegvqError, match="is not a token folder: it has no manifest.json and no shards"):
        read_manifest(tmp_path)  # an empty folder, or one of images
    (tmp_path / "shard-00000.safetensors").write_bytes(b"")
    with pytest.raises(RegvqError, match="no manifest.json.*shards merge"):
        read_manifest(tmp_path)  # shards without their manifest (a split run): merge them
    (tmp_path / "shard-00000.safetensors").unlink()
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(RegvqError, match="not valid JSON"):
        read_manifest(tmp_path)
    run = make_run()
    write_all(tmp_path, run)
    m = write_manifest(tmp_path)
    for change, pattern in [
        ({"format_version": 2}, "newer regvq"),
        ({"format": "other"}, "not a regvq token folder"),
        ({"grid": "4x5"}, "grid"),
        ({"shards": [{"file": "../../etc/passwd", "count": 1, "sha256": "x"}]}, "plain file name"),
    ]:
        (tmp_path / "manifest.json").write_text(json.dumps({**m, **change}))
        with pytest.raises(RegvqError, match=pattern):
            read_manifest(tmp_path)
    bad = dict(m)
    del bad["codebook_size"]
    (tmp_path / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(RegvqError, match="lacks the field 'codebook_size'"):
        read_manifest(tmp_path)


def test_info_code_usage(tmp_path):
    run = make_run(n=2, shard_size=2, codebook=8)
    toks = np.zeros((2, 4, 5), dtype=np.int64)
    toks[0] = 3  # 20 x code 3, 20 x code 0... then equal halves: perplexity 2
    write_shard(tmp_path, 0, run, toks, ["a", "b"])
    write_manifest(tmp_path)
    got = info(tmp_path)
    assert got["rows"] == 2 and got["used_codes"] == 2 and got["usage"] == 0.25
    assert abs(got["perplexity"] - 2.0) < 1e-9
    assert got["top_codes"] == [[0, 20], [3, 20]]
    assert got["tokenizer"]["id"] == "test-tok"
    assert got["label_names"] is None and got["preprocessing"]["resize"] == "crop"


def test_info_names_the_classes_and_the_pictures_preprocessing(tmp_path):
    from tests.conftest import invoke

    run = make_run(n=2, shard_size=2, codebook=8, labels=True, label_names=["cat", "dog"])
    write_shard(tmp_path, 0, run, np.zeros((2, 4, 5), dtype=np.int64), ["a", "b"], labels=[0, 1])
    write_manifest(tmp_path)
    assert info(tmp_path)["label_names"] == ["cat", "dog"]
    out = invoke("shards", "info", tmp_path).stdout.decode()
    assert "labels     2 classes: cat, dog" in out and 'resize "crop", size [64, 64]' in out, out


LOCK_HOLDER = """
import sys, time
sys.path.insert(0, {root!r})
from regvq_cli.data.shards import OutputLock
lock = OutputLock({out!r}, worker={worker!r}).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def hold_lock(tmp_path, worker=None):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = LOCK_HOLDER.format(root=root, out=str(tmp_path), worker=worker)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_lock_refuses_second_holder(tmp_path):
    p = hold_lock(tmp_path)
    try:
        with pytest.raises(RegvqError, match="another regvq process is writing to .*; wait for it or choose another -o") as e:
            OutputLock(tmp_path).acquire()
        if os.path.exists("/proc/locks"):
            assert f"(pid {p.pid})" in str(e.value)
        with pytest.raises(RegvqError, match="another regvq process"):
            OutputLock(tmp_path, worker=(0, 2)).acquire()
    finally:
        p.kill()
        p.wait()
    with OutputLock(tmp_path):  # released when the holder died
        pass


def test_worker_locks(tmp_path):
    p = hold_lock(tmp_path, worker=(0, 2))
    try:
        with OutputLock(tmp_path, worker=(1, 2)):  # another worker of the same job: fine
            pass
        with pytest.raises(RegvqError, match="another regvq process"):
            OutputLock(tmp_path, worker=(0, 2)).acquire()
        with pytest.raises(RegvqError, match="another regvq process"):
            OutputLock(tmp_path).acquire()
        # a worker of a split into another count would encode the same shards: refused, its temporary files kept
        (tmp_path / ".tmp-4242-shard-00003.safetensors").write_bytes(b"being written")
        with pytest.raises(RegvqError, match="workers of a split into 2 are writing to .*, not 3"):
            OutputLock(tmp_path, worker=(0, 3)).acquire()
        assert (tmp_path / ".tmp-4242-shard-00003.safetensors").exists()
        with OutputLock(tmp_path, worker=(1, 2)):  # and the refused one held nothing
            pass
    finally:
        p.kill()
        p.wait()
    with OutputLock(tmp_path, worker=(0, 3)):  # a finished split's lock files refuse nothing
        pass


def test_a_killed_workers_manifest_file_is_removed_by_any_worker_once_no_other_runs(tmp_path):
    """Whichever worker finishes last writes the manifest; killed while it did, it leaves a temporary file that the
    next worker to start removes, unless another worker is running (and may be writing it)."""
    p = hold_lock(tmp_path, worker=(0, 2))
    stale = tmp_path / ".tmp-999999-manifest.json"
    stale.write_text("{")
    try:
        with OutputLock(tmp_path, worker=(1, 2)):
            assert stale.exists()
    finally:
        p.kill()
        p.wait()
    with OutputLock(tmp_path, worker=(1, 2)):
        assert not stale.exists()


@pytest.mark.parametrize("key", [
    "../../etc/passwd", "/etc/passwd", "a/../../b.jpg", "..", ".", "", "\\..\\..\\x.jpg", "C:/x.jpg",
    "a/./b/../../../c.png", "x\0y/../z.jpg", "....//....//w.jpg", "~/.ssh/id", "a" * 300 + ".jpg",
])
def test_safe_output_path_never_escapes(tmp_path, key):
    out = tmp_path / "out"
    out.mkdir()
    p = safe_output_path(out, key, ".png")
    real_out = os.path.realpath(out)
    assert os.path.commonpath([real_out, os.path.realpath(p)]) == real_out and os.path.realpath(p) != real_out
    assert p.endswith(".png")
    assert all(len(part.encode()) <= 255 for part in os.path.relpath(p, out).split(os.sep))
    os.makedirs(os.path.dirname(p), exist_ok=True)
    open(p, "w").close()  # the path is usable


def test_safe_output_path_keeps_ordinary_keys_and_refuses_symlink_escape(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert safe_output_path(out, "cat/1.jpg", ".png") == str(out / "cat" / "1.png")
    assert safe_output_path(out, "cat/1.jpg") == str(out / "cat" / "1.jpg")
    assert safe_output_path(out, "../x.jpg", ".png") == str(out / "__" / "x.png")
    os.symlink(tmp_path, out / "link")
    with pytest.raises(RegvqError, match="outside"):
        safe_output_path(out, "link/x.jpg", ".png")
    os.symlink(tmp_path / "elsewhere.png", out / "y.png")  # a link at the file itself
    with pytest.raises(RegvqError, match="outside"):
        safe_output_path(out, "y.jpg", ".png")


def test_an_output_folder_resolves_each_folder_once_and_still_refuses_links(tmp_path, monkeypatch):
    """OutputFolder names many files with one resolution of each folder they land in (not of every path's
    components each time), and a link that was there before still stops a path."""
    from regvq_cli.data.shards import OutputFolder

    out = tmp_path / "out"
    (out / "cat").mkdir(parents=True)
    os.symlink(tmp_path, out / "link")
    resolved = []
    realpath = os.path.realpath
    monkeypatch.setattr(os.path, "realpath", lambda p: resolved.append(p) or realpath(p))
    folder = OutputFolder(out)
    paths = [folder.path(f"cat/{i}.jpg", ".png") for i in range(50)] + [folder.path(f"{i}", ".png") for i in range(50)]
    assert paths[0] == str(out / "cat" / "0.png") and paths[-1] == str(out / "49.png")
    assert len(resolved) == 2  # the folder itself and cat/
    with pytest.raises(RegvqError, match="outside"):
        folder.path("link/x.jpg", ".png")


def test_token_dataset_with_dataloader_workers(tmp_path):
    import pickle

    import torch
    from torch.utils.data import DataLoader

    from regvq_cli.data.dataset import TokenDataset

    run = make_run(n=7, shard_size=3, labels=True, captions=True)
    write_all(tmp_path, run, skip={2}, labels=True, captions=True)
    write_manifest(tmp_path)
    ds = TokenDataset(tmp_path)
    ds.reader[0]  # opens a memory map; pickling must not carry it
    assert len(pickle.dumps(ds)) < 4096
    batches = list(DataLoader(ds, batch_size=4, num_workers=2))
    tokens = torch.cat([b["tokens"] for b in batches])
    assert tokens.shape == (6, 4, 5) and tokens.dtype == torch.int64
    assert torch.equal(tokens, torch.from_numpy(ShardReader(tmp_path).all_tokens()))
    assert batches[0]["label"].tolist() == [0, 1, 0, 1]  # inputs 0, 1, 3, 4 (2 was skipped)
    assert batches[0]["caption"][2] == "caption 3 ü" and batches[1]["key"] == ["dir/img5.jpg", "dir/img6.jpg"]


def test_empty_input_listing_manifest(tmp_path):
    run = make_run(n=0)
    m = write_manifest(tmp_path, run)
    assert m["shards"] == [] and m["count"] == 0 and verify(tmp_path) == []


def test_a_manifest_given_as_a_shard_points_at_its_folder(tmp_path):
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "manifest.json").write_text('{"format": "regvq-tokens"}')
    with pytest.raises(RegvqError, match=r"manifest, not a shard: pass the folder \(.*tok\)"):
        S.read_shard(tmp_path / "tok" / "manifest.json")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(RegvqError, match="is not a valid regvq shard"):
        S.read_shard(tmp_path / "other.json")


@pytest.mark.parametrize("drop", ["keys_offsets", "keys_blob", "index", "labels", "captions_offsets"])
def test_a_shard_without_one_of_its_tensors_is_reported_not_a_crash(tmp_path, drop):
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    run = make_run(labels=True, captions=True)
    write_all(tmp_path, run, labels=True, captions=True)
    write_manifest(tmp_path)
    path = str(tmp_path / "shard-00001.safetensors")
    with safe_open(path, "np") as f:
        metadata = f.metadata()
    tensors = load_file(path)
    del tensors[drop]
    save_file(tensors, path, metadata=metadata)
    problems = verify(tmp_path)
    assert any("shard-00001" in p and drop in p for p in problems), problems
    for fn in (lambda: ShardReader(tmp_path)[3], lambda: read_shard(path), lambda: merge(tmp_path),
               lambda: info(tmp_path)):
        with pytest.raises(RegvqError, match=drop):
            fn()


def test_verify_reports_a_missing_or_broken_shard_once(tmp_path):
    """The shards after a missing or unreadable one are not reported as misplaced, nor the manifest's count."""
    run = make_run(n=9, shard_size=3)
    write_all(tmp_path, run)
    write_manifest(tmp_path)
    first = tmp_path / "shard-00000.safetensors"
    data = first.read_bytes()
    first.write_bytes(data[:-10])
    problems = verify(tmp_path)
    assert len(problems) == 2 and all(p.startswith("shard-00000") for p in problems), problems
    first.unlink()
    assert verify(tmp_path) == ["shard-00000.safetensors: missing"]


def _worker_that_closes_its_inherited_locks(ready, done):
    from regvq_cli.data.shards import close_inherited_locks

    close_inherited_locks()
    ready.set()
    done.wait(30)


def test_a_forked_worker_does_not_hold_its_parents_lock(tmp_path):
    """The lock ends with the process that took it: a loader worker (a forked child) closes its copy of the
    descriptor, without unlocking the parent's, so a run killed with SIGKILL frees its folder at once."""
    import multiprocessing

    from regvq_cli.data import shards

    ctx = multiprocessing.get_context("fork")
    lock = OutputLock(tmp_path).acquire()
    ready, done = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_worker_that_closes_its_inherited_locks, args=(ready, done))
    child.start()
    try:
        assert ready.wait(30)
        with pytest.raises(RegvqError, match="another regvq process"):  # the parent's lock stands
            OutputLock(tmp_path).acquire()
        fd = lock._fds.pop()
        shards._LOCK_FDS.discard(fd)
        os.close(fd)  # the parent's own descriptor gone, as when it is killed
        OutputLock(tmp_path).acquire().release()  # free, with the child still alive
    finally:
        done.set()
        child.join(30)
