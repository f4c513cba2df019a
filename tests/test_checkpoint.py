import json
import re
import os
import stat

import pytest
import torch
from safetensors.torch import load_file, save_file

from regvq_cli.engine.checkpoint import load_model, read_record, save_model
from regvq_cli.errors import RegvqError
from tests.tiny_model import TinyConfig


def test_round_trip_folder_and_lone_file(tmp_path, tiny_model_type):
    model = tiny_model_type(TinyConfig(width=6))
    torch.nn.init.normal_(model.inp.weight)
    folder = save_model(model, tmp_path / "m", card="# card\n", info={"trained_on": "noise"})
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    record = json.loads((folder / "config.json").read_text())
    assert record["model_type"] == "tiny" and record["config"]["width"] == 6 and record["info"]["trained_on"] == "noise"
    for source in (folder, folder / "model.safetensors"):  # the lone file carries its config in its metadata
        loaded = load_model(source)
        assert loaded.config == model.config and not loaded.training
        assert torch.equal(loaded.inp.weight, model.inp.weight)


def test_an_exported_model_is_readable_as_the_umask_allows(tmp_path, tiny_model_type):
    """safetensors writes its files readable by their owner alone; a model folder's files all follow the umask."""
    old = os.umask(0o022)
    try:
        folder = save_model(tiny_model_type(TinyConfig(width=6)), tmp_path / "m")
    finally:
        os.umask(old)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {
        "README.md": 0o644, "config.json": 0o644, "model.safetensors": 0o644}


def test_non_contiguous_weights_are_saved(tmp_path, tiny_model_type):
    """A weight stored with other strides (channels-last training, a transposed view) is written contiguous."""
    model = tiny_model_type(TinyConfig(width=6))
    torch.nn.init.normal_(model.inp.weight)
    model.inp.weight.data = model.inp.weight.data.t().contiguous().t()  # the same values, column-major
    assert not model.inp.weight.is_contiguous()
    loaded = load_model(save_model(model, tmp_path / "m"))
    assert torch.equal(loaded.inp.weight, model.inp.weight)


def test_tied_weights_are_stored_once_and_restored(tmp_path, tiny_model_type):
    model = tiny_model_type(TinyConfig(tied=True))
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.out.weight.data_ptr() == loaded.inp.weight.data_ptr()
    assert torch.equal(loaded.out.weight, model.inp.weight)


def test_low_precision_storage_loads_back_as_float32(tmp_path, tiny_model_type):
    model = tiny_model_type(TinyConfig())
    save_model(model, tmp_path / "m", dtype=torch.bfloat16)
    assert load_file(str(tmp_path / "m" / "model.safetensors"))["inp.weight"].dtype == torch.bfloat16
    assert model.inp.weight.dtype == torch.float32  # the caller's model is untouched
    loaded = load_model(tmp_path / "m")
    assert loaded.inp.weight.dtype == torch.float32
    assert torch.allclose(loaded.inp.weight, model.inp.weight, atol=1e-2)


def test_missing_and_unexpected_keys_are_named(tmp_path, tiny_model_type):
    folder = save_model(tiny_model_type(TinyConfig()), tmp_path / "m")
    weights = folder / "model.safetensors"
    state = load_file(str(weights))
    meta = {"regvq": json.dumps(read_record(folder))}
    del state["inp.bias"]
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(weights), metadata=meta)
    with pytest.raises(RegvqError, match=r"missing inp\.bias.*unexpected extra\.weight"):
        load_model(folder)


def test_shape_mismatch_is_named(tmp_path, tiny_model_type):
    folder = save_model(tiny_model_type(TinyConfig(width=4)), tmp_path / "m")
    record = json.loads((folder / "config.json").read_text())
    record["config"]["width"] = 5
    (folder / "config.json").write_text(json.dumps(record))
    with pytest.raises(RegvqError, match=r"tensor inp\.(weight|bias) has shape \(4,?.*the config expects \(5"):
        load_model(folder)


def test_newer_format_and_unknown_fields_are_refused(tmp_path, tiny_model_type):
    folder = save_model(tiny_model_type(TinyConfig()), tmp_path / "m")
    record = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**record, "format_version": 99}))
    with pytest.raises(RegvqError, match="newer than this regvq"):
        read_record(folder)
    record["config"]["from_the_future"] = 1
    (folder / "config.json").write_text(json.dumps(record))
    with pytest.raises(RegvqError, match="from_the_future"):
        load_model(folder)


@pytest.mark.parametrize("field, value, message", [
    ("tied", "false", "tied is 'false' (str), where it takes bool"),  # a string would have been true
    ("width", "4", "width is '4' (str), where it takes int"),
    ("codebook_size", None, "codebook_size is None"),
    ("codebook_size", 16.0, "codebook_size is 16.0"),
    ("codebook_size", -5, "invalid tiny config: "),  # the right type, no model: torch's own words follow
])
def test_config_values_of_the_wrong_type_or_no_model_are_refused(tmp_path, tiny_model_type, field, value, message):
    folder = save_model(tiny_model_type(TinyConfig()), tmp_path / "m")
    record = json.loads((folder / "config.json").read_text())
    record["config"][field] = value
    (folder / "config.json").write_text(json.dumps(record))
    with pytest.raises(RegvqError, match=re.escape(message)):
        load_model(folder)


def test_corrupt_files_give_clear_errors(tmp_path, tiny_model_type):
    folder = save_model(tiny_model_type(TinyConfig()), tmp_path / "m")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(RegvqError, match="not valid JSON"):
        read_record(folder)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x05")
    with pytest.raises(RegvqError, match="not a valid safetensors"):
        read_record(junk)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(RegvqError, match="carries no regvq config"):
        read_record(plain)
