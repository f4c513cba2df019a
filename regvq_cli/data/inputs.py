"""List the images to encode, in a deterministic order, with their labels, captions and maps.

Order and keys
    Folders are walked recursively; the images come out sorted by their path relative to the
    folder (plain string order of the POSIX path, so "a.jpg" < "a/b.jpg" < "a0.jpg"). Inputs
    are taken in the order given, then the `files_from` list in its own order. A file's key is
    its path relative to its folder; a file named directly (argument or `files_from` line) has
    the path as written, normalised ("./x//y.jpg" -> "x/y.jpg"). When more than one input is
    given, folder keys are prefixed with the folder as written ("imgs/cat/1.jpg"), so keys
    from different folders cannot collide; a key listed twice is an error.
    Inside folders only files with an image extension (`IMAGE_EXTS`, any case) are taken,
    names starting with "." are skipped, and symlinks are followed (a symlink loop is visited
    once). Named files are taken whatever their extension and are not checked here: a missing
    one becomes a skipped input when it is decoded.

Labels (Hugging Face imagefolder conventions)
    1. A `metadata.jsonl` or `metadata.csv` in any folder of an input tree gives per-file
       data: `file_name` (relative to that metadata file's folder), a caption from the `text`
       or `caption` column, and a `label` column (all integers: ids as they are; otherwise
       names, sorted, give ids 0..K-1). Metadata wins: when any metadata file of the listing
       has a `label` column, folder names are not used as labels.
    2. Otherwise class folders: a folder input whose images all sit exactly one level down
       (root/<class>/<file>) in at least two class folders is labelled by folder name; the
       union of class names over all such inputs, sorted, gives ids 0..K-1.
    Images without a label get -1; without a caption, "". Named files (arguments and
    `files_from`) carry no labels or captions.

Segmentation maps
    With `maps_dir`, the map of image "<rel>/<stem>.<ext>" is "<maps_dir>/<rel>/<stem>.png",
    where <rel> is the image's folder relative to its input folder (a parallel tree). A named
    file's <rel> is its folder as written, made relative: "/data/a/x.jpg" and "../a/x.jpg" both
    look for "<maps_dir>/data/a/x.png" and "<maps_dir>/a/x.png" (no part leaves `maps_dir`). Maps
    are not checked here; a missing one is reported when it is loaded (`load_segmap`).

Memory: per image a few bytes of UTF-8 path in one shared buffer, an offset and an input
number, so a listing of 10^8 files takes a few GB, not tens.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import posixpath
import sys
from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple, TextIO

import numpy as np

from regvq_cli.errors import RegvqError

__all__ = ["IMAGE_EXTS", "InputItem", "Inputs", "list_inputs", "normalize_key"]

IMAGE_EXTS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .apng .webp .bmp .dib .gif .tif .tiff .ppm .pgm .pbm .pnm .tga".split()
)
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
CAPTION_COLUMNS = ("text", "caption")


class InputItem(NamedTuple):
    key: str  # unique, POSIX style; what shards store and decode names outputs after
    path: str  # absolute path to read
    label: int  # -1 when the input has no label
    caption: str  # "" when the input has no caption
    map_path: str | None  # segmentation map path when `maps_dir` was given


class _Strings:
    """An append-only list of strings kept as one UTF-8 buffer plus offsets (no per-item objects)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._off = array("q", [0])

    def append(self, s: str) -> None:
        # surrogateescape: file names that are not valid UTF-8 round-trip byte for byte.
        self._buf += s.encode("utf-8", "surrogateescape")
        self._off.append(len(self._buf))

    def __len__(self) -> int:
        return len(self._off) - 1

    def __getitem__(self, i: int) -> str:
        return self._buf[self._off[i] : self._off[i + 1]].decode("utf-8", "surrogateescape")

    def __iter__(self) -> Iterator[str]:
        for i in range(len(self)):
            yield self[i]

    def truncate(self, n: int) -> None:
        """Keep the first n strings."""
        if n < len(self):
            del self._buf[self._off[n]:]
            del self._off[n + 1:]


def normalize_key(path: str) -> str:
    """A path as written -> POSIX, no "." or empty parts ("./a//b.jpg" -> "a/b.jpg")."""
    p = posixpath.normpath(path.replace(os.sep, "/"))
    return "" if p == "." else p


