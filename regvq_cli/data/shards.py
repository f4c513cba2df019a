"""Token shards: the folder `regvq encode` writes and priors train from.

A token folder holds `manifest.json` and `shard-00000.safetensors`, `shard-00001...`.
Shard k holds the encodings of inputs [k * shard_size, (k + 1) * shard_size) of the
deterministic input order, minus the inputs that could not be read. Its tensors:

    tokens          [n, h, w]  uint16 (int32 when codebook_size > 65536)  code ids, raster order
    keys_blob       [bytes]    uint8   source keys (relative paths), UTF-8, concatenated
    keys_offsets    [n + 1]    int64   key i is keys_blob[keys_offsets[i]:keys_offsets[i+1]]
    index           [n]        int64   position of each row's input in the input order
    labels          [n]        int64   class id, -1 for none                    (when present)
    captions_blob   [bytes]    uint8   captions, same blob + offsets scheme      (when present)
    captions_offsets [n + 1]   int64
    segmaps         [n, H, W]  uint8 or int16  class-id maps                     (when present)

safetensors has no string type, hence the blob + offsets pairs. Key bytes are the file
system's bytes (UTF-8 for UTF-8 names; other bytes are kept as they are). The safetensors
metadata (all strings) of each shard holds: `format` ("regvq-tokens"), `format_version`
("1"), `shard_index`, `count`, `inputs` ("start:stop"), `run` (JSON: the run settings
below, identical in every shard of a folder) and `skipped` (JSON list of {key, reason} for
the inputs of this slice that were skipped). A shard file is written atomically (temporary
name, fsync, rename, fsync of the folder), so a present shard file is a complete record of
its slice: resume and multi-worker runs need nothing else, and the manifest is built from
the shard files alone. Files are written by our own serializer (the safetensors layout:
8-byte little-endian header length, JSON header padded with spaces to a multiple of 8, then
the tensor data) with sorted JSON keys, so the same inputs give byte-identical files in
every run; any safetensors reader reads them.

`manifest.json` (sorted keys, no timestamps): format, format_version, regvq_version,
tokenizer {id, sha256}, grid [h, w], codebook_size, dtype, preprocessing, label_names,
fields, segmap_size, num_inputs, inputs_sha256, shard_size, count, num_skipped,
shards [{file, count, sha256, first_index (global row of its first row), inputs [start,
stop]}], skipped [{key, reason}] in input order, and run (the RunInfo the shards carry).

Reading a shard without regvq:

    import json
    from safetensors.numpy import load_file
    m = json.load(open("tokens/manifest.json"))
    s = load_file("tokens/" + m["shards"][0]["file"])   # s["tokens"]: [n, h, w] code ids
    o, b = s["keys_offsets"], s["keys_blob"]
    keys = [b[o[i]:o[i + 1]].tobytes().decode() for i in range(len(o) - 1)]
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import math
import os
import posixpath
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from regvq_cli.errors import RegvqError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "RunInfo",
    "OutputLock",
    "ShardReader",
    "plan_shards",
    "shards_for_worker",
    "shard_name",
    "token_dtype",
    "write_shard",
    "completed_shards",
    "write_manifest",
    "merge",
    "read_manifest",
    "read_shard",
    "verify",
    "info",
    "safe_output_path",
    "OutputFolder",
    "encode_strings",
    "decode_strings",
    "inputs_fingerprint",
]

FORMAT = "regvq-tokens"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_SHARD_RE = re.compile(r"^shard-(\d{5,})\.safetensors$")
_WORKER_LOCK_RE = re.compile(r"^\.lock-(\d+)-of-(\d+)$")
_TMP_RE = re.compile(r"^\.tmp-\d+-(?:shard-(\d{5,})\.safetensors|manifest\.json)$")

# numpy dtype <-> safetensors dtype name
_ST_DTYPES = {
    "bool": "BOOL", "uint8": "U8", "int8": "I8", "uint16": "U16", "int16": "I16",
    "uint32": "U32", "int32": "I32", "uint64": "U64", "int64": "I64",
    "float16": "F16", "float32": "F32", "float64": "F64",
}  # fmt: skip
_NP_DTYPES = {v: k for k, v in _ST_DTYPES.items()}


# ----------------------------------------------------------------------------- run settings


@dataclass(frozen=True)
class RunInfo:
    """What produced a token folder; stored in every shard, checked on resume and merge.

    preprocessing - JSON-able, e.g. {"size": [256, 256], "resize": "crop", "background": [255, 255, 255]}
    labels        - shards carry `labels`; label_names (or None for bare integer ids)
    captions      - shards carry captions
    segmap_size   - (H, W) of the `segmaps` tensor, or None for no maps
    inputs_sha256 - fingerprint of the input keys in order (`inputs_fingerprint`), "" if unknown;
                    a resume against a changed input listing is refused when it differs
    extra         - any further JSON-able settings (e.g. the text encoder), part of the identity
    """

    tokenizer_id: str
    tokenizer_sha256: str
    grid: tuple[int, int]
    codebook_size: int
    num_inputs: int
    shard_size: int
    preprocessing: dict = field(default_factory=dict)
    labels: bool = False
    label_names: tuple[str, ...] | None = None
    captions: bool = False
    segmap_size: tuple[int, int] | None = None
    inputs_sha256: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        fix = lambda name, v: object.__setattr__(self, name, v)  # noqa: E731 - frozen dataclass
        fix("grid", tuple(int(g) for g in self.grid))
        if self.segmap_size is not None:
            fix("segmap_size", tuple(int(s) for s in self.segmap_size))
        if self.label_names is not None:
            fix("label_names", tuple(str(s) for s in self.label_names))
        # JSON-normalise the free-form parts so a round trip compares equal (tuples -> lists).
        fix("preprocessing", json.loads(json.dumps(self.preprocessing)))
        fix("extra", json.loads(json.dumps(self.extra)))
        if len(self.grid) != 2 or min(self.grid) <= 0:
            raise ValueError(f"grid must be (h, w) > 0, got {self.grid}")
        if not 0 < self.codebook_size <= 2**31:
            raise ValueError(f"codebook_size must be in 1..2^31, got {self.codebook_size}")
        if self.num_inputs < 0 or self.shard_size <= 0:
            raise ValueError("num_inputs must be >= 0 and shard_size > 0")

    @property
    def dtype(self) -> str:
        return token_dtype(self.codebook_size)

    @property
    def fields(self) -> list[str]:
        out = ["tokens", "keys", "index"]
        out += ["labels"] * self.labels + ["captions"] * self.captions
        out += ["segmaps"] * (self.segmap_size is not None)
        return out

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return json.loads(json.dumps(d))  # tuples -> lists, exactly as stored

    @classmethod
    def from_dict(cls, d: dict) -> RunInfo:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise RegvqError(f"run settings have unknown fields {sorted(unknown)}; upgrade regvq")
        try:
            return cls(**d)
        except (TypeError, ValueError) as e:
            raise RegvqError(f"run settings are malformed ({e})") from None

    def _json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))


def token_dtype(codebook_size: int) -> str:
    """uint16 holds ids 0..65535, so codebooks up to 65536 codes; int32 beyond."""
    return "uint16" if codebook_size <= 65536 else "int32"


def inputs_fingerprint(keys: Iterable[str]) -> str:
    """sha256 over the keys in order, one per line: identifies an input listing."""
    h = hashlib.sha256()
    for k in keys:
        h.update(k.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()


def plan_shards(n_inputs: int, shard_size: int) -> list[tuple[int, int, int]]:
    """[(k, start, stop)]: shard k holds inputs [start, stop) of the input order."""
    if shard_size <= 0:
        raise ValueError("shard_size must be positive")
    return [(k, s, min(s + shard_size, n_inputs)) for k, s in enumerate(range(0, n_inputs, shard_size))]


def shards_for_worker(plan: Sequence[tuple[int, int, int]], rank: int, world: int) -> list[tuple[int, int, int]]:
    """The shards worker `rank` of `world` writes: k % world == rank."""
    if not 0 <= rank < world:
        raise RegvqError(f"worker id {rank} must be in 0..{world - 1}")
    return [p for p in plan if p[0] % world == rank]


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def shard_index(name: str) -> int:
    """k of a shard file's name (shard_name's inverse)."""
    return int(_SHARD_RE.match(name).group(1))


# ----------------------------------------------------------------------------- strings


def encode_strings(strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings -> (uint8 blob, int64 offsets [n + 1]); string i is blob[off[i]:off[i+1]]."""
    parts = [s.encode("utf-8", "surrogateescape") for s in strings]
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in parts], out=offsets[1:])
    return np.frombuffer(b"".join(parts), dtype=np.uint8).copy(), offsets


