"""`regvq train-prior` and `regvq train-tokenizer` given what they cannot use: a device this machine lacks,
files that are not what an option takes, options that do nothing with the others given, a run that diverges."""

import json

import pytest
import torch

from regvq_cli.engine.checkpoint import save_model
from regvq_cli.tokenizer.model import Tokenizer
from regvq_cli.tokenizer.presets import PRESETS as TOKENIZERS
from tests.conftest import invoke
from tests.test_encode_decode import make_images

TOKENIZER_FAST = ["--preset", "tok-test", "--max-steps", "1", "--batch-size", "4", "--workers", "0",
                  "--perceptual-weight", "0", "--contrastive-weight", "0"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny random tokenizer and two token folders of 4 images each: one with class labels, one with captions."""
    root = tmp_path_factory.mktemp("train_edges")
    torch.manual_seed(0)
    tok = save_model(Tokenizer(TOKENIZERS["tok-test"]), root / "tok")
    make_images(root / "imgs" / "cat", 2, seed=0)
    make_images(root / "imgs" / "dog", 2, seed=1)
    captioned = make_images(root / "captioned", 4, seed=2)
    with open(captioned / "metadata.jsonl", "w") as f:
        for i in range(4):
            f.write(json.dumps({"file_name": f"img{i:03d}.png", "text": f"a picture of {i % 2}"}) + "\n")
    for name in ("imgs", "captioned"):
        r = invoke("encode", "--workers", "0", root / name, "-o", root / f"{name}-tokens", "-m", tok, "--device", "cpu")
        assert r.returncode == 0, r.stderr.decode()
    return root


def usage_error(r) -> str:
    """The error line of a usage error (exit 2, no traceback)."""
    err = r.stderr.decode()
    assert r.returncode == 2 and "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def prior(work, run, *args):
    return invoke("train-prior", work / "imgs-tokens", "-o", run, "--preset", "ar-test", "--max-steps", "1",
                  "--batch-size", "4", "--sample-every", "0", *args)


@pytest.fixture
def no_gpu(monkeypatch):
    """A machine without CUDA or MPS, whatever this one has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.mark.parametrize("device, said", [("cuda", "CUDA is not available here"), ("cuda:1", "CUDA is not available"),
                                          ("mps", "MPS is not available here"), ("foo", "unknown device 'foo'")])
def test_a_device_this_machine_lacks_is_a_usage_error(work, tmp_path, no_gpu, device, said):
    assert said in usage_error(prior(work, tmp_path / "p", "--device", device))
    r = invoke("train-tokenizer", work / "imgs", "-o", tmp_path / "t", *TOKENIZER_FAST, "--device", device)
    assert said in usage_error(r)
    assert not (tmp_path / "p").exists() and not (tmp_path / "t").exists()


def test_a_cuda_device_past_the_last_is_a_usage_error(work, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    line = usage_error(prior(work, tmp_path / "p", "--device", "cuda:3"))
    assert "--device cuda:3: this machine has 1 CUDA device (cuda:0)" in line
    assert not (tmp_path / "p").exists()


def one_line_error(r) -> str:
    err = r.stderr.decode()
    assert r.returncode == 1 and len(err.strip().splitlines()) == 1 and err.startswith("regvq: error: "), err
    return err.strip()


def test_text_states_that_are_not_a_text_state_table_are_named_in_one_line(work, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not tensors\n")
    for path, why in ((work / "tok" / "model.safetensors", "a safetensors file without caption states"),
                      (text, "not a safetensors file")):
        r = invoke("train-prior", work / "captioned-tokens", "-o", tmp_path / "run", "--preset", "ar-test",
                   "--max-steps", "1", "--cond", "text", "--text-states", path)
        line = one_line_error(r)
        assert f"{path} is not a text-states file ({why})" in line and "text_states.safetensors" in line, line
    r = invoke("train-prior", work / "captioned-tokens", "-o", tmp_path / "run", "--preset", "ar-test",
               "--cond", "text", "--text-states", tmp_path / "missing.safetensors")
    assert "missing.safetensors" in usage_error(r)


def test_offline_refuses_a_text_encoder_outside_the_cache_at_once(work, tmp_path):
    r = invoke("train-prior", work / "captioned-tokens", "-o", tmp_path / "run", "--preset", "ar-test",
               "--cond", "text", "--text-encoder", "regvq-tests/no-such-encoder", "--offline")
    line = one_line_error(r)
    assert "'regvq-tests/no-such-encoder' is not in the Hugging Face cache and offline mode is on" in line, line


def test_a_text_encoder_folder_that_is_not_there_is_named(work, tmp_path):
    r = invoke("train-prior", work / "captioned-tokens", "-o", tmp_path / "run", "--preset", "ar-test",
               "--cond", "text", "--text-encoder", tmp_path / "encoder")
    assert f"there is no folder {tmp_path / 'encoder'}" in one_line_error(r)


# a text encoder whose download fails as it does without a network: the Hub client logs a retry, transformers raises
NO_NETWORK = """
import sys
from regvq_cli.priors import conditioning

def no_network(source, device, offline=False):
    from huggingface_hub.utils import logging
    logging.get_logger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5].")
    raise OSError("We couldn't connect to the Hub to load the files")

conditioning._HFTextEncoder = no_network
from regvq_cli.cli import main
main(sys.argv[1:])
"""


def test_quiet_keeps_the_hubs_retry_lines_off_stderr(work, tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO

    def run(*flags):
        return subprocess.run([sys.executable, "-c", NO_NETWORK, *flags, "train-prior", str(work / "captioned-tokens"),
                               "-o", str(tmp_path / "run"), "--preset", "ar-test", "--cond", "text",
                               "--text-encoder", "org/encoder", "--device", "cpu"],
                              capture_output=True, cwd=REPO, timeout=300)

    assert b"Retrying in 1s" in run().stderr  # the line the Hub client writes
    for flags in (["-q"], ["-qq"]):
        line = one_line_error(run(*flags))
        assert "cannot load text encoder 'org/encoder'" in line, line


@pytest.mark.parametrize("args, clip", [([], False), (["--grad-clip", "0"], True),
                                        (["--checkpoint-every", "1"], False)])
def test_a_prior_run_that_diverges_says_what_is_kept_and_what_to_change(work, tmp_path, args, clip):
    line = one_line_error(prior(work, tmp_path / "run", "--max-steps", "3", "--lr", "1e10", *args))
    assert "the loss became nan" in line and "--lr" in line
    assert ("--grad-clip" in line) == clip, line  # the prior clips at 1.0 unless told otherwise
    kept = (tmp_path / "run" / "state.pt").exists()
    assert ("the last checkpoint is kept" in line) == kept and ("no checkpoint was saved yet" in line) != kept, line
    if args[:1] == ["--checkpoint-every"]:
        assert kept


@pytest.mark.parametrize("args", [[], ["--checkpoint-every", "1"]])
def test_a_tokenizer_run_that_diverges_says_what_is_kept_and_what_to_change(work, tmp_path, args):
    r = invoke("train-tokenizer", work / "imgs", "-o", tmp_path / "run", *TOKENIZER_FAST, "--max-steps", "3",
               "--lr", "1e10", "--device", "cpu", *args)
    line = one_line_error(r)
    assert "the loss became nan" in line and "--grad-clip" in line  # no clip by default
    kept = (tmp_path / "run" / "state.pt").exists()
    assert ("the last checkpoint is kept" in line) == kept and ("no checkpoint was saved yet" in line) != kept, line
    assert kept == bool(args)


def test_a_preset_alone_gives_the_kind_and_a_kind_it_is_not_for_is_a_usage_error(work, tmp_path):
    r = prior(work, tmp_path / "run", "--preset", "diffusion-test", "--json")
    assert r.returncode == 0, r.stderr.decode()
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert config["model_type"] == "diffusion"
    line = usage_error(prior(work, tmp_path / "other", "--preset", "diffusion-test", "--kind", "ar"))
    assert "--preset diffusion-test is for --kind diffusion, not ar" in line and "ar-test" in line
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("args, named, need", [
    (["--seg-classes", "4"], "--seg-classes", "segmap"),  # --cond auto: the labels make it class
    (["--cond", "class", "--text-states", "{states}"], "--text-states", "text"),
    (["--cond", "none", "--text-encoder", "org/encoder"], "--text-encoder", "text"),
    (["--cond", "none", "--text-max-tokens", "8"], "--text-max-tokens", "text"),
])
def test_a_conditions_option_under_another_condition_is_a_usage_error(work, tmp_path, args, named, need):
    states = tmp_path / "states.safetensors"
    states.write_bytes(b"")
    line = usage_error(prior(work, tmp_path / "run", *[a.format(states=states) for a in args]))
    assert f"{named} only acts with --cond {need}" in line, line
    assert not (tmp_path / "run").exists()


def test_diffusion_options_for_an_ar_prior_are_a_usage_error(work, tmp_path):
    """--num-timesteps and --aux-weight failed later, --sample-steps was ignored: both before any run folder."""
    line = usage_error(prior(work, tmp_path / "run", "--num-timesteps", "10", "--sample-steps", "4"))
    assert "--num-timesteps, --sample-steps only act with --kind diffusion" in line, line
    line = usage_error(prior(work, tmp_path / "run", "--aux-weight", "0.1"))
    assert "--aux-weight only acts with --kind diffusion" in line, line
    assert not (tmp_path / "run").exists()


def test_the_text_options_act_where_the_shards_carry_captions(work, tmp_path):
    r = invoke("train-prior", work / "captioned-tokens", "-o", tmp_path / "run", "--preset", "ar-test",
               "--max-steps", "1", "--batch-size", "4", "--sample-every", "0", "--text-max-tokens", "8")
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads((tmp_path / "run" / "model" / "config.json").read_text())["config"]["text_max_tokens"] == 8


def test_train_tokenizer_offline_takes_an_init_model_from_the_cache_only(work, tmp_path, monkeypatch):
    """--offline: an --init Hub id that is not cached is one line at once, never a request."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    r = invoke("train-tokenizer", work / "imgs", "-o", tmp_path / "run", *TOKENIZER_FAST, "--device", "cpu",
               "--init", "acme/tokenizer", "--offline")
    assert "acme/tokenizer is not in the Hugging Face cache" in one_line_error(r)
    assert not (tmp_path / "run").exists()