class Inputs(Sequence):
    """The listing: a read-only sequence of InputItem, built on demand from compact storage.

    Attributes: `label_names` (list of str, or None when labels are integer ids or absent),
    `has_labels`, `has_captions`, `maps_dir`, `roots` (absolute folder of each input, "" for a
    named file), and, when some folder has metadata, `missing_metadata` (folder images
    without a metadata row) and `unused_metadata` (metadata rows naming no listed image).
    """

    def __init__(self) -> None:
        self.roots: list[str] = []
        self._prefix: list[str] = []  # key prefix per input
        self._rel = _Strings()  # path relative to the input's root (the whole path for named files)
        self._root = array("i")  # input number of each image
        self.labels: np.ndarray | None = None  # int64 [n], -1 = none
        self.label_names: list[str] | None = None
        self._captions: _Strings | None = None
        self.maps_dir: str | None = None
        self.missing_metadata = 0
        self.unused_metadata = 0
        self.cwd = os.getcwd()

    def __len__(self) -> int:
        return len(self._rel)

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    @property
    def has_captions(self) -> bool:
        return self._captions is not None

    def key(self, i: int) -> str:
        return self._prefix[self._root[i]] + self._rel[i]

    def path(self, i: int) -> str:
        # Named files resolve against the working folder at listing time, not at call time.
        root = self.roots[self._root[i]] or self.cwd
        return os.path.normpath(os.path.join(root, self._rel[i]))

    def label(self, i: int) -> int:
        return -1 if self.labels is None else int(self.labels[i])

    def caption(self, i: int) -> str:
        return "" if self._captions is None else self._captions[i]

    def map_path(self, i: int) -> str | None:
        if self.maps_dir is None:
            return None
        # a named file's path as written may be absolute or climb out ("../x.jpg"): its map stays under maps_dir
        rel = "/".join(p for p in normalize_key(self._rel[i]).split("/") if p not in ("", ".", ".."))
        return os.path.join(self.maps_dir, posixpath.splitext(rel)[0] + ".png")

    def keys(self) -> Iterator[str]:
        for i in range(len(self)):
            yield self.key(i)

    def truncate(self, n: int) -> None:
        """Keep the first n inputs of the listing (labels, captions and class names as they were)."""
        if n >= len(self):
            return
        self._rel.truncate(n)
        del self._root[n:]
        if self.labels is not None:
            self.labels = self.labels[:n]
        if self._captions is not None:
            self._captions.truncate(n)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(i)
        return InputItem(self.key(i), self.path(i), self.label(i), self.caption(i), self.map_path(i))


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symlinks; d_type answers it without a stat
    except OSError:
        return False


def _walk(root: str, exts: frozenset[str], on_metadata) -> Iterator[str]:
    """Yield image paths relative to root (POSIX), in sorted order, iteratively.

    A folder is read once and kept, while it is walked, as its sorted names alone: images by extension, and
    subfolders as "name/" (so the walk order equals the order of the full relative paths): about 50 bytes a
    name while the folder is walked, where os.DirEntry objects took about 240 (measured on a folder of 200,000).
    """
    seen: set[tuple[int, int]] = set()
    st = os.stat(root)
    seen.add((st.st_dev, st.st_ino))
    stack: list[tuple[str, str, Iterator[str]]] = []  # (folder path, its relative path, its remaining names)

    def enter(abs_dir: str, rel_dir: str) -> None:
        names, meta = [], []
        try:
            with os.scandir(abs_dir) as it:
                for e in it:
                    name = e.name
                    if name.startswith("."):
                        continue
                    if name in METADATA_FILES:
                        meta.append(name)
                    if _is_dir(e):
                        names.append(name + "/")
                    elif os.path.splitext(name)[1].lower() in exts:
                        names.append(name)
        except OSError as e:
            raise RegvqError(f"cannot list folder {abs_dir}: {e.strerror or e}") from None
        if len(meta) > 1:
            raise RegvqError(f"{abs_dir} has both metadata.jsonl and metadata.csv; keep one")
        if meta:
            on_metadata(os.path.join(abs_dir, meta[0]), rel_dir)
        names.sort()
        stack.append((abs_dir, rel_dir, iter(names)))

    enter(root, "")
    while stack:
        abs_dir, rel_dir, it = stack[-1]
        name = next(it, None)
        if name is None:
            stack.pop()
            continue
        if not name.endswith("/"):
            yield rel_dir + name
            continue
        path = os.path.join(abs_dir, name[:-1])
        if os.path.islink(path):  # only symlinks can close a loop; stat just those
            try:
                st = os.stat(path)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
        enter(path, rel_dir + name)