def decode_strings(blob: np.ndarray, offsets: np.ndarray) -> list[str]:
    raw = np.asarray(blob, dtype=np.uint8).tobytes()
    off = np.asarray(offsets).tolist()
    return [raw[off[i] : off[i + 1]].decode("utf-8", "surrogateescape") for i in range(len(off) - 1)]


# ----------------------------------------------------------------------------- safetensors I/O


def _layout(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> tuple[bytes, list[np.ndarray]]:
    """The safetensors header and the arrays in file order, deterministically.

    Larger item sizes first, then by name: every tensor starts at a multiple of its item size
    (the data section starts at a multiple of 8), so readers can view it without copying.
    """
    order = sorted(tensors, key=lambda n: (-tensors[n].dtype.itemsize, n))
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    arrays, pos = [], 0
    for name in order:
        a = np.ascontiguousarray(tensors[name])
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        if a.dtype.name not in _ST_DTYPES:
            raise ValueError(f"tensor {name} has unsupported dtype {a.dtype}")
        header[name] = {"dtype": _ST_DTYPES[a.dtype.name], "shape": list(a.shape), "data_offsets": [pos, pos + a.nbytes]}
        pos += a.nbytes
        arrays.append(a)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, arrays


class _Header(NamedTuple):
    tensors: dict  # name -> {"dtype", "shape", "data_offsets"}
    metadata: dict  # str -> str
    data_start: int  # byte offset of the data section
    size: int  # expected file size


def _read_header(path: str) -> _Header:
    """Parse a safetensors header; raise ValueError with a reason if the file is not one."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError("file too short for a safetensors header")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise ValueError("header length is implausible")
        text = f.read(n)
        if len(text) < n:
            raise ValueError("file ends inside the header")
        actual = os.fstat(f.fileno()).st_size
    try:
        header = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError("header is not valid JSON") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    end = 0
    for name, t in header.items():
        try:
            begin, stop = t["data_offsets"]
            nbytes = math.prod(t["shape"]) * np.dtype(_NP_DTYPES[t["dtype"]]).itemsize
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"tensor {name} has a malformed header entry") from None
        if stop - begin != nbytes or begin < 0:
            raise ValueError(f"tensor {name} has inconsistent offsets")
        end = max(end, stop)
    size = 8 + n + end
    if actual != size:
        raise ValueError(f"file has {actual} bytes, header says {size} (incomplete or padded)")
    return _Header(header, metadata, 8 + n, size)


def _mmap_tensors(path: str, header: _Header) -> dict[str, np.ndarray]:
    """Read-only numpy views of every tensor, memory-mapped (no copy, nothing read yet)."""
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, t in header.tensors.items():
        begin, stop = t["data_offsets"]
        dt = np.dtype(_NP_DTYPES[t["dtype"]]).newbyteorder("<")
        out[name] = buf[header.data_start + begin : header.data_start + stop].view(dt).reshape(t["shape"])
    return out


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a folder; the rename is still atomic
    finally:
        os.close(fd)


def _atomic_write(path: str, chunks: Iterable) -> str:
    """Write chunks to `path` atomically; return the sha256 of what was written.

    A temporary file in the same folder is written, flushed and fsynced, then renamed over
    `path` and the folder fsynced: readers see the old file or the whole new one, never part.
    """
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{name}")
    h = hashlib.sha256()
    try:
        with open(tmp, "wb") as f:
            for c in chunks:
                if (len(c) if isinstance(c, bytes) else c.nbytes) == 0:
                    continue  # memoryview cannot cast an empty array; nothing to write anyway
                mv = memoryview(c).cast("B") if not isinstance(c, bytes) else c
                h.update(mv)
                f.write(mv)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
                raise RegvqError(
                    f"disk full while writing {path}; complete shards are kept: free space and rerun to finish"
                ) from None
            raise RegvqError(f"cannot write {path}: {e.strerror or e}") from None
        raise
    _fsync_dir(folder)
    return h.hexdigest()


# sha256 of files this process wrote or read, so a merge in the same process does not read them again (a file
# changed since has another inode, size or modification time).
_KNOWN: dict[tuple[str, int, int, int], str] = {}


def _file_sha256(path: str) -> str:
    st = os.stat(path)
    cache_key = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if cache_key in _KNOWN:
        return _KNOWN[cache_key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    _KNOWN[cache_key] = h.hexdigest()
    return _KNOWN[cache_key]


# ----------------------------------------------------------------------------- writing


def write_shard(
    out_dir: str | os.PathLike,
    k: int,
    run: RunInfo,
    tokens: np.ndarray,
    keys: Sequence[str],
    index: Sequence[int] | np.ndarray | None = None,
    *,
    labels: Sequence[int] | np.ndarray | None = None,
    captions: Sequence[str] | None = None,
    segmaps: np.ndarray | None = None,
    skipped: Sequence[tuple[str, str]] = (),
) -> dict:
    """Write shard k atomically; return its manifest entry {file, count, sha256, inputs}.

    tokens  - [n, h, w] integer code ids in [0, run.codebook_size), rows in input order
    keys    - n source keys
    index   - n input positions in [start, stop) (default: the slice minus the skipped
              inputs, assuming `skipped` lists them)
    labels / captions / segmaps - n of each, required exactly when `run` says the folder has them
    skipped - (key, reason) for every input of the slice that was not encoded

    The n encoded rows plus the skipped inputs must account for the whole slice.
    """
    out_dir = os.fspath(out_dir)
    plan = plan_shards(run.num_inputs, run.shard_size)
    if not 0 <= k < len(plan):
        raise ValueError(f"shard {k} is outside the plan of {len(plan)} shards")
    _, start, stop = plan[k]
    tokens = np.asarray(tokens)
    n = len(keys)
    if tokens.shape != (n, *run.grid):
        raise ValueError(f"tokens must be [{n}, {run.grid[0]}, {run.grid[1]}], got {list(tokens.shape)}")
    if n + len(skipped) != stop - start:
        raise ValueError(f"shard {k}: {n} rows + {len(skipped)} skipped != {stop - start} inputs in its slice")
    if n and (tokens.min() < 0 or tokens.max() >= run.codebook_size):
        raise ValueError(f"token ids must be in [0, {run.codebook_size}), got {tokens.min()}..{tokens.max()}")
    if index is None:
        if skipped and n:  # which rows were skipped is unknown unless none or all were
            raise ValueError("pass `index` when some but not all inputs of a shard were skipped")
        index = np.arange(start, start + n)
    index = np.asarray(index, dtype=np.int64)
    if index.shape != (n,) or (n and (index.min() < start or index.max() >= stop or (np.diff(index) <= 0).any())):
        raise ValueError(f"index must be {n} increasing positions in [{start}, {stop})")

    tensors: dict[str, np.ndarray] = {"tokens": tokens.astype(run.dtype), "index": index}
    tensors["keys_blob"], tensors["keys_offsets"] = encode_strings(keys)
    given = {"labels": labels is not None, "captions": captions is not None, "segmaps": segmaps is not None}
    wanted = {"labels": run.labels, "captions": run.captions, "segmaps": run.segmap_size is not None}
    for name in given:
        if given[name] != wanted[name]:
            raise ValueError(f"{name} {'given' if given[name] else 'missing'} but the run settings say otherwise")
    if labels is not None:
        tensors["labels"] = np.asarray(labels, dtype=np.int64).reshape(n)
    if captions is not None:
        if len(captions) != n:
            raise ValueError(f"{len(captions)} captions for {n} rows")
        tensors["captions_blob"], tensors["captions_offsets"] = encode_strings(captions)
    if segmaps is not None:
        segmaps = np.asarray(segmaps)
        if segmaps.shape != (n, *run.segmap_size) or segmaps.dtype not in (np.uint8, np.int16):
            raise ValueError(f"segmaps must be uint8 or int16 [{n}, {run.segmap_size[0]}, {run.segmap_size[1]}]")
        tensors["segmaps"] = segmaps

    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "shard_index": str(k),
        "count": str(n),
        "inputs": f"{start}:{stop}",
        "run": run._json(),
        "skipped": json.dumps([{"key": key, "reason": r} for key, r in skipped], sort_keys=True, separators=(",", ":")),
    }
    head, arrays = _layout(tensors, metadata)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, shard_name(k))
    digest = _atomic_write(path, [head, *arrays])
    st = os.stat(path)
    _KNOWN[(os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)] = digest
    return {"file": shard_name(k), "count": n, "sha256": digest, "inputs": [start, stop]}


class _ShardFile(NamedTuple):
    k: int
    path: str
    count: int
    inputs: tuple[int, int]
    run: RunInfo
    skipped: list
    header: _Header


def _parse_shard(path: str) -> _ShardFile:
    """Read and check one shard's header; ValueError with the reason when it is not valid."""
    h = _read_header(path)
    md = h.metadata
    if md.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} shard (format {md.get('format')!r})")
    try:
        version = int(md.get("format_version", ""))
    except ValueError:
        raise ValueError("format_version is missing") from None
    if version > FORMAT_VERSION:
        raise ValueError(f"written by a newer regvq (format_version {version} > {FORMAT_VERSION}); upgrade regvq")
    try:
        k, count = int(md["shard_index"]), int(md["count"])
        start, stop = (int(x) for x in md["inputs"].split(":"))
        run = RunInfo.from_dict(json.loads(md["run"]))
        skipped = json.loads(md["skipped"])
    except (KeyError, ValueError, json.JSONDecodeError, RegvqError) as e:
        raise ValueError(f"shard metadata is malformed ({e})") from None
    shape = h.tensors.get("tokens", {}).get("shape")
    if shape != [count, *run.grid]:
        raise ValueError(f"tokens shape {shape} does not match count {count} and grid {list(run.grid)}")
    shapes = {"index": [count], "keys_blob": None, "keys_offsets": [count + 1]}  # None: any 1-d length
    if run.labels:
        shapes["labels"] = [count]
    if run.captions:
        shapes.update(captions_blob=None, captions_offsets=[count + 1])
    if run.segmap_size is not None:
        shapes["segmaps"] = [count, *run.segmap_size]
    for name, want in shapes.items():
        if name not in h.tensors:
            raise ValueError(f"tensor {name} is missing")
        got = h.tensors[name]["shape"]
        if (want is None and len(got) != 1) or (want is not None and got != want):
            raise ValueError(f"tensor {name} has shape {got}, expected {want or '[n]'}")
    if count + len(skipped) != stop - start:
        raise ValueError(f"{count} rows + {len(skipped)} skipped != {stop - start} inputs")
    return _ShardFile(k, path, count, (start, stop), run, skipped, h)


