"""Input listing: order, keys, files-from, labels from folders and metadata, maps."""

import io
import os

import numpy as np
import pytest

from regvq_cli.data.inputs import list_inputs, normalize_key
from regvq_cli.errors import RegvqError


def touch(root, *rels):
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def keys(inputs):
    return list(inputs.keys())


def test_sorted_walk_equals_path_order(tmp_path):
    touch(tmp_path, "b.jpg", "a.jpg", "a/z.png", "a0.jpg", "A.JPG", "a/b/c.webp", "notes.txt", ".hidden.jpg",
          ".cache/x.jpg", "a.jpg.json")
    got = keys(list_inputs([str(tmp_path)]))
    expected = ["A.JPG", "a.jpg", "a/b/c.webp", "a/z.png", "a0.jpg", "b.jpg"]
    assert got == expected == sorted(expected)
    inputs = list_inputs([str(tmp_path)])
    item = inputs[2]
    assert item.key == "a/b/c.webp" and item.path == str(tmp_path / "a" / "b" / "c.webp")
    assert item.label == -1 and item.caption == "" and item.map_path is None
    assert inputs[-1].key == "b.jpg" and [x.key for x in inputs[1:3]] == expected[1:3]


def test_exts_filter_and_symlink_loop(tmp_path):
    touch(tmp_path, "x/a.jpg", "x/b.gif")
    os.symlink(tmp_path / "x", tmp_path / "x" / "loop")
    got = keys(list_inputs([str(tmp_path / "x")], exts={".jpg"}))
    assert got == ["a.jpg"]