def _read_metadata(path: str) -> Iterator[dict]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            if path.endswith(".csv"):
                reader = csv.DictReader(f)
                for line, row in enumerate(reader, 2):
                    yield _check_row(row, path, line)
            else:
                for line, text in enumerate(f, 1):
                    if not text.strip():
                        continue
                    try:
                        row = json.loads(text)
                    except json.JSONDecodeError as e:
                        raise RegvqError(f"{path} line {line} is not valid JSON ({e.msg}); fix or remove it") from None
                    yield _check_row(row, path, line)
    except OSError as e:
        raise RegvqError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise RegvqError(f"{path} is not UTF-8 text; re-save it as UTF-8") from None


def _check_row(row, path: str, line: int) -> dict:
    if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
        raise RegvqError(f"{path} line {line} has no file_name; every row needs one")
    return row


_PATH_MAX = 4096  # Linux's longest path, in bytes


def _read_files_from(files_from, stdin: TextIO | None) -> Iterable[str]:
    if files_from == "-":
        stream = stdin if stdin is not None else sys.stdin
    elif isinstance(files_from, (str, os.PathLike)):
        try:
            stream = open(files_from, encoding="utf-8", errors="surrogateescape", newline="")
        except OSError as e:
            raise RegvqError(f"cannot read --files-from {files_from}: {e.strerror or e}") from None
    else:
        stream = files_from
    try:
        lines = iter(stream)
        # NUL-separated or not, by the list's first path: read up to a NUL or past the longest path there can be (a
        # first path may hold newlines, so the first line alone does not tell)
        head, size = [], 0
        for line in lines:
            head.append(line)
            size += len(line)
            if "\0" in line or size > _PATH_MAX:
                break
        if head:
            head[0] = head[0].removeprefix("\ufeff")  # the byte order mark of a list saved as "UTF-8 with BOM"
        if head and "\0" in head[-1]:  # the reading stopped at the first NUL
            yield from _nul_separated("".join(head), lines)
            return
        for n, line in enumerate(itertools.chain(head, lines)):
            if "\0" in line:
                raise RegvqError(f"--files-from line {n + 1} holds a NUL byte, the lines before it none: separate "
                                 "the paths by newlines or by NUL bytes (find -print0), not both")
            line = line.rstrip()  # trailing spaces, tabs, \r\n
            if line:
                yield line
    finally:
        if stream is not files_from and stream is not stdin and stream is not sys.stdin:
            stream.close()


def _nul_separated(head: str, rest: Iterable[str]) -> Iterator[str]:
    """The paths of a list separated by NUL bytes (`find -print0`), whose first line is `head`: every character
    between two NULs belongs to the path, newlines and trailing spaces included."""
    pending = head
    for chunk in itertools.chain([""], rest):
        *paths, pending = (pending + chunk).split("\0")
        yield from (p for p in paths if p)
    last = pending.rstrip("\r\n")  # a path after the last NUL, without the newline that may end the list
    if last:
        yield last


class _Meta(NamedTuple):
    caption: str | None
    label: object  # int, str or None