def _has_shard_files(folder: str) -> bool:
    """Whether `folder` holds any file named like a shard (valid or not)."""
    try:
        return any(_SHARD_RE.match(name) for name in os.listdir(folder))
    except OSError:
        return False


def _scan(out_dir: str) -> tuple[dict[int, _ShardFile], dict[str, str]]:
    """Valid shard files by index, and {file name: problem} for shard files that are not."""
    good: dict[int, _ShardFile] = {}
    bad: dict[str, str] = {}
    try:
        names = sorted(os.listdir(out_dir))
    except FileNotFoundError:
        return good, bad
    except OSError as e:
        raise RegvqError(f"cannot list {out_dir}: {e.strerror or e}") from None
    for name in names:
        m = _SHARD_RE.match(name)
        if not m:
            continue
        try:
            s = _parse_shard(os.path.join(out_dir, name))
        except (OSError, ValueError) as e:
            bad[name] = str(e)
            continue
        if s.k != int(m.group(1)):
            bad[name] = f"its metadata says shard {s.k}"
            continue
        good[s.k] = s
    return good, bad


def _run_difference(a: RunInfo, b: RunInfo) -> str:
    da, db = a.to_dict(), b.to_dict()
    diff = []
    for f in da:
        if isinstance(da[f], dict) and isinstance(db[f], dict):  # name the keys: e.g. preprocessing.jpeg_decoder
            x, y = da[f], db[f]
            diff += [(f"{f}.{k}", x.get(k), y.get(k)) for k in {**x, **y} if x.get(k) != y.get(k)]
        elif da[f] != db[f]:
            diff.append((f, da[f], db[f]))
    return "; ".join(f"{f} {_shown(u)} in the folder, {_shown(v)} now" for f, u, v in diff)


