import json
import re

import pytest

from regvq_cli.engine.resolve import resolve_model, shipped_model_names
from regvq_cli.errors import RegvqError
from tests.conftest import REPO, run_cli
from tests.hub_server import FakeHub


def _model_files(model_type="tiny"):
    """config.json and model.safetensors bytes of a small model, made without torch."""
    record = {"format": "regvq-model", "format_version": 1, "model_type": model_type,
              "config": {"codebook_size": 16, "image_size": 8}, "info": {}, "regvq_version": "0"}
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                         "__metadata__": {"regvq": json.dumps(record)}}).encode()
    weights = len(header).to_bytes(8, "little") + header + b"\0" * 8
    return {"config.json": json.dumps(record).encode(), "model.safetensors": weights, "README.md": b"# a card\n"}


def _write_model(folder):
    folder.mkdir(parents=True)
    for name, data in _model_files().items():
        (folder / name).write_bytes(data)
    return folder


def test_local_folder_and_file(tmp_path):
    folder = _write_model(tmp_path / "m")
    assert resolve_model(str(folder)).source == "local"
    assert resolve_model(str(folder / "model.safetensors")).path == folder / "model.safetensors"


@pytest.mark.parametrize("suffix", [".pt", ".ckpt", ".pth", ".bin"])
def test_pickle_checkpoints_are_refused(tmp_path, suffix):
    bad = tmp_path / f"model{suffix}"
    bad.write_bytes(b"\x80\x04")  # a pickle header
    with pytest.raises(RegvqError, match="refusing a pickle checkpoint"):
        resolve_model(str(bad))


def test_unknown_name_lists_what_exists():
    with pytest.raises(RegvqError, match="no model 'not-a-model'"):
        resolve_model("not-a-model")


def test_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(RegvqError, match="not a model folder: it has no config.json and no model.safetensors$"):
        resolve_model(str(tmp_path))


