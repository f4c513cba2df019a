"""`regvq train-tokenizer` end to end on a few generated images, and its options against the config."""

import dataclasses
import json

import click

from regvq_cli.cli.train_tokenizer import OPTIONS, PRESET_NAMES
from regvq_cli.engine.resolve import load
from regvq_cli.tokenizer.presets import PRESETS
from regvq_cli.train.tokenizer import TrainTokenizerConfig
from tests.conftest import invoke
from tests.test_encode_decode import make_images


def test_options_mirror_the_config():
    fields = {f.name: f for f in dataclasses.fields(TrainTokenizerConfig)}
    for flag, name, _, default, _ in OPTIONS:
        assert name in fields, f"{flag} sets {name}, which TrainTokenizerConfig does not have"
        if name == "preset":
            continue  # the command line defaults to a real model, the library to the test preset
        f = fields[name]
        want = f.default if f.default is not dataclasses.MISSING else None
        if name == "perceptual_weights":
            want = None  # a list in the config, one optional file on the command line
        assert default == want, f"{flag}: default {default!r}, config has {want!r}"
    assert sorted(PRESET_NAMES) == sorted(PRESETS)


def test_train_export_and_use(tmp_path):
    imgs = make_images(tmp_path / "imgs", 8)
    args = ["train-tokenizer", imgs, "-o", tmp_path / "run", "--preset", "tok-test", "--max-steps", "3",
            "--batch-size", "4", "--workers", "0", "--perceptual-weight", "0", "--contrastive-weight", "0",
            "--log-every", "1", "--json"]
    r = invoke(*args)
    assert r.returncode == 0, r.stderr.decode()
    model_dir = json.loads(r.stdout)["model"]
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 3 and "prior_kl" in lines[-1] and "usage_pct" in lines[-1]
    tok = load(model_dir)
    assert tok.config.quantizer == "regvq" and tok.codebook_size == 64
    record = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert record["model_type"] == "tokenizer"
    assert "regvq train-tokenizer" in (tmp_path / "run" / "model" / "README.md").read_text()
    r = invoke("encode", "--workers", "0", imgs, "-o", tmp_path / "tok", "-m", model_dir)
    assert r.returncode == 0, r.stderr.decode()


def test_bad_values_are_usage_errors(tmp_path):
    r = invoke("train-tokenizer", tmp_path, "-o", tmp_path / "run", "--mask-ratio", "1.5")
    assert r.returncode == 2 and b"mask-ratio" in r.stderr
    assert isinstance(OPTIONS[0][2], click.Choice)