def test_missing_input_is_error(tmp_path):
    with pytest.raises(RegvqError, match="does not exist"):
        list_inputs([str(tmp_path / "nope")])
    with pytest.raises(RegvqError, match="pass --files-from -"):  # `... | regvq encode - -o tokens`
        list_inputs(["-"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(RegvqError, match="no images"):
        list_inputs([str(tmp_path / "empty")])


def test_several_roots_prefixed_and_duplicates(tmp_path, monkeypatch):
    touch(tmp_path, "one/a.jpg", "two/a.jpg", "single.png")
    monkeypatch.chdir(tmp_path)
    inp = list_inputs(["one", "./two/", "single.png"])
    assert keys(inp) == ["one/a.jpg", "two/a.jpg", "single.png"]
    assert inp[2].path == str(tmp_path / "single.png")
    with pytest.raises(RegvqError, match="listed twice"):
        list_inputs(["one", "one/a.jpg"])


def test_files_from_order_blank_lines_crlf(tmp_path, monkeypatch):
    touch(tmp_path, "z.jpg", "d/a.jpg")
    monkeypatch.chdir(tmp_path)
    text = "z.jpg\r\n\r\n./d//a.jpg  \r\n   \nnot-there.png\n"
    inp = list_inputs([], files_from="-", stdin=io.StringIO(text, newline=""))
    assert keys(inp) == ["z.jpg", "d/a.jpg", "not-there.png"]  # order kept, no existence check
    assert inp[1].path == str(tmp_path / "d" / "a.jpg")
    (tmp_path / "list.txt").write_bytes(text.encode())
    assert keys(list_inputs([], files_from=str(tmp_path / "list.txt"))) == keys(inp)
    with pytest.raises(RegvqError, match="listed twice"):
        list_inputs([], files_from=io.StringIO("a.jpg\n./a.jpg\n"))
    abs_inp = list_inputs([], files_from=io.StringIO(str(tmp_path / "z.jpg") + "\n"))
    assert abs_inp[0].path == str(tmp_path / "z.jpg")


def test_normalize_key():
    assert normalize_key("./a//b/../c.jpg") == "a/c.jpg"
    assert normalize_key("/x/y.png") == "/x/y.png"


def test_class_folders(tmp_path):
    touch(tmp_path, "dog/1.jpg", "cat/2.jpg", "cat/1.jpg", "bird/9.png")
    inp = list_inputs([str(tmp_path)])
    assert inp.label_names == ["bird", "cat", "dog"]
    assert keys(inp) == ["bird/9.png", "cat/1.jpg", "cat/2.jpg", "dog/1.jpg"]
    assert inp.labels.tolist() == [0, 1, 1, 2]
    assert inp.labels.dtype == np.int64


def test_no_labels_when_rule_not_met(tmp_path):
    touch(tmp_path / "one", "only/1.jpg", "only/2.jpg")  # a single sub-folder: a container
    assert not list_inputs([str(tmp_path / "one")]).has_labels
    touch(tmp_path / "mixed", "a/1.jpg", "b/2.jpg", "top.jpg")  # not all one level down
    assert not list_inputs([str(tmp_path / "mixed")]).has_labels
    touch(tmp_path / "deep", "a/x/1.jpg", "b/2.jpg")
    assert not list_inputs([str(tmp_path / "deep")]).has_labels


def test_metadata_jsonl_wins_over_folders(tmp_path):
    touch(tmp_path, "dog/1.jpg", "cat/2.jpg", "cat/3.jpg")
    (tmp_path / "metadata.jsonl").write_text(
        '{"file_name": "dog/1.jpg", "text": "a dog", "label": "animal"}\n\n'
        '{"file_name": "cat/2.jpg", "text": "a cat", "label": "pet"}\n'
        '{"file_name": "gone.jpg", "text": "no such file"}\n'
    )
    inp = list_inputs([str(tmp_path)])
    assert inp.label_names == ["animal", "pet"]
    assert keys(inp) == ["cat/2.jpg", "cat/3.jpg", "dog/1.jpg"]
    assert inp.labels.tolist() == [1, -1, 0]
    assert [x.caption for x in inp] == ["a cat", "", "a dog"]
    assert inp.missing_metadata == 1 and inp.unused_metadata == 1


def test_metadata_csv_in_subfolder_with_int_labels(tmp_path):
    touch(tmp_path, "part/a.png", "part/b.png", "c.png")
    (tmp_path / "part" / "metadata.csv").write_text('file_name,caption,label\na.png,"red, round",3\nb.png,blue,0\n')
    inp = list_inputs([str(tmp_path)])
    assert keys(inp) == ["c.png", "part/a.png", "part/b.png"]
    assert inp.labels.tolist() == [-1, 3, 0] and inp.label_names is None
    assert [x.caption for x in inp] == ["", "red, round", "blue"]


def test_captions_only_metadata_keeps_folder_labels(tmp_path):
    touch(tmp_path, "a/1.jpg", "b/2.jpg")
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a/1.jpg", "text": "one"}\n')
    inp = list_inputs([str(tmp_path)])
    assert inp.label_names == ["a", "b"] and inp.labels.tolist() == [0, 1]
    assert [x.caption for x in inp] == ["one", ""]


def test_bad_metadata(tmp_path):
    touch(tmp_path, "a.jpg")
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.jpg"}\n{oops\n')
    with pytest.raises(RegvqError, match="line 2 is not valid JSON"):
        list_inputs([str(tmp_path)])
    (tmp_path / "metadata.jsonl").write_text('{"text": "no file name"}\n')
    with pytest.raises(RegvqError, match="no file_name"):
        list_inputs([str(tmp_path)])
    (tmp_path / "metadata.csv").write_text("file_name\na.jpg\n")
    with pytest.raises(RegvqError, match="keep one"):
        list_inputs([str(tmp_path)])


def test_maps_dir(tmp_path):
    touch(tmp_path / "img", "x/a.jpg", "b.jpeg")
    (tmp_path / "maps").mkdir()
    inp = list_inputs([str(tmp_path / "img")], maps_dir=str(tmp_path / "maps"))
    assert [x.map_path for x in inp] == [str(tmp_path / "maps" / "b.png"), str(tmp_path / "maps" / "x" / "a.png")]
    with pytest.raises(RegvqError, match="maps folder"):
        list_inputs([str(tmp_path / "img")], maps_dir=str(tmp_path / "nomaps"))


def test_a_named_files_map_stays_in_the_maps_folder(tmp_path, monkeypatch):
    """An absolute or climbing path as written still names a map under maps_dir, never the image itself."""
    touch(tmp_path / "img", "x/a.jpg")
    (tmp_path / "maps").mkdir()
    monkeypatch.chdir(tmp_path / "img" / "x")
    absolute = str(tmp_path / "img" / "x" / "a.jpg")
    inp = list_inputs([absolute, "../x/a.jpg", "a.jpg"], maps_dir=str(tmp_path / "maps"))
    maps = [x.map_path for x in inp]
    assert maps[0] == os.path.join(str(tmp_path / "maps"), absolute.lstrip("/")[:-4] + ".png")
    assert maps[1] == str(tmp_path / "maps" / "x" / "a.png") and maps[2] == str(tmp_path / "maps" / "a.png")


def test_non_utf8_name_round_trips(tmp_path):
    name = os.fsdecode(b"caf\xe9.jpg")  # Latin-1 byte, not valid UTF-8
    (tmp_path / name).write_bytes(b"x")
    inp = list_inputs([str(tmp_path)])
    assert inp[0].key == name and os.path.exists(inp[0].path)


def test_named_file_paths_fixed_at_listing_time(tmp_path, monkeypatch):
    touch(tmp_path, "a.jpg")
    monkeypatch.chdir(tmp_path)
    inp = list_inputs(["a.jpg"])
    monkeypatch.chdir("/")
    assert inp[0].path == str(tmp_path / "a.jpg")


def test_files_from_with_a_byte_order_mark(tmp_path, monkeypatch):
    """A list saved as UTF-8 with a BOM (Windows editors, PowerShell 5's Out-File) keeps its first path."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "list.txt").write_bytes("\ufeffa.jpg\r\nb.jpg\r\n".encode())
    assert keys(list_inputs([], files_from="list.txt")) == ["a.jpg", "b.jpg"]
    assert keys(list_inputs([], files_from="-", stdin=io.StringIO("\ufeffa.jpg\n"))) == ["a.jpg"]


def test_files_from_separated_by_nul_bytes_as_find_print0_writes(tmp_path, monkeypatch):
    """Every character between two NULs is the path's: a newline or a trailing space in a name stays."""
    monkeypatch.chdir(tmp_path)
    listing = "a b.jpg \0new\nline.jpg\0c.jpg\0"
    assert keys(list_inputs([], files_from="-", stdin=io.StringIO(listing))) == ["a b.jpg ", "new\nline.jpg", "c.jpg"]
    assert keys(list_inputs([], files_from="-", stdin=io.StringIO("a.jpg\0b.jpg\n"))) == ["a.jpg", "b.jpg"]
    (tmp_path / "list").write_bytes("\ufeffa.jpg\0b.jpg\0".encode())
    assert keys(list_inputs([], files_from="list")) == ["a.jpg", "b.jpg"]
    # a first name with a newline in it: the NUL after it still says how the list is separated
    listing = "new\nline.jpg\0c.jpg\0"
    assert keys(list_inputs([], files_from="-", stdin=io.StringIO(listing))) == ["new\nline.jpg", "c.jpg"]
    (tmp_path / "list").write_bytes(listing.encode())
    assert keys(list_inputs([], files_from="list")) == ["new\nline.jpg", "c.jpg"]
    # a NUL only after more than the longest path's worth of newline-separated names: the list mixes the two
    names = [f"{i:08d}.jpg" for i in range(400)]
    with pytest.raises(RegvqError, match="line 401 holds a NUL byte"):
        list_inputs([], files_from="-", stdin=io.StringIO("\n".join(names) + "\nb.jpg\0c.jpg\0"))


def test_truncate_keeps_the_first_items_with_their_labels_and_captions(tmp_path):
    touch(tmp_path, "a/1.jpg", "a/2.jpg", "b/3.jpg")
    (tmp_path / "metadata.jsonl").write_text("".join(
        f'{{"file_name": "{f}", "text": "t{f[2]}", "label": "{f[0]}"}}\n' for f in ("a/1.jpg", "a/2.jpg", "b/3.jpg")))
    inputs = list_inputs([tmp_path])
    whole = list(inputs)
    inputs.truncate(5)  # more than there are: nothing changes
    assert list(inputs) == whole
    inputs.truncate(2)
    assert list(inputs) == whole[:2] and len(inputs) == 2 and inputs.label_names == ["a", "b"]
    assert [inputs.caption(i) for i in range(2)] == ["t1", "t2"] and inputs.labels.tolist() == [0, 0]