def test_a_missing_path_that_reads_as_a_hub_id_says_both(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()  # runs/tok-a: a run that was never made here, or a Hub id
    with pytest.raises(RegvqError, match=r"runs/tok-a is not in the Hugging Face cache.*; nor is there a file or "
                                         r"folder runs/tok-a \(check the path\)$"):
        resolve_model("runs/tok-a", offline=True)
    with pytest.raises(RegvqError, match=r"acme/tok is not in the Hugging Face cache.*download it$"):
        resolve_model("acme/tok", offline=True)  # no acme/ here: a Hub id, said as before
    # names the Hub does not allow, with the path hint where a runs/ folder is here
    with pytest.raises(RegvqError, match=r"runs/tok-v2-: not a valid Hub id .*; nor is there a file or folder"):
        resolve_model("runs/tok-v2-", offline=True)
    with pytest.raises(RegvqError, match=r"^ab/a\.\.b: not a valid Hub id"):
        resolve_model("ab/a..b", offline=True)


def test_an_empty_model_name_is_refused_not_taken_for_the_default():
    with pytest.raises(RegvqError, match="an empty model name"):
        resolve_model(" ")
    for args in (["encode", "x", "-o", "y", "-m", ""], ["sample", "--prompt", "a", "--tokenizer", ""],
                 ["train-tokenizer", "x", "-o", "y", "--init", ""], ["codebook", "", "x"]):
        r = run_cli(*args)
        assert r.returncode == 2 and b"an empty model name" in r.stderr, (args, r.stderr)


def test_a_training_runs_folder_points_to_its_model(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "state.pt").write_bytes(b"")
    with pytest.raises(RegvqError, match="run has not exported its model yet"):
        resolve_model(str(run))
    (run / "model").mkdir()
    (run / "model" / "config.json").write_text("{}")
    with pytest.raises(RegvqError, match=f"training run's folder: its model is {re.escape(str(run / 'model'))}$"):
        resolve_model(str(run))


def test_shipped_names_are_folders_with_weights():
    for name in shipped_model_names():
        assert (REPO / "models" / name / "model.safetensors").is_file()


def test_a_folder_here_that_only_bears_a_shipped_name_does_not_hide_the_model(tmp_path, monkeypatch):
    """`mkdir regvq-tokenizer` (photos, say) beside a command that uses the default tokenizer: the shipped one
    loads. A model folder of that name is the user's own and comes first."""
    monkeypatch.chdir(tmp_path)
    name = shipped_model_names()[0]
    (tmp_path / name).mkdir()
    assert resolve_model(name).source == "shipped"
    (tmp_path / name).rmdir()
    (tmp_path / name).write_text("not a model")
    assert resolve_model(name).source == "shipped"
    (tmp_path / name).unlink()
    _write_model(tmp_path / name)
    assert resolve_model(name).source == "local"


def test_hub_download_then_offline_from_the_real_cache(tmp_path):
    """snapshot_download lays out a real HF cache from a local Hub; offline runs then resolve from it."""
    with FakeHub() as hub:
        hub.add("acme/tok", {**_model_files(), "big-unrelated.bin": b"x" * 1000})
        env = {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}
        r = run_cli("models", "show", "acme/tok", "--json", env=env)
        assert r.returncode == 0, r.stderr.decode()
        assert b"Fetching" not in r.stderr  # the Hub client's bars, like ours, only on a terminal
        shown = json.loads(r.stdout)
        assert shown["record"]["model_type"] == "tiny" and shown["card"] == "# a card\n"
        assert "/snapshots/" in shown["path"] and (tmp_path / "hf" / "hub" / "models--acme--tok").is_dir()
        assert not any("big-unrelated" in req for req in hub.requests)  # only the files we need
    # the server is gone: both ways of going offline use the cache
    for extra_env, flag in (({"HF_HUB_OFFLINE": "1"}, []), ({}, ["--offline"])):
        r = run_cli("models", "show", "acme/tok", *flag, env={**env, **extra_env})
        assert r.returncode == 0, r.stderr.decode()
        assert b"# a card" in r.stdout


def test_vv_shows_the_hubs_requests(tmp_path):
    """-vv: the Hub client's HTTP requests as debug lines on stderr (not on stdout); none without it."""
    with FakeHub() as hub:
        hub.add("acme/tok", _model_files())
        env = {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}
        r = run_cli("-vv", "models", "show", "acme/tok", "--json", env=env)
        assert r.returncode == 0, r.stderr.decode()
        requests = [line for line in r.stderr.decode().splitlines() if line.startswith("regvq: debug: httpx")]
        assert any("GET" in line and "acme/tok" in line for line in requests), r.stderr.decode()
        assert json.loads(r.stdout)["record"]["model_type"] == "tiny"
        r = run_cli("models", "show", "acme/tok", env=env)
        assert r.returncode == 0 and b"regvq: debug" not in r.stderr


def test_hub_offline_and_not_cached_names_the_id(tmp_path):
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    r = run_cli("models", "show", "acme/missing@v2", env=env)
    assert r.returncode == 1
    assert r.stderr.decode().strip().splitlines() == [
        "regvq: error: acme/missing@v2 is not in the Hugging Face cache and offline mode is on; "
        "run once online (without --offline / HF_HUB_OFFLINE) to download it"]


def test_hub_repo_not_found(tmp_path):
    with FakeHub() as hub:
        env = {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf")}
        r = run_cli("models", "show", "acme/nothing", env=env)
    assert r.returncode == 1 and b"no such model on the Hub" in r.stderr


def test_push_uploads_the_model_and_writes_a_card(tmp_path):
    folder = _write_model(tmp_path / "m")
    (folder / "README.md").unlink()
    (folder / "notes.txt").write_text("not uploaded")
    with FakeHub() as hub:
        env = {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": "hf_test"}
        r = run_cli("models", "push", folder, "acme/pushed", env=env)
        assert r.returncode == 0, r.stderr.decode()
        files = hub.repos["acme/pushed"]["files"]
    assert sorted(files) == ["README.md", "config.json", "model.safetensors"]
    assert files["model.safetensors"] == (folder / "model.safetensors").read_bytes()
    assert files["README.md"].startswith(b"---\nlibrary_name: regvq") and b"# pushed" in files["README.md"]


def test_push_without_a_reachable_hub_is_one_line(tmp_path):
    folder = _write_model(tmp_path / "m")
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": "hf_test"}  # refused
    r = run_cli("models", "push", folder, "acme/pushed", env=env)
    line = r.stderr.decode().strip()
    assert r.returncode == 1 and line.startswith("regvq: error: push to acme/pushed failed: cannot reach the "
                                                 "Hugging Face Hub") and "\n" not in line, line


def test_push_checks_the_id_and_the_whole_weights_file_before_anything(tmp_path):
    folder = _write_model(tmp_path / "m")
    (folder / "README.md").unlink()
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": "hf_test"}
    r = run_cli("models", "push", folder, "acme/a..b", env=env)
    assert r.returncode == 2 and b"expected a Hub id like org/name" in r.stderr, r.stderr
    assert not (folder / "README.md").exists()  # no card written for a push that cannot be
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4])  # its header intact, its tensor cut short
    r = run_cli("models", "push", folder, "acme/pushed", env=env)
    assert r.returncode == 1 and b"the file may be truncated or corrupt" in r.stderr, r.stderr
    assert not (folder / "README.md").exists()


def test_missing_embedded_default_says_to_pass_a_model(monkeypatch, tmp_path):
    import regvq_cli.engine.resolve as resolve

    monkeypatch.setattr(resolve, "shipped_models_dir", lambda: tmp_path)  # an install without shipped models
    with pytest.raises(RegvqError, match="no embedded default model 'regvq-tokenizer': pass --model"):
        resolve_model(resolve.DEFAULT_TOKENIZER)


def test_a_model_of_the_wrong_kind_is_named(tmp_path):
    from regvq_cli.engine.resolve import PRIOR, TOKENIZER, load

    folder = _write_model(tmp_path / "m")  # a "tiny" model: neither a tokenizer nor a prior
    with pytest.raises(RegvqError, match=r"is a tiny model; this command needs a prior \(from `regvq train-prior`\)"):
        load(str(folder), expect=PRIOR)
    with pytest.raises(RegvqError, match="needs a tokenizer"):
        load(str(folder), expect=TOKENIZER)
    record = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**record, "model_type": ""}))
    with pytest.raises(RegvqError, match="is an untyped model; this command needs a tokenizer"):
        load(str(folder), expect=TOKENIZER)


