"""`regvq train-tokenizer` end to end on a few generated images, and its options against the config."""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time

import click
import pytest

from regvq_cli.cli.train_tokenizer import OPTIONS, PRESET_NAMES
from regvq_cli.engine.resolve import load
from regvq_cli.tokenizer.presets import PRESETS
from regvq_cli.train.tokenizer import TrainTokenizerConfig
from tests.conftest import REPO, invoke, torchrun_cmd, torchrun_env
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


@pytest.mark.parametrize("args", [
    ("--lr", "nan"), ("--prior-weight", "inf"), ("--gan-weight", "inf"), ("--disc-lr", "nan"),
    ("--mask-ratio", "nan"), ("--temperature", "inf"), ("--time-limit", "nan"), ("--ema-decay", "nan"),
])
def test_non_finite_numbers_are_usage_errors(args, tmp_path):
    # nan compares false against any bound, so a plain range lets it (and inf above a lower bound) through
    r = invoke("train-tokenizer", tmp_path, "-o", tmp_path / "run", *args)
    assert r.returncode == 2 and args[0].encode() in r.stderr, r.stderr.decode()
    assert b"not a finite number" in r.stderr


@pytest.mark.parametrize("args", [("--lr", "-1e-4"), ("--disc-lr", "-1e-4"), ("--gan-weight", "-0.8"), ("--l1-weight", "-1")])
def test_negative_weights_and_learning_rates_are_usage_errors(args, tmp_path):
    r = invoke("train-tokenizer", tmp_path, "-o", tmp_path / "run", *args)
    assert r.returncode == 2 and args[0].encode() in r.stderr and b"is not in the range" in r.stderr, r.stderr.decode()


@pytest.mark.parametrize("seed", ["-1", str(2 ** 32)])
def test_seeds_the_generators_cannot_take_are_usage_errors(seed, tmp_path):
    r = invoke("train-tokenizer", tmp_path, "-o", tmp_path / "run", "--seed", seed)
    assert r.returncode == 2, r.stderr.decode()
    assert b"--seed" in r.stderr and b"is not in the range" in r.stderr


def test_compile_says_that_the_first_step_waits(tmp_path):
    """train-tokenizer and train-prior with --compile say first that the first step waits for the compilation
    (here the run then stops at its empty input, before any compiling)."""
    (tmp_path / "empty").mkdir()
    for command, what in (("train-tokenizer", b"compiling the tokenizer's encoder and decoder"),
                          ("train-prior", b"compiling the prior")):
        r = invoke(command, tmp_path / "empty", "-o", tmp_path / command, "--compile", "--device", "cpu")
        assert r.returncode == 1 and what in r.stderr and b"first batch waits" in r.stderr, r.stderr.decode()
        plain = invoke(command, tmp_path / "empty", "-o", tmp_path / command, "--device", "cpu")
        assert plain.returncode == 1 and b"compiling" not in plain.stderr


@pytest.mark.parametrize("workers, group, accum", [("0", False, "1"), ("2", True, "16")],
                         ids=["process", "group-with-workers"])
def test_sigterm_exits_143_with_a_checkpoint_and_the_same_command_resumes(tmp_path, workers, group, accum):
    # (with the group signalled the loader workers exit; 16 micro-batches a step outrun what they have prefetched,
    # so the step's last batches are made in the process)
    imgs = make_images(tmp_path / "imgs", 4)
    args = ["train-tokenizer", str(imgs), "-o", str(tmp_path / "run"), "--preset", "tok-test", "--batch-size", "2",
            "--workers", workers, "--grad-accum", accum, "--perceptual-weight", "0", "--contrastive-weight", "0",
            "--log-every", "1", "--sample-every", "100000", "--checkpoint-every", "100000", "--device", "cpu"]
    metrics = tmp_path / "run" / "metrics.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "regvq_cli", *args, "--max-steps", "100000"],
                            stderr=subprocess.PIPE, env={**os.environ, "REGVQ_DEBUG": ""}, start_new_session=group)
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2) and proc.poll() is None:
        assert time.time() < deadline, "training never logged a step"
        time.sleep(0.05)
    if group:  # a scheduler's pre-emption signals every process of the job, the loader workers too
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr.decode()
    assert stderr.decode().strip().splitlines()[-1].startswith("regvq: stopped at step ")
    assert b"again to resume" in stderr and b"Traceback" not in stderr
    step = json.loads(metrics.read_text().splitlines()[-1])["step"]
    assert step >= 2 and not (tmp_path / "run" / "model").exists()
    r = invoke(*args, "--max-steps", step + 1, "--json")  # the same run folder: resumes from the stop, one step more
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads(r.stdout)["steps_run"] == 1  # not a run started over, which would log the same last steps
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()][-2:] == [step, step + 1]