def _shown(value, limit: int = 40) -> str:
    """A value as JSON for a message, long ones (a hash, a list) cut with an ellipsis inside their quotes."""
    text = json.dumps(value)
    if len(text) <= limit:
        return text
    return text[:limit - 4] + ('..."' if text.startswith('"') else "...")


def completed_shards(out_dir: str | os.PathLike, run: RunInfo | None = None) -> list[int]:
    """Indices of the shards already complete in out_dir (a rerun skips them).

    With `run`, shards written with other settings (tokenizer, size, input listing...) are a
    RegvqError: resuming into them would mix two runs. Unreadable shard files are not
    complete (they are rewritten).
    """
    good, _ = _scan(os.fspath(out_dir))
    if run is not None:
        _refuse_other_runs(out_dir, good, run)
    return sorted(good)


def resume_run(out_dir: str | os.PathLike, run: RunInfo) -> tuple[RunInfo, list[int]]:
    """`completed_shards(out_dir, run)` for an encode that goes on with the folder's shards, and the run it goes on
    as: the same tokenizer weights (sha256) named another way (a shipped name and its folder, a moved folder) take
    the name the shards have, so that the new shards match them."""
    good, _ = _scan(os.fspath(out_dir))
    named = next((s.run.tokenizer_id for s in good.values() if s.run.tokenizer_sha256 == run.tokenizer_sha256), None)
    if named is not None:
        run = dataclasses.replace(run, tokenizer_id=named)
    _refuse_other_runs(out_dir, good, run)
    return run, sorted(good)


def _refuse_other_runs(out_dir, good: dict, run: RunInfo) -> None:
    for s in good.values():
        if s.run != run:
            raise RegvqError(
                f"{out_dir} holds shards from a different run ({_run_difference(s.run, run)}); "
                "choose another -o or delete them"
            )


def changed_shards(out_dir: str | os.PathLike) -> list[str]:
    """The shard files of a finished run whose bytes differ from its manifest's sha256 ([] for a folder without a
    readable manifest: an unfinished run, whose manifest is written at the end).

    Without this check a changed shard (damaged on disk, edited) still parsed as complete, and a rerun's manifest
    took its new sha256, so that `regvq shards verify` passed it. Only shard file names are looked at, whatever a
    hand-edited manifest lists; those are checked to stay inside the folder (`read_manifest`)."""
    out_dir = os.fspath(out_dir)
    if not os.path.isfile(os.path.join(out_dir, MANIFEST)):
        return []
    try:
        manifest = read_manifest(out_dir)
    except RegvqError:
        return []
    changed = []
    for entry in manifest["shards"]:
        if not _SHARD_RE.match(entry["file"]):
            continue
        try:
            if _file_sha256(os.path.join(out_dir, entry["file"])) != entry["sha256"]:
                changed.append(entry["file"])
        except FileNotFoundError:  # missing: the rerun writes it anyway
            continue
    return changed


def drop_shards(out_dir: str | os.PathLike, names: Sequence[str]) -> None:
    """Remove these shards (`changed_shards`, to be encoded again) and the manifest, which no longer describes the
    folder: the run writes a new one once every shard is there."""
    out_dir = os.fspath(out_dir)
    for name in [*names, MANIFEST] if names else []:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(out_dir, name))
    if names:
        _fsync_dir(out_dir)