def test_models_list_and_show_a_shipped_model(monkeypatch, tmp_path):
    import torch

    import regvq_cli.engine.resolve as resolve
    from regvq_cli.engine.checkpoint import save_model
    from regvq_cli.tokenizer.model import Tokenizer
    from regvq_cli.tokenizer.presets import PRESETS
    from tests.conftest import invoke

    torch.manual_seed(0)
    save_model(Tokenizer(PRESETS["tok-test"]), tmp_path / "regvq-tiny", card="# regvq-tiny\n\nA card.\n",
               dtype=torch.bfloat16)
    monkeypatch.setattr(resolve, "shipped_models_dir", lambda: tmp_path)
    r = invoke("models", "list")
    assert r.returncode == 0, r.stderr.decode()
    header, row = r.stdout.decode().splitlines()
    assert header.split() == ["NAME", "KIND", "SIZE", "PARAMS", "CODES", "RES", "GRID", "COND"]
    assert row.split()[:2] == ["regvq-tiny", "tokenizer"] and row.split()[-4:] == ["64", "32", "8x8", "-"]
    r = invoke("models", "show", "regvq-tiny")
    assert r.returncode == 0 and b"A card." in r.stdout and b'"model_type": "tokenizer"' in r.stdout
    rows = json.loads(invoke("models", "list", "--json").stdout)
    assert rows[0]["parameters"] == sum(p.numel() for p in Tokenizer(PRESETS["tok-test"]).state_dict().values())