def list_inputs(
    inputs: Sequence[str | os.PathLike],
    files_from: str | os.PathLike | TextIO | None = None,
    exts: Iterable[str] = IMAGE_EXTS,
    maps_dir: str | os.PathLike | None = None,
    stdin: TextIO | None = None,
) -> Inputs:
    """List images from folders, files and a `files_from` list (see the module docstring).

    inputs     - folders and image files, in the order they are taken
    files_from - a text file of paths (one per line, or each ended by a NUL byte as `find -print0`
                 writes them), "-" for `stdin` (default sys.stdin), or an open text stream
    exts       - extensions taken inside folders (lower case, with the dot)
    maps_dir   - folder of segmentation maps parallel to the input folder(s)

    Raises RegvqError for a missing input, unreadable folder or metadata, a duplicate key,
    or an empty listing.
    """
    exts = frozenset(e.lower() for e in exts)
    out = Inputs()
    if maps_dir is not None:
        if not os.path.isdir(maps_dir):
            raise RegvqError(f"maps folder {maps_dir} does not exist; pass the folder that holds the .png maps")
        out.maps_dir = os.path.abspath(maps_dir)
    several = len(inputs) + (files_from is not None) > 1

    metadata: dict[str, _Meta] = {}  # "<input number>\0<rel path>" -> row data
    label_column = False
    caption_column = False
    folder_classes: list[tuple[int, int, int]] = []  # (input number, first item, stop) labelled by folder

    def add_metadata(root_no: int):
        def on_metadata(path: str, rel_dir: str) -> None:
            nonlocal label_column, caption_column
            for row in _read_metadata(path):
                rel = normalize_key(rel_dir + row["file_name"])
                cap = next((row[c] for c in CAPTION_COLUMNS if c in row), None)
                lab = row.get("label")
                if isinstance(lab, str) and lab.strip() == "":
                    lab = None
                label_column |= lab is not None
                caption_column |= cap is not None
                metadata[f"{root_no}\0{rel}"] = _Meta(None if cap is None else str(cap), lab)

        return on_metadata

    for given in inputs:
        given = os.fspath(given)
        if not os.path.exists(given):
            if given == "-":
                raise RegvqError("input - does not exist: to read the input paths from stdin, pass --files-from -")
            raise RegvqError(f"input {given} does not exist; check the path")
        root_no = len(out.roots)
        if os.path.isdir(given):
            out.roots.append(os.path.abspath(given))
            out._prefix.append(normalize_key(given).rstrip("/") + "/" if several else "")
            first = len(out)
            depth_one, classes = True, set()
            for rel in _walk(given, exts, add_metadata(root_no)):
                out._rel.append(rel)
                out._root.append(root_no)
                parts = rel.split("/")
                if len(parts) == 2:
                    classes.add(parts[0])
                else:
                    depth_one = False
            if depth_one and len(classes) >= 2:
                folder_classes.append((root_no, first, len(out)))
        else:
            out.roots.append("")
            out._prefix.append("")
            out._rel.append(normalize_key(given))
            out._root.append(root_no)

    if files_from is not None:
        root_no = len(out.roots)
        out.roots.append("")
        out._prefix.append("")
        for line in _read_files_from(files_from, stdin):
            out._rel.append(normalize_key(line))
            out._root.append(root_no)

    if len(out) == 0:
        raise RegvqError("no images found in the inputs; check the paths and extensions")
    _check_unique(out)

    if metadata:
        _apply_metadata(out, metadata, label_column, caption_column)
    if folder_classes and not label_column:
        _apply_folder_labels(out, folder_classes)
    return out


def _check_unique(out: Inputs) -> None:
    """Raise on a duplicate key, using 8 bytes per item (hash, sort, then compare strings)."""
    if len(out.roots) == 1 and out.roots[0]:
        return  # one folder: relative paths are unique by construction
    n = len(out)
    hashes = np.fromiter((hash(out.key(i)) for i in range(n)), dtype=np.int64, count=n)
    order = np.argsort(hashes, kind="stable")
    same = np.nonzero(hashes[order][1:] == hashes[order][:-1])[0]
    for j in same:
        a, b = int(order[j]), int(order[j + 1])
        if out.key(a) == out.key(b):
            first = min(a, b)
            raise RegvqError(f"{out.key(first)} is listed twice (overlapping inputs?); list each image once")


def _apply_metadata(out: Inputs, metadata: dict, label_column: bool, caption_column: bool) -> None:
    n = len(out)
    raw_labels: list = [None] * n if label_column else []
    captions = _Strings() if caption_column else None
    used = 0
    for i in range(n):
        root_no = out._root[i]
        row = metadata.get(f"{root_no}\0{out._rel[i]}") if out.roots[root_no] else None
        if row is None:
            if out.roots[root_no]:
                out.missing_metadata += 1
            if captions is not None:
                captions.append("")
            continue
        used += 1
        if captions is not None:
            captions.append(row.caption or "")
        if label_column:
            raw_labels[i] = row.label
    out.unused_metadata = len(metadata) - used
    out._captions = captions
    if label_column:
        present = [v for v in raw_labels if v is not None]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
            out.labels = np.array([-1 if v is None else v for v in raw_labels], dtype=np.int64)
            if (out.labels < -1).any():
                raise RegvqError("metadata label ids must be >= 0; fix the label column")
        else:
            # CSV gives strings; names that are all integers are still ids.
            if all(isinstance(v, str) and v.strip().lstrip("-").isdigit() for v in present):
                out.labels = np.array([-1 if v is None else int(v) for v in raw_labels], dtype=np.int64)
            else:
                names = sorted({str(v) for v in present})
                ids = {name: k for k, name in enumerate(names)}
                out.labels = np.array([-1 if v is None else ids[str(v)] for v in raw_labels], dtype=np.int64)
                out.label_names = names


def _apply_folder_labels(out: Inputs, folder_classes: list[tuple[int, int, int]]) -> None:
    names = sorted({out._rel[i].split("/", 1)[0] for _, a, b in folder_classes for i in range(a, b)})
    ids = {name: k for k, name in enumerate(names)}
    labels = np.full(len(out), -1, dtype=np.int64)
    for _, a, b in folder_classes:
        for i in range(a, b):
            labels[i] = ids[out._rel[i].split("/", 1)[0]]
    out.labels = labels
    out.label_names = names