def write_manifest(out_dir: str | os.PathLike, run: RunInfo | None = None) -> dict:
    """Build manifest.json from the shard files present; return the manifest.

    Every planned shard must be present and agree on the run settings (`run` when given,
    else the settings stored in the shards). Deterministic: the same shards give the same
    bytes. Raises RegvqError naming missing or conflicting shards.
    """
    from regvq_cli import __version__

    out_dir = os.fspath(out_dir)
    good, bad = _scan(out_dir)
    if bad:
        name, why = next(iter(bad.items()))
        raise RegvqError(f"{out_dir}/{name} is not a valid shard ({why}); delete it and rerun to rewrite it")
    if run is None:
        if not good:
            raise RegvqError(f"no shards in {out_dir}; run `regvq encode` first")
        run = good[min(good)].run
    for s in good.values():
        if s.run != run:
            raise RegvqError(
                f"{s.path} was written by a different run ({_run_difference(s.run, run)}); "
                "remove it or encode into a fresh folder"
            )
    plan = plan_shards(run.num_inputs, run.shard_size)
    missing = [shard_name(k) for k, _, _ in plan if k not in good]
    if missing:
        listed = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise RegvqError(
            f"{len(missing)} of {len(plan)} shards missing in {out_dir}: {listed}; "
            "rerun the encode with the same settings to finish them"
        )
    extra = [shard_name(k) for k in good if k >= len(plan)]
    if extra:
        raise RegvqError(f"{out_dir} has shards beyond the plan of {len(plan)}: {', '.join(extra[:5])}; remove them")

    shards, skipped, row = [], [], 0
    for k, start, stop in plan:
        s = good[k]
        if s.inputs != (start, stop):
            raise RegvqError(f"{s.path} covers inputs {s.inputs}, the plan says ({start}, {stop}); remove it")
        shards.append(
            {"file": shard_name(k), "count": s.count, "sha256": _file_sha256(s.path), "first_index": row, "inputs": [start, stop]}
        )
        skipped.extend({"key": x["key"], "reason": x["reason"]} for x in s.skipped)
        row += s.count
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "regvq_version": __version__,
        "tokenizer": {"id": run.tokenizer_id, "sha256": run.tokenizer_sha256},
        "grid": list(run.grid),
        "codebook_size": run.codebook_size,
        "dtype": run.dtype,
        "preprocessing": run.preprocessing,
        "label_names": None if run.label_names is None else list(run.label_names),
        "fields": run.fields,
        "segmap_size": None if run.segmap_size is None else list(run.segmap_size),
        "num_inputs": run.num_inputs,
        "inputs_sha256": run.inputs_sha256,
        "shard_size": run.shard_size,
        "count": row,
        "num_skipped": len(skipped),
        "shards": shards,
        "skipped": skipped,
        "run": run.to_dict(),
    }
    text = json.dumps(manifest, sort_keys=True, indent=1, ensure_ascii=True) + "\n"
    _atomic_write(os.path.join(out_dir, MANIFEST), [text.encode()])
    return manifest


def merge(out_dir: str | os.PathLike) -> dict:
    """`regvq shards merge DIR`: write the manifest from the shards alone."""
    return write_manifest(out_dir)


# ----------------------------------------------------------------------------- reading


_REQUIRED = {
    "format": str, "format_version": int, "tokenizer": dict, "grid": list, "codebook_size": int,
    "dtype": str, "preprocessing": dict, "fields": list, "num_inputs": int, "shard_size": int,
    "count": int, "shards": list, "skipped": list,
}  # fmt: skip


def _safe_file_name(name: object) -> bool:
    return isinstance(name, str) and bool(name) and "/" not in name and "\\" not in name and name not in (".", "..") and "\0" not in name


