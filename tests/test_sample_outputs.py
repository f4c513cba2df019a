"""`regvq sample`: file names of classes named by digits, and outputs refused or made before any sampling."""

import json

import pytest
import torch

from regvq_cli.data.shards import ShardReader
from regvq_cli.engine.checkpoint import save_model
from regvq_cli.tokenizer.model import Tokenizer
from regvq_cli.tokenizer.presets import PRESETS as TOKENIZERS
from tests.conftest import invoke
from tests.test_encode_decode import make_images


def ok(r):
    assert r.returncode == 0, r.stderr.decode()
    return r


@pytest.fixture(scope="module")
def digit_classes(tmp_path_factory):
    """A tiny class prior whose classes are named "1", "2" and "3" (class folders named by numbers)."""
    root = tmp_path_factory.mktemp("sample_outputs")
    torch.manual_seed(0)
    tok = save_model(Tokenizer(TOKENIZERS["tok-test"]), root / "tok")
    for seed, name in enumerate(("1", "2", "3")):
        make_images(root / "imgs" / name, 2, seed=seed)
    ok(invoke("encode", "--workers", "0", root / "imgs", "-o", root / "tokens", "-m", tok, "--device", "cpu"))
    r = ok(invoke("train-prior", root / "tokens", "-o", root / "ar", "--max-steps", "1", "--batch-size", "2",
                  "--sample-every", "0", "--device", "cpu", "--json", "--kind", "ar", "--cond", "class",
                  "--preset", "ar-test"))
    return json.loads(r.stdout)["model"]


def test_a_class_named_by_a_digit_names_its_file_after_itself(digit_classes, tmp_path):
    """--class 2 is the class named "2" (id 1): its file is ...-2.png, as its recorded label says."""
    ok(invoke("sample", "-m", digit_classes, "--class", "2", "-o", tmp_path / "out", "--tokens-out",
              tmp_path / "tok", "--seed", "0", "--device", "cpu"))
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["000000-2.png"]
    reader = ShardReader(tmp_path / "tok")
    assert reader.label_names[int(reader.shard(0)["labels"][0])] == "2"


def test_outputs_that_cannot_work_are_refused_before_sampling(digit_classes, tmp_path, monkeypatch):
    from regvq_cli.cli import sample

    def no_sampling(*args, **kw):
        raise AssertionError("sampled before checking -o")

    monkeypatch.setattr(sample, "token_batches", no_sampling)
    (tmp_path / "afile").write_text("x")
    args = ["sample", "-m", digit_classes, "--class", "1", "--device", "cpu"]
    r = invoke(*args, "-o", tmp_path / "bird.jpg")  # would be a folder named like a picture
    assert r.returncode == 2 and b"named like a picture" in r.stderr
    r = invoke(*args, "-n", "2", "-o", tmp_path / "out", "--cols", "2")  # --grid forgotten
    assert r.returncode == 2 and b"--cols lays out the contact sheet: pass --grid too" in r.stderr
    r = invoke(*args, "-n", "2", "--grid", "-o", tmp_path / "afile" / "sheet.png")
    assert r.returncode == 1 and f"{tmp_path / 'afile'} is a file".encode() in r.stderr, r.stderr.decode()
    r = invoke(*args, "-o", tmp_path / "afile" / "out")
    assert r.returncode == 1 and b"is a file; choose another --out" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_too_many_steps_is_a_usage_error_before_any_output(tmp_path):
    root = tmp_path
    torch.manual_seed(0)
    tok = save_model(Tokenizer(TOKENIZERS["tok-test"]), root / "tok")
    make_images(root / "imgs", 4)
    ok(invoke("encode", "--workers", "0", root / "imgs", "-o", root / "tokens", "-m", tok, "--device", "cpu"))
    r = ok(invoke("train-prior", root / "tokens", "-o", root / "diff", "--max-steps", "1", "--batch-size", "2",
                  "--sample-every", "0", "--device", "cpu", "--json", "--kind", "diffusion",
                  "--preset", "diffusion-test"))
    model = json.loads(r.stdout)["model"]
    r = invoke("sample", "-m", model, "--steps", "1000000", "--tokens-out", root / "dt", "--device", "cpu")
    assert r.returncode == 2 and b"--steps" in r.stderr and b"timesteps" in r.stderr, r.stderr.decode()
    assert not (root / "dt").exists()


def test_a_failed_run_leaves_no_token_folder_it_made(digit_classes, tmp_path, monkeypatch):
    from regvq_cli.cli import sample
    from regvq_cli.errors import RegvqError

    def fails(*args, **kw):
        raise RegvqError("out of something")

    monkeypatch.setattr(sample, "token_batches", fails)
    r = invoke("sample", "-m", digit_classes, "--class", "1", "--tokens-out", tmp_path / "dt", "--device", "cpu")
    assert r.returncode == 1 and b"out of something" in r.stderr
    assert not (tmp_path / "dt").exists()


def test_offline_reaches_the_text_encoder(tmp_path, monkeypatch):
    """sample --offline --prompt: the prompt's text encoder comes from the Hugging Face cache only, like the models."""
    from regvq_cli.engine.resolve import DEFAULT_TEXT_PRIOR, shipped_model_names
    from regvq_cli.errors import RegvqError
    from regvq_cli.priors import conditioning

    if DEFAULT_TEXT_PRIOR not in shipped_model_names():
        pytest.skip("no embedded text prior")

    def encode_texts(*args, offline=False, **kw):
        raise RegvqError(f"text encoder asked with offline={offline}")

    monkeypatch.setattr(conditioning, "encode_texts", encode_texts)
    for flags, want in (([], b"offline=False"), (["--offline"], b"offline=True")):
        r = invoke("sample", "--prompt", "a red bird", "--tokens-out", tmp_path / "t", "--device", "cpu", *flags)
        assert r.returncode == 1 and want in r.stderr, r.stderr.decode()