def test_torchrun_group_sigterm_stops_both_ranks_at_one_step_with_a_checkpoint(tmp_path):
    """A scheduler's pre-emption of a torchrun job: SIGTERM to the whole group (the agent, both ranks and their
    loader workers). Each rank finishes the step in process where its workers are gone, both stop at the same
    step (rank 0 says so, once) and the checkpoint resumes (here in one process)."""
    imgs = make_images(tmp_path / "imgs", 4)
    args = ["train-tokenizer", str(imgs), "-o", str(tmp_path / "run"), "--preset", "tok-test", "--batch-size", "2",
            "--workers", "2", "--grad-accum", "16", "--perceptual-weight", "0", "--contrastive-weight", "0",
            "--log-every", "1", "--sample-every", "100000", "--checkpoint-every", "100000", "--device", "cpu"]
    metrics = tmp_path / "run" / "metrics.jsonl"
    proc = subprocess.Popen(torchrun_cmd(*args, "--max-steps", "100000"), cwd=REPO, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, start_new_session=True, env=torchrun_env(REGVQ_DEBUG=""))
    deadline = time.time() + 180
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2) and proc.poll() is None:
        assert time.time() < deadline, "training never logged a step"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    err = stderr.decode()
    step = json.loads(metrics.read_text().splitlines()[-1])["step"]
    stops = [line for line in err.splitlines() if line.startswith("regvq: stopped at step ")]
    assert stops == [f"regvq: stopped at step {step} of 100000; its checkpoint is in {tmp_path / 'run' / 'state.pt'}: "
                     "run the same command again to resume"], err[-3000:]  # from rank 0 alone: the others say nothing
    assert "regvq_cli/" not in err, err[-3000:]  # no traceback from a rank (torchrun's agent prints its own)
    r = invoke(*args, "--max-steps", step + 1, "--workers", "0")
    assert r.returncode == 0, r.stderr.decode()
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()][-2:] == [step, step + 1]


def test_v_prints_a_line_per_logged_window(tmp_path):
    """-v: one line per metrics record (what a job's log keeps where no bar is drawn); none without it."""
    imgs = make_images(tmp_path / "imgs", 4)
    args = ["train-tokenizer", imgs, "--preset", "tok-test", "--batch-size", "2", "--workers", "0",
            "--perceptual-weight", "0", "--contrastive-weight", "0", "--log-every", "2", "--sample-every", "0",
            "--max-steps", "4", "--device", "cpu"]
    r = invoke(*args, "-o", tmp_path / "a", "-v")
    assert r.returncode == 0, r.stderr.decode()
    lines = [line for line in r.stderr.decode().splitlines() if line.startswith("step ")]
    assert [line.split(":")[0] for line in lines] == ["step 2/4", "step 4/4"]
    assert all(re.search(r"loss [\d.e+-]+, usage_pct [\d.]+, perplexity [\d.]+, images_per_s", line) for line in lines)
    r = invoke(*args, "-o", tmp_path / "b")
    assert r.returncode == 0 and not any(line.startswith(b"step ") for line in r.stderr.splitlines())

# ---- --init: fine-tuning from a model -----------------------------------------------------------------------