def read_manifest(path: str | os.PathLike) -> dict:
    """Load and check a token folder's manifest (path: the folder or its manifest.json)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, MANIFEST)
    folder = os.path.dirname(path) or "."
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
    except FileNotFoundError:
        if not _has_shard_files(folder):
            raise RegvqError(f"{folder} is not a token folder: it has no {MANIFEST} and no shards (`regvq encode` "
                             "writes token folders)") from None
        raise RegvqError(f"no {MANIFEST} in {folder}; if its shards are complete run `regvq shards merge {folder}`") from None
    except OSError as e:
        raise RegvqError(f"cannot read {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RegvqError(f"{path} is not valid JSON ({e}); rebuild it with `regvq shards merge {folder}`") from None
    if not isinstance(m, dict):
        raise RegvqError(f"{path} is not a JSON object; rebuild it with `regvq shards merge {folder}`")
    if m.get("format") != FORMAT:
        raise RegvqError(f"{path} is not a regvq token folder (format {m.get('format')!r}, expected {FORMAT!r})")
    for name, typ in _REQUIRED.items():
        if name not in m:
            raise RegvqError(f"{path} lacks the field {name!r}; rebuild it with `regvq shards merge {folder}`")
        if not isinstance(m[name], typ) or (typ is int and isinstance(m[name], bool)):
            raise RegvqError(f"{path}: field {name!r} should be {typ.__name__}, got {type(m[name]).__name__}")
    if m["format_version"] > FORMAT_VERSION:
        raise RegvqError(f"{path} was written by a newer regvq (format_version {m['format_version']} > {FORMAT_VERSION}); upgrade regvq")
    if len(m["grid"]) != 2 or not all(isinstance(g, int) and g > 0 for g in m["grid"]):
        raise RegvqError(f"{path}: grid should be [h, w], got {m['grid']}")
    if m["dtype"] not in ("uint16", "int32"):
        raise RegvqError(f"{path}: dtype should be uint16 or int32, got {m['dtype']!r}")
    for i, s in enumerate(m["shards"]):
        if not isinstance(s, dict) or not _safe_file_name(s.get("file")):
            raise RegvqError(f"{path}: shard entry {i} has no plain file name")
        if not isinstance(s.get("count"), int) or s["count"] < 0 or not isinstance(s.get("sha256"), str):
            raise RegvqError(f"{path}: shard entry {i} ({s['file']}) needs an integer count and a sha256")
    return m


def _checked_shard(path: str, hint: str = "") -> _ShardFile:
    """_parse_shard, with unreadable or malformed files as one-line RegvqErrors."""
    try:
        return _parse_shard(path)
    except OSError as e:
        raise RegvqError(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        if os.path.basename(path) == MANIFEST:
            raise RegvqError(f"{path} is a token folder's manifest, not a shard: pass the folder "
                             f"({os.path.dirname(path) or '.'})") from None
        raise RegvqError(f"{path} is not a valid regvq shard ({e}){hint}") from None


def read_shard(path: str | os.PathLike) -> dict:
    """One shard file: {"tensors": memory-mapped arrays, "keys", "captions" (or None),
    "skipped", "run" (RunInfo), "shard_index", "inputs"}."""
    path = os.fspath(path)
    s = _checked_shard(path)
    t = _mmap_tensors(path, s.header)
    caps = decode_strings(t["captions_blob"], t["captions_offsets"]) if "captions_blob" in t else None
    return {
        "tensors": t,
        "keys": decode_strings(t["keys_blob"], t["keys_offsets"]),
        "captions": caps,
        "skipped": s.skipped,
        "run": s.run,
        "shard_index": s.k,
        "inputs": s.inputs,
    }


class ShardReader(Sequence):
    """Rows of a token folder (or of a single shard file), memory-mapped.

    reader[i] -> {"tokens": int64 [h, w], "key": str, "index": int, and "label": int,
    "caption": str, "segmap": [H, W] when the folder has them}. Token ids are checked
    against the codebook size as rows are read. Safe to pickle into DataLoader workers:
    each process maps the files itself.
    """

    def __init__(self, path: str | os.PathLike):
        path = os.fspath(path)
        if os.path.isdir(path):
            self.manifest: dict | None = read_manifest(path)
            self.paths = [os.path.join(path, s["file"]) for s in self.manifest["shards"]]
            counts = [s["count"] for s in self.manifest["shards"]]
            self.grid = tuple(self.manifest["grid"])
            self.codebook_size = int(self.manifest["codebook_size"])
            self.label_names = self.manifest.get("label_names")
            self.fields = list(self.manifest["fields"])
        elif os.path.isfile(path):
            self.manifest = None
            s = read_shard(path)
            self.paths, counts = [path], [len(s["keys"])]
            run: RunInfo = s["run"]
            self.grid, self.codebook_size = run.grid, run.codebook_size
            self.label_names = None if run.label_names is None else list(run.label_names)
            self.fields = run.fields
        else:
            raise RegvqError(f"{path} does not exist; pass a token folder or a shard file")
        self.counts = counts
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._open: dict[int, dict[str, np.ndarray]] = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_open"] = {}  # memory maps are per process
        return state

    def __len__(self) -> int:
        return int(self.starts[-1])

    def shard(self, j: int) -> dict[str, np.ndarray]:
        """Memory-mapped tensors of shard j (the j-th in the manifest)."""
        if j not in self._open:
            path = self.paths[j]
            s = _checked_shard(path, hint="; run `regvq shards verify`")
            if s.count != self.counts[j]:
                raise RegvqError(f"{path} has {s.count} rows, the manifest says {self.counts[j]}; run `regvq shards verify`")
            if tuple(s.run.grid) != self.grid:  # _parse_shard checked the tokens' shape against the shard's grid
                raise RegvqError(f"{path} holds {s.run.grid[0]}x{s.run.grid[1]} token grids, the manifest says "
                                 f"{self.grid[0]}x{self.grid[1]}: the folder is inconsistent; run `regvq shards verify`")
            self._open[j] = _mmap_tensors(path, s.header)
        return self._open[j]

    def locate(self, i: int) -> tuple[int, int]:
        """Global row i -> (shard j, row r within it)."""
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        j = int(np.searchsorted(self.starts, i, side="right")) - 1
        return j, i - int(self.starts[j])

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[x] for x in range(*i.indices(len(self)))]
        j, r = self.locate(i)
        t = self.shard(j)
        tokens = np.asarray(t["tokens"][r], dtype=np.int64)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.codebook_size):
            bad = int(tokens.max() if tokens.max() >= self.codebook_size else tokens.min())
            raise RegvqError(
                f"{self.paths[j]} row {r}: token {bad} outside the codebook of {self.codebook_size}; "
                "the shard is corrupt or from another tokenizer"
            )
        off = t["keys_offsets"]
        row: dict[str, Any] = {
            "tokens": tokens,
            "key": t["keys_blob"][off[r] : off[r + 1]].tobytes().decode("utf-8", "surrogateescape"),
            "index": int(t["index"][r]),
        }
        if "labels" in t:
            row["label"] = int(t["labels"][r])
        if "captions_blob" in t:
            off = t["captions_offsets"]
            row["caption"] = t["captions_blob"][off[r] : off[r + 1]].tobytes().decode("utf-8", "surrogateescape")
        if "segmaps" in t:
            row["segmap"] = np.asarray(t["segmaps"][r])
        return row

    def all_tokens(self) -> np.ndarray:
        """Every row's tokens in one int64 array [N, h, w] (for priors that train from RAM)."""
        out = np.empty((len(self), *self.grid), dtype=np.int64)
        for j in range(len(self.paths)):
            t = self.shard(j)["tokens"]
            if t.size and (t.max() >= self.codebook_size):
                r = int(np.argmax(t.reshape(len(t), -1).max(1) >= self.codebook_size))
                raise RegvqError(f"{self.paths[j]} row {r}: token outside the codebook of {self.codebook_size}")
            out[self.starts[j] : self.starts[j + 1]] = t
        return out


# ----------------------------------------------------------------------------- checking


def verify(out_dir: str | os.PathLike, check_tokens: bool = True) -> list[str]:
    """Problems found in a token folder (empty list: all good).

    Checks every shard's sha256, header, count, grid and dtype against the manifest, token
    ids against the codebook (with check_tokens), and reports shard files the manifest does
    not list and temporary files left by a killed run.
    """
    out_dir = os.fspath(out_dir)
    try:
        m = read_manifest(out_dir)
    except RegvqError as e:
        return [str(e)]
    problems: list[str] = []
    listed = set()
    row = 0
    for entry in m["shards"]:
        name = entry["file"]
        listed.add(name)
        path = os.path.join(out_dir, name)
        if not os.path.isfile(path):
            problems.append(f"{name}: missing")
            row += entry["count"]  # the shards after it are not misplaced: count its rows as the manifest does
            continue
        digest = _file_sha256(path)
        if digest != entry["sha256"]:
            problems.append(f"{name}: sha256 {digest[:12]}... does not match the manifest's {entry['sha256'][:12]}...")
        try:
            s = _parse_shard(path)
        except (OSError, ValueError) as e:
            problems.append(f"{name}: {e}")
            row += entry["count"]
            continue
        if s.count != entry["count"]:
            problems.append(f"{name}: holds {s.count} rows, the manifest says {entry['count']}")
        if entry.get("first_index", row) != row:
            problems.append(f"{name}: first_index {entry['first_index']}, expected {row}")
        row += s.count
        if list(s.run.grid) != m["grid"] or s.run.codebook_size != m["codebook_size"]:
            problems.append(f"{name}: grid/codebook {list(s.run.grid)}/{s.run.codebook_size} differ from the manifest")
        t = _mmap_tensors(path, s.header)
        if t["tokens"].dtype.name != m["dtype"]:
            problems.append(f"{name}: tokens are {t['tokens'].dtype.name}, the manifest says {m['dtype']}")
        off = t["keys_offsets"]
        if len(off) != s.count + 1 or off[0] != 0 or off[-1] != len(t["keys_blob"]) or (np.diff(off) < 0).any():
            problems.append(f"{name}: key offsets are inconsistent")
        if check_tokens and s.count:
            flat = t["tokens"].reshape(s.count, -1)
            bad = np.nonzero(flat.max(1) >= m["codebook_size"])[0]
            if len(bad):
                problems.append(f"{name}: row {int(bad[0])} has token ids >= codebook size {m['codebook_size']}")
    listed_rows = sum(e["count"] for e in m["shards"])
    if listed_rows != m["count"]:
        problems.append(f"manifest count {m['count']} != {listed_rows}, the sum of its shard counts")
    elif row != m["count"]:
        problems.append(f"manifest count {m['count']} != {row} rows in the shards")
    for name in sorted(os.listdir(out_dir)):
        if _SHARD_RE.match(name) and name not in listed:
            problems.append(f"{name}: not listed in the manifest")
        elif _TMP_RE.match(name):
            problems.append(f"{name}: temporary file left by a killed run (safe to delete)")
    return problems


def info(path: str | os.PathLike, top: int = 10) -> dict:
    """Summary of a token folder or shard: counts, grid, codebook, tokenizer and code usage.

    Code usage over all rows: used_codes, usage (fraction of the codebook), perplexity
    (exp of the entropy of the code histogram; N for a perfectly uniform use of N codes)
    and the `top` most frequent codes as [code, count].
    """
    reader = ShardReader(path)
    n_codes = reader.codebook_size
    hist = np.zeros(n_codes, dtype=np.int64)
    for j in range(len(reader.paths)):
        t = reader.shard(j)["tokens"]
        for a in range(0, len(t), 4096):  # chunks keep memory flat on big shards
            hist += np.bincount(np.asarray(t[a : a + 4096]).ravel().astype(np.int64), minlength=n_codes)[:n_codes]
    total = int(hist.sum())
    p = hist[hist > 0] / max(total, 1)
    entropy = float(-(p * np.log(p)).sum()) if total else 0.0
    order = np.argsort(-hist, kind="stable")[:top]
    m = reader.manifest
    out = {
        "rows": len(reader),
        "shards": len(reader.paths),
        "grid": list(reader.grid),
        "codebook_size": n_codes,
        "fields": reader.fields,
        "num_labels": None if reader.label_names is None else len(reader.label_names),
        "label_names": None if reader.label_names is None else list(reader.label_names),
        "used_codes": int((hist > 0).sum()),
        "usage": float((hist > 0).sum() / n_codes),
        "perplexity": float(math.exp(entropy)),
        "top_codes": [[int(c), int(hist[c])] for c in order if hist[c] > 0],
    }
    if m is not None:
        out.update(tokenizer=m["tokenizer"], skipped=len(m["skipped"]), num_inputs=m["num_inputs"], dtype=m["dtype"],
                   preprocessing=m.get("preprocessing"))
    return out


# ----------------------------------------------------------------------------- output paths


def safe_output_path(out_dir: str | os.PathLike, key: str, suffix: str | None = None) -> str:
    """A path under out_dir for the output of `key`, never outside it (see OutputFolder.path)."""
    return OutputFolder(out_dir).path(key, suffix)


class OutputFolder:
    """Paths under one output folder for keys that may come from strangers' shards.

    A key is split on "/" and "\\", empty, "." parts and NUL/control characters are dropped, ".." becomes "__", a
    leading drive ("C:") or "/" is ignored, and a part longer than 255 bytes is shortened with a hash. With `suffix`
    (e.g. ".png") the extension is replaced. The result is checked to lie inside the folder after resolving symlinks
    that already exist. Each folder a path lands in is resolved once and remembered (an existing symlink at the file
    itself is resolved every time): `regvq decode` names millions of files, and resolving every path component by
    component took more of its main thread than the decoder did."""

    def __init__(self, out_dir: str | os.PathLike):
        self.root = os.path.abspath(os.fspath(out_dir))
        self.real_root = os.path.realpath(self.root)
        self.inside = self.real_root.rstrip(os.sep) + os.sep  # what every resolved path starts with
        self.real_dirs = {self.root: self.real_root}
        self.made: set[str] = set()

    def path(self, key: str, suffix: str | None = None) -> str:
        path = os.path.join(self.root, *self._parts(key, suffix))
        folder = os.path.dirname(path)
        if folder not in self.real_dirs:
            self.real_dirs[folder] = os.path.realpath(folder)
        real = os.path.realpath(path) if os.path.islink(path) else os.path.join(self.real_dirs[folder],
                                                                                os.path.basename(path))
        if not real.startswith(self.inside):
            raise RegvqError(f"output for key {key!r} would land outside {self.root} (through a symlink); "
                             "remove the link")
        return path

    def make_parent(self, path: str) -> None:
        """Create the folder that `path` (from `self.path`) lands in, once."""
        parent = os.path.dirname(path)
        if parent not in self.made:
            os.makedirs(parent, exist_ok=True)
            self.made.add(parent)

    @staticmethod
    def _parts(key: str, suffix: str | None) -> list[str]:
        parts = []
        for part in re.split(r"[/\\]+", key):
            if not part.isprintable():
                part = "".join(c for c in part if c.isprintable())
            if part in ("", "."):
                continue
            if part == "..":
                part = "__"
            if len(parts) == 0 and re.fullmatch(r"[A-Za-z]:", part):
                continue  # a Windows drive
            parts.append(part)
        if not parts:
            parts = ["_"]
        if suffix is not None:
            stem = posixpath.splitext(parts[-1])[0] or parts[-1]
            parts[-1] = stem + suffix
        for i, part in enumerate(parts):
            raw = part.encode("utf-8", "surrogateescape")
            if len(raw) > 255:
                tail = posixpath.splitext(part)[1] if i == len(parts) - 1 else ""
                tail_raw = tail.encode("utf-8", "surrogateescape")[:32]
                short = raw[: 255 - 9 - len(tail_raw)].decode("utf-8", "ignore")
                parts[i] = f"{short}-{hashlib.sha256(raw).hexdigest()[:8]}{tail_raw.decode('utf-8', 'ignore')}"
        return parts