FAST = ["--batch-size", "4", "--workers", "0", "--perceptual-weight", "0", "--contrastive-weight", "0",
        "--log-every", "1", "--sample-every", "100", "--device", "cpu"]


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_init_starts_a_new_run_from_the_models_weights_and_a_rerun_resumes(tmp_path):
    import torch

    imgs = make_images(tmp_path / "imgs", 4)
    r = invoke("train-tokenizer", imgs, "-o", tmp_path / "base", "--preset", "tok-test", "--max-steps", "2", *FAST,
               "--gan-weight", "0", "--sample-every", "0", "--json")
    assert r.returncode == 0, r.stderr.decode()
    assert not (tmp_path / "base" / "samples").exists()  # --sample-every 0: never, as in train-prior
    base_dir = json.loads(r.stdout)["model"]
    base = load(base_dir)
    # lr 0: one real step (with a fresh discriminator) leaves the weights as they are, so the exported EMA must
    # equal the init weights exactly. No --preset: the command line's default (small-f16) is not a conflict; the
    # quantizer switches follow the flags.
    ft_run = tmp_path / "ft"
    r = invoke("train-tokenizer", imgs, "-o", ft_run, "--init", base_dir, "--max-steps", "1", "--lr", "0",
               "--gan-weight", "0.5", "--gan-start", "0", "--no-prior", "--mask-ratio", "0.2", *FAST, "--json")
    assert r.returncode == 0, r.stderr.decode()
    ft = load(json.loads(r.stdout)["model"])
    want, got = _weights(base), _weights(ft)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert ft.config == dataclasses.replace(base.config, use_prior=False, mask_ratio=0.2)
    record = json.loads((ft_run / "model" / "config.json").read_text())
    assert record["info"]["init"]["spec"] == str(base_dir) and record["info"]["steps"] == 1
    assert len(record["info"]["init"]["sha256"]) == 64
    assert record["info"]["train_config"]["init"] == str(base_dir)
    assert record["info"]["train_config"]["preset"] == "tok-test"  # the model's, not the command line's default
    assert "fine-tuned from" in (ft_run / "model" / "README.md").read_text()
    steps = [json.loads(line)["step"] for line in (ft_run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1]
    # a rerun with a resume state continues it: --init (here a path that is gone) is ignored
    r = invoke("train-tokenizer", imgs, "-o", ft_run, "--init", tmp_path / "gone", "--max-steps", "2", "--lr", "0",
               "--gan-weight", "0.5", "--gan-start", "0", "--no-prior", "--mask-ratio", "0.2", *FAST)
    assert r.returncode == 0, r.stderr.decode()
    assert b"resume state" in r.stderr and b"--init is ignored" in r.stderr
    steps = [json.loads(line)["step"] for line in (ft_run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    record = json.loads((ft_run / "model" / "config.json").read_text())
    assert record["info"]["init"]["spec"] == str(base_dir) and record["info"]["steps"] == 2
    assert record["info"]["train_config"]["init"] == str(base_dir)


def test_a_fine_tuned_run_resumed_with_another_quantizer_given_is_refused(tmp_path):
    """--quantizer regvq is the default: on a run fine-tuned from a vq model, given explicitly on a rerun, the
    trainer alone (architecture from the state) could not tell it from not given."""
    from regvq_cli.engine.checkpoint import save_model
    from regvq_cli.tokenizer.model import Tokenizer

    imgs = make_images(tmp_path / "imgs", 2)
    vq = save_model(Tokenizer(dataclasses.replace(PRESETS["tok-test"], quantizer="vq")), tmp_path / "vq")
    run = tmp_path / "run"
    assert invoke("train-tokenizer", imgs, "-o", run, "--init", vq, "--max-steps", "1", *FAST).returncode == 0
    for init in (["--init", vq], []):  # the rerun names the init model or not
        r = invoke("train-tokenizer", imgs, "-o", run, *init, "--quantizer", "regvq", "--max-steps", "2", *FAST)
        line = r.stderr.decode().strip().splitlines()[-1]
        assert r.returncode == 1 and line == (f"regvq: error: {run} was started with --quantizer vq, not regvq: "
                                              "rerun with the same settings to resume it, or use a new run "
                                              "directory"), line
    r = invoke("train-tokenizer", imgs, "-o", run, "--quantizer", "vq", "--max-steps", "2", *FAST)
    assert r.returncode == 0, r.stderr.decode()  # the run's own quantizer, given: fine


def test_init_refuses_a_conflicting_architecture(tmp_path):
    from regvq_cli.engine.checkpoint import save_model
    from regvq_cli.errors import RegvqError
    from regvq_cli.tokenizer.model import Tokenizer
    from regvq_cli.train.tokenizer import TokenizerTrainer

    imgs = make_images(tmp_path / "imgs", 2)
    model = save_model(Tokenizer(PRESETS["tok-test"]), tmp_path / "tok")
    for args, words in ((["--preset", "tok-test-f8"], [b"not a tok-test-f8 tokenizer", b"ch_mult", b"--preset"]),
                        (["--codebook-size", "128"], [b"codebook_size 64, not 128", b"--codebook-size"]),
                        (["--quantizer", "regvq", "--logits", "distance"], [b"logits linear, not distance"])):
        r = invoke("train-tokenizer", imgs, "-o", tmp_path / "run", "--init", model, *args, *FAST)
        assert r.returncode == 1, r.stderr.decode()
        err = r.stderr.decode().strip()
        assert len(err.splitlines()) == 1 and err.startswith("regvq: error: --init") and "Traceback" not in err
        assert all(w in r.stderr for w in words), err
        assert not (tmp_path / "run").exists()
    # the matching preset, given explicitly, is fine
    r = invoke("train-tokenizer", imgs, "-o", tmp_path / "run", "--init", model, "--preset", "tok-test",
               "--max-steps", "0", *FAST)
    assert r.returncode == 0, r.stderr.decode()
    assert b"no training step ran" in r.stderr  # the export is the --init weights, untrained here
    # the library refuses fields set away from their defaults that the model does not have
    cfg = TrainTokenizerConfig(init=str(model), quantizer="vq", num_workers=0, device="cpu")
    with pytest.raises(RegvqError, match="quantizer regvq, not vq"):
        TokenizerTrainer([imgs], tmp_path / "lib", cfg)
    # a prior is not a tokenizer
    from regvq_cli.priors.presets import PRESETS as PRIORS
    from regvq_cli.priors.presets import model_for

    prior = save_model(model_for(PRIORS["ar-test"]), tmp_path / "prior")
    r = invoke("train-tokenizer", imgs, "-o", tmp_path / "run2", "--init", prior, *FAST)
    assert r.returncode == 1 and b"needs a tokenizer" in r.stderr, r.stderr.decode()


# ---- bad inputs, resuming, the run folder -------------------------------------------------------------------

def test_unreadable_images_are_named_on_stderr_and_skipped(tmp_path):
    imgs = make_images(tmp_path / "imgs", 4)
    (imgs / "zero.png").write_bytes(b"")
    (imgs / "junk.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    # a batch of all 6 files: every file is read in every step
    r = invoke("train-tokenizer", imgs, "-o", tmp_path / "run", "--preset", "tok-test", "--max-steps", "3", *FAST,
               "--batch-size", "6")
    assert r.returncode == 0, r.stderr.decode()
    err = r.stderr.decode()
    assert "zero.png" in err and "junk.jpg" in err and "skipped" in err, err
    assert err.count("zero.png") == 1  # once, when it is first found
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 3 and last["skipped_files"] == 2


def test_a_long_run_of_unreadable_files_is_skipped_and_training_goes_on(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(40):  # listed before the good ones
        (imgs / f"a{i:02d}.png").write_bytes(b"")
    make_images(imgs, 4)
    r = invoke("train-tokenizer", imgs, "-o", tmp_path / "run", "--preset", "tok-test", "--max-steps", "2", *FAST)
    assert r.returncode == 0, r.stderr.decode()
    assert (tmp_path / "run" / "model" / "config.json").exists()


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_folder_of_only_unreadable_files_is_a_one_line_error(workers, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"")
    (bad / "b.jpg").write_bytes(b"not a jpeg")
    r = invoke("train-tokenizer", bad, "-o", tmp_path / "run", "--preset", "tok-test", "--max-steps", "2", *FAST,
               "--workers", workers)
    assert r.returncode == 1, r.stderr.decode()
    lines = r.stderr.decode().strip().splitlines()
    assert lines[-1].startswith("regvq: error: ") and "could be decoded" in lines[-1], lines
    assert not any("Traceback" in line or "worker process" in line for line in lines), lines


def test_resuming_compares_the_architecture_the_options_give(tmp_path):
    imgs = make_images(tmp_path / "imgs", 4)
    run = tmp_path / "run"
    base = ["train-tokenizer", imgs, "-o", run, "--preset", "tok-test", "--gan-weight", "0", *FAST]
    r = invoke(*base, "--quantizer", "vq", "--max-steps", "1")
    assert r.returncode == 0, r.stderr.decode()
    # the preset's own values, now given explicitly: the same network, so the run resumes
    r = invoke(*base, "--quantizer", "vq", "--codebook-size", "64", "--image-size", "32", "--max-steps", "2")
    assert r.returncode == 0, r.stderr.decode()
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    # a cosine lookup is another model: refused, and nothing changes
    before = (run / "state.pt").read_bytes()
    r = invoke(*base, "--quantizer", "vq", "--vq-l2-norm", "--max-steps", "3")
    assert r.returncode == 1 and b"--vq-l2-norm False, not True" in r.stderr, r.stderr.decode()
    assert (run / "state.pt").read_bytes() == before
    assert json.loads((run / "model" / "config.json").read_text())["config"]["vq_l2_norm"] is False


@pytest.mark.parametrize("inside", ["run", "."])
def test_a_run_folder_inside_the_data_is_refused(inside, tmp_path):
    # its sample grids would become training images of the next resume
    imgs = make_images(tmp_path / "imgs", 4)
    r = invoke("train-tokenizer", imgs, "-o", imgs / inside, "--preset", "tok-test", "--max-steps", "1", *FAST,
               "--sample-every", "1")
    assert r.returncode == 1, r.stderr.decode()
    err = r.stderr.decode().strip()
    assert len(err.splitlines()) == 1 and err.startswith("regvq: error: ") and "inside" in err, err
    assert sorted(p.name for p in imgs.iterdir()) == [f"img{i:03d}.png" for i in range(4)]


def test_a_rerun_of_a_run_past_its_time_limit_trains_no_further_step(tmp_path):
    imgs = make_images(tmp_path / "imgs", 4)
    args = ["train-tokenizer", imgs, "-o", tmp_path / "run", "--preset", "tok-test", "--max-steps", "100",
            "--time-limit", "0.001", *FAST]
    r = invoke(*args)
    assert r.returncode == 0, r.stderr.decode()
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1]
    r = invoke(*args)
    assert r.returncode == 0, r.stderr.decode()
    assert b"no training step ran" in r.stderr
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1]


@pytest.mark.parametrize("args,named", [
    (["--no-prior", "--prior-weight", "0.5"], "--prior-weight"),
    (["--no-mask", "--mask-ratio", "0.2"], "--mask-ratio"),
    (["--quantizer", "vq", "--mask-ratio", "0.2"], "--mask-ratio"),
    (["--quantizer", "regvq", "--vq-ema"], "--vq-ema"),
    (["--quantizer", "gumbel", "--commitment-weight", "0.5"], "--commitment-weight"),
    (["--quantizer", "vq", "--gumbel-kl-weight", "0.1"], "--gumbel-kl-weight"),
    (["--contrastive-weight", "0", "--tau", "0.1"], "--tau"),
    (["--gan-weight", "0", "--gan-start", "10"], "--gan-start"),
    (["--logits", "distance", "--logit-init", "2"], "--logit-init"),
])
def test_options_that_would_do_nothing_are_usage_errors(args, named, tmp_path):
    imgs = make_images(tmp_path / "imgs", 2)
    r = invoke("train-tokenizer", imgs, "-o", tmp_path / "run", "--preset", "tok-test", *args, "--max-steps", "1",
               *FAST)
    assert r.returncode == 2, r.stderr.decode()
    assert named.encode() in r.stderr and b"Traceback" not in r.stderr, r.stderr.decode()
    assert not (tmp_path / "run").exists()


def test_an_empty_resume_state_is_named_in_a_one_line_error(tmp_path):
    imgs = make_images(tmp_path / "imgs", 2)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "state.pt").write_bytes(b"")
    r = invoke("train-tokenizer", imgs, "-o", tmp_path / "run", "--preset", "tok-test", "--max-steps", "1", *FAST)
    assert r.returncode == 1, r.stderr.decode()
    err = r.stderr.decode().strip()
    assert len(err.splitlines()) == 1 and "cannot read the resume state" in err and "state.pt" in err, err