# ----------------------------------------------------------------------------- locking


def _lock_holder(path: str) -> int | None:
    """pid holding a flock on `path`, from /proc/locks (Linux); None when unknown."""
    try:
        ino = os.stat(path).st_ino
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 12345 00:2a:1234567 0 EOF"; waiters carry a "->" field
        if len(parts) >= 6 and parts[1] == "FLOCK":
            try:
                if int(parts[5].rsplit(":", 1)[1]) == ino:
                    return int(parts[4])
            except (ValueError, IndexError):
                continue
    return None


# descriptors of the output locks this process holds; a forked child (a loader worker) closes its copies of them
_LOCK_FDS: set[int] = set()


def close_inherited_locks() -> None:
    """In a forked child: close its copies of the parent's lock descriptors. A lock lasts while any copy is open,
    so the loader workers of a process killed with SIGKILL held its folder for the seconds they took to notice.
    Closed, not unlocked: unlocking a copy would unlock the parent's lock too."""
    while _LOCK_FDS:
        try:
            os.close(_LOCK_FDS.pop())
        except OSError:
            pass


class OutputLock:
    """Keep two regvq processes from writing one output folder.

    A run that writes every shard takes an exclusive `flock` on out_dir/.lock. A worker of a
    split run (worker=(rank, world)) takes a shared lock on .lock plus an exclusive one on
    .lock-<rank>-of-<world>: workers of one job coexist, a second copy of the same worker or
    a whole run alongside them is refused. Locks are non-blocking and die with the process.
    On acquiring, temporary files of killed runs that belong to this holder are removed.
    Lock files stay empty (the folder's content stays deterministic).
    """

    def __init__(self, out_dir: str | os.PathLike, worker: tuple[int, int] | None = None):
        self.out_dir = os.fspath(out_dir)
        self.worker = worker
        self._fds: list[int] = []

    def _take(self, name: str, exclusive: bool) -> None:
        path = os.path.join(self.out_dir, name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise RegvqError(f"cannot lock {path}: {e.strerror or e}") from None
            pid = _lock_holder(path)
            who = f" (pid {pid})" if pid else ""
            self.release()
            raise RegvqError(
                f"another regvq process is writing to {self.out_dir}{who}; wait for it or choose another -o"
            ) from None
        self._fds.append(fd)
        _LOCK_FDS.add(fd)

    def acquire(self) -> OutputLock:
        try:
            os.makedirs(self.out_dir, exist_ok=True)
        except OSError as e:
            raise RegvqError(f"cannot create {self.out_dir}: {e.strerror or e}") from None
        if self.worker is None:
            self._take(".lock", exclusive=True)
        else:
            rank, world = self.worker
            if not 0 <= rank < world:
                raise RegvqError(f"worker id {rank} must be in 0..{world - 1}")
            self._take(".lock", exclusive=False)
            self._take(f".lock-{rank}-of-{world}", exclusive=True)
            self._refuse_other_splits(world)
        self._remove_stale_temp()
        return self

    def _refuse_other_splits(self, world: int) -> None:
        """A worker of a split into `world` alongside a live worker of a split into another count would encode the
        same shards, and remove the other's temporary files as stale: refused."""
        for name, other in self._held_worker_locks():
            if other != world:
                pid = _lock_holder(os.path.join(self.out_dir, name))
                self.release()
                raise RegvqError(
                    f"workers of a split into {other} are writing to {self.out_dir}"
                    f"{f' (pid {pid})' if pid else ''}, not {world}: give every worker the same --num-workers, "
                    "or wait for them"
                )

    def _held_worker_locks(self) -> list[tuple[str, int]]:
        """(name, split count) of the workers' lock files that another live process holds."""
        held = []
        mine = f".lock-{self.worker[0]}-of-{self.worker[1]}" if self.worker else None
        for name in os.listdir(self.out_dir):
            m = _WORKER_LOCK_RE.match(name)
            if not m or name == mine:
                continue
            try:
                fd = os.open(os.path.join(self.out_dir, name), os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # taken: nobody holds it (a finished worker's file)
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    held.append((name, int(m.group(2))))
            finally:
                os.close(fd)
        return held

    def _remove_stale_temp(self) -> None:
        """Temporary files of killed runs: a worker removes its own shards', and a manifest's (which whichever
        worker finishes last writes) when no other worker is running."""
        others_running = None
        for name in os.listdir(self.out_dir):
            m = _TMP_RE.match(name)
            if not m:
                continue
            if self.worker is not None:
                rank, world = self.worker
                k = m.group(1)
                if k is not None and int(k) % world != rank:
                    continue
                if k is None:
                    if others_running is None:
                        others_running = bool(self._held_worker_locks())
                    if others_running:
                        continue
            try:
                os.unlink(os.path.join(self.out_dir, name))
            except OSError:
                pass

    def release(self) -> None:
        while self._fds:
            fd = self._fds.pop()
            _LOCK_FDS.discard(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
