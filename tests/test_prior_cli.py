"""`regvq train-prior` and `regvq sample` end to end: tiny tokenizer -> encode -> train -> sample, and errors."""

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from regvq_cli.cli.train_prior import OPTIONS, PRESET_NAMES
from regvq_cli.engine.checkpoint import save_model
from regvq_cli.tokenizer.model import Tokenizer
from regvq_cli.tokenizer.presets import PRESETS as TOKENIZERS
from tests.conftest import invoke
from tests.test_encode_decode import make_images

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def ok(r):
    assert r.returncode == 0, r.stderr.decode()
    return r


def train(tokens, run, *args):
    return invoke("train-prior", tokens, "-o", run, "--max-steps", "3", "--batch-size", "4", "--log-every", "1",
                  "--sample-every", "0", "--device", "cpu", "--json", *args)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny random tokenizer (32 px, 8x8 grid, 64 codes) and 8 images in two class folders, encoded."""
    root = tmp_path_factory.mktemp("prior_cli")
    torch.manual_seed(0)
    tok = save_model(Tokenizer(TOKENIZERS["tok-test"]), root / "tok")
    make_images(root / "imgs" / "cat", 4, seed=0)
    make_images(root / "imgs" / "dog", 4, seed=1)
    ok(invoke("encode", "--workers", "0", root / "imgs", "-o", root / "tokens", "-m", tok, "--device", "cpu"))
    return root


@pytest.fixture(scope="module")
def ar_model(work):
    r = ok(train(work / "tokens", work / "ar", "--kind", "ar", "--cond", "class", "--preset", "ar-test"))
    return json.loads(r.stdout)["model"]


@pytest.fixture(scope="module")
def diffusion_model(work):
    r = ok(train(work / "tokens", work / "diff", "--kind", "diffusion", "--preset", "diffusion-test"))
    return json.loads(r.stdout)["model"]


def test_options_mirror_the_config():
    from regvq_cli.priors.presets import PRESETS
    from regvq_cli.priors.training import TrainPriorConfig

    fields = {f.name: f for f in dataclasses.fields(TrainPriorConfig)}
    for flag, name, _, default, _ in OPTIONS:
        assert name in fields, f"{flag} sets {name}, which TrainPriorConfig does not have"
        want = fields[name].default
        if name == "preset":
            want = None  # "" in the config, unset on the command line: both mean <kind>-small
        assert default == want, f"{flag}: default {default!r}, config has {want!r}"
    assert set(fields) - {name for _, name, _, _, _ in OPTIONS} == {"command"}  # every field but the recorded command
    assert sorted(PRESET_NAMES) == sorted(PRESETS)


def test_train_exports_and_a_rerun_resumes(work, ar_model):
    from regvq_cli.engine.resolve import load

    prior = load(ar_model)
    assert prior.model_type == "ar" and prior.config.class_names == ("cat", "dog")
    assert prior.config.grid_size == (8, 8) and prior.config.codebook_size == 64
    assert prior.config.tokenizer == str((work / "tok").resolve())
    steps = [json.loads(line)["step"] for line in (work / "ar" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    r = ok(train(work / "tokens", work / "ar", "--kind", "ar", "--cond", "class", "--preset", "ar-test",
                 "--max-steps", "4"))
    assert json.loads(r.stdout)["steps_run"] == 1  # taken up at step 4, not started over
    steps = [json.loads(line)["step"] for line in (work / "ar" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_a_run_that_decodes_its_samples_resumes_to_the_same_weights(work, tmp_path):
    """Decoding samples loads the shards' tokenizer once a process, whose building draws from the global
    generator: a run stopped and resumed must still train as one that was not."""
    from safetensors.torch import load_file

    args = ["--kind", "ar", "--preset", "ar-test", "--sample-every", "2", "--checkpoint-every", "2",
            "--num-samples", "2"]
    ok(train(work / "tokens", tmp_path / "full", *args, "--max-steps", "6"))
    ok(train(work / "tokens", tmp_path / "split", *args, "--max-steps", "3"))  # the tokenizer loaded at step 2
    ok(train(work / "tokens", tmp_path / "split", *args, "--max-steps", "6"))  # and again at 4, in this process
    assert any(p.suffix == ".png" for p in (tmp_path / "split" / "samples").iterdir())  # samples were decoded
    full = load_file(tmp_path / "full" / "model" / "model.safetensors")
    split = load_file(tmp_path / "split" / "model" / "model.safetensors")
    assert all(torch.equal(full[k], split[k]) for k in full)


def test_a_run_with_no_step_to_take_says_so(work, tmp_path):
    r = ok(train(work / "tokens", tmp_path / "run", "--preset", "ar-test", "--max-steps", "0"))
    assert b"no training step ran" in r.stderr and b"initial" in r.stderr
    assert json.loads(r.stdout)["model"] == str(tmp_path / "run" / "model")
    r = ok(train(work / "tokens", tmp_path / "run", "--preset", "ar-test", "--max-steps", "1"))
    assert b"no training step ran" not in r.stderr
    r = ok(train(work / "tokens", tmp_path / "run", "--preset", "ar-test", "--max-steps", "1"))  # already there
    assert r.stderr.count(b"no training step ran: the run was already at --max-steps (1)") == 1


def test_val_size_holds_grids_out_and_scores_them(work, tmp_path):
    from regvq_cli.train.common import read_metrics

    ok(train(work / "tokens", tmp_path / "run", "--preset", "ar-test", "--val-size", "2"))
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert "val_loss" in records[-1] and all("val_loss" not in r for r in records[:-1])
    assert "| val_loss |" in (tmp_path / "run" / "model" / "README.md").read_text()
    r = invoke("train-prior", work / "tokens", "-o", tmp_path / "bad", "--val-size", "-1")
    assert r.returncode == 2 and b"--val-size" in r.stderr


def test_bad_training_values_are_usage_errors(work, tmp_path):
    r = invoke("train-prior", work / "tokens", "-o", tmp_path / "run", "--cond-dropout", "1.5")
    assert r.returncode == 2 and b"cond-dropout" in r.stderr
    r = invoke("train-prior", work / "tokens", "-o", tmp_path / "run", "--kind", "ar", "--preset", "diffusion-test")
    assert r.returncode == 2 and b"--preset diffusion-test is for --kind diffusion, not ar" in r.stderr


def test_sample_classes_to_a_folder_and_a_sheet(ar_model, tmp_path):
    r = ok(invoke("sample", "-m", ar_model, "--class", "cat", "--class", "1", "-n", "2", "-o", tmp_path / "out",
                  "--seed", "1", "--json"))
    summary = json.loads(r.stdout)
    assert summary["images"] == 4 and summary["seed"] == 1 and summary["images_per_s"] > 0
    names = ["000000-cat.png", "000001-cat.png", "000002-dog.png", "000003-dog.png"]  # class 1 is "dog"
    assert sorted(os.listdir(tmp_path / "out")) == names
    assert [os.path.basename(f) for f in summary["files"]] == names
    with Image.open(tmp_path / "out" / "000000-cat.png") as im:
        assert im.size == (32, 32) and im.mode == "RGB"
    ok(invoke("sample", "-m", ar_model, "--class", "dog", "-n", "4", "--grid", "--cols", "2", "-o", tmp_path / "sheet.png"))
    with Image.open(tmp_path / "sheet.png") as im:
        assert im.size == (2 * 34 + 2, 2 * 34 + 2)  # 2 x 2 images of 32 px with 2 px gaps


def test_same_seed_same_images(ar_model, tmp_path):
    def run(name, seed):
        ok(invoke("sample", "-m", ar_model, "--class", "cat", "-n", "3", "--seed", seed, "-o", tmp_path / name))
        return [(tmp_path / name / f"{i:06d}-cat.png").read_bytes() for i in range(3)]

    a, b, c = run("a", 7), run("b", 7), run("c", 8)
    assert a == b
    assert a != c


def test_one_png_on_stdout(ar_model, tmp_path):
    r = ok(invoke("sample", "-m", ar_model, "--class", "dog", "--seed", "3", "-o", "-"))
    assert r.stdout.startswith(PNG_MAGIC)
    ok(invoke("sample", "-m", ar_model, "--class", "dog", "--seed", "3", "-o", tmp_path / "one.png"))
    assert r.stdout == (tmp_path / "one.png").read_bytes()
    r = invoke("sample", "-m", ar_model, "--class", "dog", "-n", "2", "-o", "-")
    assert r.returncode == 2 and b"--grid" in r.stderr
    r = invoke("sample", "-m", ar_model, "--class", "dog", "-o", "-", "--json")
    assert r.returncode == 2 and b"stdout" in r.stderr


def test_tokens_out_is_a_token_folder_that_decodes_to_the_same_images(ar_model, tmp_path):
    from regvq_cli.data.dataset import TokenDataset

    ok(invoke("sample", "-m", ar_model, "--class", "cat", "--class", "dog", "-n", "2", "--seed", "4",
              "-o", tmp_path / "img", "--tokens-out", tmp_path / "tok"))
    ds = TokenDataset(tmp_path / "tok")
    assert len(ds) == 4 and ds.grid == (8, 8) and ds.codebook_size == 64 and ds.label_names == ["cat", "dog"]
    keys = ["000000-cat", "000001-cat", "000002-dog", "000003-dog"]
    assert [ds[i]["key"] for i in range(4)] == keys
    assert [int(ds[i]["label"]) for i in range(4)] == [0, 0, 1, 1]
    ok(invoke("decode", tmp_path / "tok", "-o", tmp_path / "dec"))
    for key in keys:
        assert (tmp_path / "dec" / f"{key}.png").read_bytes() == (tmp_path / "img" / f"{key}.png").read_bytes()
    # tokens only, without writing images; same seed, same tokens
    ok(invoke("sample", "-m", ar_model, "--class", "cat", "--class", "dog", "-n", "2", "--seed", "4",
              "--tokens-out", tmp_path / "tok2"))
    again = TokenDataset(tmp_path / "tok2")
    assert all(torch.equal(again[i]["tokens"], ds[i]["tokens"]) for i in range(4))
    # a folder of another run is refused before sampling
    line = one_line_error(invoke("sample", "-m", ar_model, "--class", "cat", "--seed", "5", "--tokens-out", tmp_path / "tok"))
    assert "another run" in line and "--tokens-out" in line
    assert len(TokenDataset(tmp_path / "tok")) == 4


def test_tokens_out_across_several_shards(ar_model, tmp_path, monkeypatch):
    from regvq_cli.cli import sample
    from regvq_cli.data.dataset import TokenDataset

    args = ["sample", "-m", ar_model, "--class", "cat", "-n", "5", "--batch-size", "2", "--seed", "9", "--tokens-out"]
    ok(invoke(*args, tmp_path / "one"))
    monkeypatch.setattr(sample, "SHARD_SIZE", 3)  # batches of 2, 2, 1 fill shards of 3 and 2
    ok(invoke(*args, tmp_path / "two"))
    one, two = TokenDataset(tmp_path / "one"), TokenDataset(tmp_path / "two")
    assert len(two.reader.paths) == 2 and len(two) == len(one) == 5
    for i in range(5):
        assert two[i]["key"] == one[i]["key"] == f"{i:06d}-cat"
        assert torch.equal(two[i]["tokens"], one[i]["tokens"])


def test_diffusion_maskgit(diffusion_model, tmp_path):
    from regvq_cli.data.dataset import TokenDataset

    def run(name):
        ok(invoke("sample", "-m", diffusion_model, "--class", "dog", "-n", "2", "--sampler", "maskgit", "--steps", "4",
                  "--seed", "2", "-o", tmp_path / name, "--tokens-out", tmp_path / f"{name}-tok"))
        return [(tmp_path / name / f"{i:06d}-dog.png").read_bytes() for i in range(2)]

    assert run("a") == run("b")
    assert len(TokenDataset(tmp_path / "a-tok")) == 2
    ok(invoke("sample", "-m", diffusion_model, "--class", "cat", "--steps", "3", "--grid", "-o", tmp_path / "vq.png"))
    assert (tmp_path / "vq.png").read_bytes().startswith(PNG_MAGIC)


def test_segmentation_map_prior(work, tmp_path):
    from regvq_cli.data.dataset import TokenDataset

    imgs = make_images(tmp_path / "imgs", 4, seed=3)
    (tmp_path / "maps").mkdir()
    for i in range(4):
        ids = np.zeros((40, 48), dtype=np.uint8)
        ids[20:] = 1 + i % 2  # sky (0) over ground 1 or 2
        Image.fromarray(ids, mode="L").save(tmp_path / "maps" / f"img{i:03d}.png")
    ok(invoke("encode", "--workers", "0", imgs, "--maps", tmp_path / "maps", "-o", tmp_path / "tokens",
              "-m", work / "tok", "--device", "cpu"))
    r = ok(train(tmp_path / "tokens", tmp_path / "run", "--kind", "diffusion", "--preset", "diffusion-test",
                 "--max-steps", "2"))
    model = json.loads(r.stdout)["model"]
    maps = [tmp_path / "maps" / "img000.png", tmp_path / "maps" / "img001.png"]
    ok(invoke("sample", "-m", model, "--seg-map", maps[0], "--seg-map", maps[1], "--steps", "4", "--seed", "0",
              "-o", tmp_path / "out", "--tokens-out", tmp_path / "gen"))
    assert sorted(os.listdir(tmp_path / "out")) == ["000000-img000.png", "000001-img001.png"]
    ds = TokenDataset(tmp_path / "gen")
    assert ds[0]["segmap"].shape == (32, 32) and int(ds[1]["segmap"].max()) == 2
    bad = tmp_path / "bad.png"
    Image.fromarray(np.full((8, 8), 7, dtype=np.uint8), mode="L").save(bad)
    line = one_line_error(invoke("sample", "-m", model, "--seg-map", bad, "-o", tmp_path / "x"))
    assert "label 7" in line
    jpeg = tmp_path / "map.jpg"  # a JPEG map samples, with a warning about its edges
    Image.open(maps[0]).save(jpeg, quality=95)
    r = ok(invoke("sample", "-m", model, "--seg-map", jpeg, "--steps", "2", "-o", tmp_path / "j"))
    assert f"regvq: warning: {jpeg} is a JPEG" in r.stderr.decode(), r.stderr
    assert "is a JPEG" not in ok(invoke("sample", "-m", model, "--seg-map", maps[0], "--steps", "2", "-o",
                                        tmp_path / "p")).stderr.decode()


def test_sampler_options_are_for_diffusion_only(ar_model, tmp_path):
    r = invoke("sample", "-m", ar_model, "--class", "cat", "--sampler", "maskgit", "-o", tmp_path / "x")
    assert r.returncode == 2 and b"diffusion priors only" in r.stderr


def test_attention_option_needs_an_ar_prior_on_cuda_with_triton(ar_model, diffusion_model, tmp_path, monkeypatch):
    """`--attention triton` on a CPU, or with a diffusion prior, is a usage error that names the fix."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    r = invoke("sample", "-m", ar_model, "--class", "cat", "--attention", "triton", "--device", "cpu",
               "-o", tmp_path / "x.png")
    assert r.returncode == 2 and b"--attention triton needs a CUDA device" in r.stderr
    r = invoke("sample", "-m", diffusion_model, "--class", "cat", "--attention", "triton", "-o", tmp_path / "x.png")
    assert r.returncode == 2 and b"AR priors only" in r.stderr


def test_attention_option_reaches_the_ar_sampler(ar_model, tmp_path, monkeypatch):
    """`--attention triton` is passed to the AR sampler (the kernel's own tokens are tested in
    test_priors_ar_static.py, through Triton's interpreter); stood in here by the SDPA path, so the tokens are the
    default's."""
    from regvq_cli.data.dataset import TokenDataset
    from regvq_cli.priors import decode_attention, sampling

    seen = []

    class Recording(sampling.ARSampler):
        def __init__(self, *args, attention, **kwargs):
            seen.append(attention)
            super().__init__(*args, attention="sdpa", **kwargs)

    args = ["sample", "-m", ar_model, "--class", "cat", "-n", "3", "--batch-size", "2", "--seed", "2", "--device", "cpu"]
    ok(invoke(*args, "--tokens-out", tmp_path / "sdpa"))
    monkeypatch.setattr(sampling, "ARSampler", Recording)
    monkeypatch.setattr(decode_attention, "available", lambda device: True)
    ok(invoke(*args, "--attention", "triton", "--tokens-out", tmp_path / "triton"))
    assert seen == ["triton", "triton"]  # a sampler for the batches of 2, one for the last one
    a, b = TokenDataset(tmp_path / "sdpa"), TokenDataset(tmp_path / "triton")
    assert all(torch.equal(a[i]["tokens"], b[i]["tokens"]) for i in range(3))


def test_kv_cache_int8_samples_an_ar_prior_and_is_recorded(ar_model, diffusion_model, tmp_path):
    """`--kv-cache int8` (here on the CPU, through SDPA): valid tokens, the same for the same seed, the setting kept
    in the token folder's manifest; with a diffusion prior, a usage error."""
    from regvq_cli.data.dataset import TokenDataset

    for name in ("a", "b"):
        ok(invoke("sample", "-m", ar_model, "--class", "cat", "-n", "2", "--seed", "4", "--kv-cache", "int8",
                  "--tokens-out", tmp_path / name, "--device", "cpu"))
    a, b = TokenDataset(tmp_path / "a"), TokenDataset(tmp_path / "b")
    assert all(torch.equal(a[i]["tokens"], b[i]["tokens"]) for i in range(2)) and int(a[0]["tokens"].max()) < 64
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["run"]["extra"]["sampled"]["kv_cache"] == "int8"
    r = invoke("sample", "-m", diffusion_model, "--class", "cat", "--kv-cache", "int8", "-o", tmp_path / "x.png")
    assert r.returncode == 2 and b"AR priors only" in r.stderr


def test_compile_for_ar_and_diffusion_priors(ar_model, diffusion_model, tmp_path):
    """--compile runs the AR decode step, or the diffusion denoiser, through torch.compile (here on the CPU), and
    says so first: the same kind of output, and for the diffusion prior the tokens of the same command without it."""
    from regvq_cli.data.dataset import TokenDataset

    r = ok(invoke("sample", "-m", ar_model, "--class", "cat", "-n", "2", "--seed", "1", "--compile",
                  "--tokens-out", tmp_path / "tok", "--device", "cpu"))
    assert b"compiling the prior's step with torch.compile" in r.stderr  # the first batch waits for it
    ds = TokenDataset(tmp_path / "tok")
    assert len(ds) == 2 and ds.grid == (8, 8) and int(ds[0]["tokens"].max()) < 64
    for flags, name in (([], "plain"), (["--compile"], "compiled")):
        ok(invoke("sample", "-m", diffusion_model, "--class", "cat", "-n", "2", "--seed", "1", "--steps", "4",
                  "--tokens-out", tmp_path / name, "--device", "cpu", *flags))
    plain, compiled = TokenDataset(tmp_path / "plain"), TokenDataset(tmp_path / "compiled")
    assert all(torch.equal(plain[i]["tokens"], compiled[i]["tokens"]) for i in range(2))


def test_compiled_sampling_pads_the_last_short_batch_to_the_compiled_size(monkeypatch):
    """With --compile a run's last, short batch is sampled at the full batch size (its last row repeated) and cut
    back, so the compiled step is not compiled again for a new size; without it, batches are as they come. One AR
    sampler (its KV cache and recorded step) serves all the batches of one size."""
    from regvq_cli.cli.sample import token_batches
    from regvq_cli.priors import sampling

    seen, made = [], []

    class FakeSampler:
        def __init__(self, prior, n, generator=None, **options):
            self.n = n
            made.append(n)

        def __call__(self, cond):
            seen.append(cond.tolist())
            return cond.view(self.n, 1, 1)  # one "token" per sample: its condition

    monkeypatch.setattr(sampling, "ARSampler", FakeSampler)
    prior = torch.nn.Linear(1, 1)
    prior.model_type = "ar"
    cond, rows = torch.tensor([10, 11, 12, 13, 14]), np.arange(5)
    for compiled, calls, sizes in ((True, [[10, 11], [12, 13], [14, 14]], [2]),
                                   (False, [[10, 11], [12, 13], [14]], [2, 1])):
        seen.clear(), made.clear()
        out = list(token_batches(prior, cond, rows, 2, None, torch.float32, {"compile": compiled}))
        assert seen == calls and made == sizes
        assert torch.cat(out).flatten().tolist() == [10, 11, 12, 13, 14]
    seen.clear()
    list(token_batches(prior, cond, rows[:3], 8, None, torch.float32, {"compile": True}))
    assert seen == [[10, 11, 12]]  # one batch, smaller than --batch-size: compiled for its own size, no padding


@pytest.mark.gpu
def test_attention_triton_on_a_gpu_is_reproducible(ar_model, tmp_path):
    """The Triton decode kernel through the command on CUDA (bf16, CUDA graphs): the same seed, the same tokens."""
    from regvq_cli.data.dataset import TokenDataset

    pytest.importorskip("triton")
    for name in ("a", "b"):
        ok(invoke("sample", "-m", ar_model, "--class", "cat", "--class", "dog", "-n", "2", "--seed", "3",
                  "--attention", "triton", "--tokens-out", tmp_path / name, "--device", "cuda"))
    a, b = TokenDataset(tmp_path / "a"), TokenDataset(tmp_path / "b")
    assert all(torch.equal(a[i]["tokens"], b[i]["tokens"]) for i in range(4))


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["ar", "diffusion"])
def test_sample_on_a_gpu_replays_cuda_graphs_with_the_eager_tokens(ar_model, diffusion_model, tmp_path, kind):
    """On CUDA the command samples with bf16 weights and CUDA graphs (the AR step, the diffusion denoiser): the same
    tokens for the same seed, and the tokens of the plain eager sampler on the same bf16 weights."""
    from regvq_cli.data.dataset import TokenDataset
    from regvq_cli.engine.checkpoint import load_model
    from regvq_cli.priors.sampling import sample_ar, sample_diffusion

    model, steps = (ar_model, []) if kind == "ar" else (diffusion_model, ["--steps", "4"])
    for name in ("a", "b"):
        ok(invoke("sample", "-m", model, "--class", "cat", "--class", "dog", "-n", "2", "--seed", "3", *steps,
                  "--tokens-out", tmp_path / name, "--device", "cuda"))
    a, b = TokenDataset(tmp_path / "a"), TokenDataset(tmp_path / "b")
    got = torch.stack([a[i]["tokens"] for i in range(4)])
    assert torch.equal(got, torch.stack([b[i]["tokens"] for i in range(4)]))
    dev = torch.device("cuda")
    prior = load_model(model, device=dev).to(torch.bfloat16)
    cond, gen = torch.tensor([0, 0, 1, 1], device=dev), torch.Generator(device=dev).manual_seed(3)
    if kind == "ar":
        want = sample_ar(prior, cond, 4, cfg=1.5, generator=gen)
    else:
        want = sample_diffusion(prior, cond, 4, steps=4, cfg=1.5, generator=gen)
    assert torch.equal(got, want.cpu().to(got.dtype))


def one_line_error(r) -> str:
    assert r.returncode == 1, r.stderr.decode()
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("regvq: error: "), lines
    return lines[0]


def test_conditions_the_prior_was_not_trained_for(ar_model, tmp_path):
    line = one_line_error(invoke("sample", "-m", ar_model, "--prompt", "a cat", "-o", tmp_path / "x"))
    assert "class-conditional" in line and "prompts" in line
    line = one_line_error(invoke("sample", "-m", ar_model, "--class", "bird", "-o", tmp_path / "x"))
    assert "unknown class 'bird'" in line and "cat, dog" in line
    line = one_line_error(invoke("sample", "-m", ar_model, "-o", tmp_path / "x"))
    assert "give class ids or names" in line


def test_no_model_and_no_installed_default(monkeypatch, tmp_path):
    from regvq_cli.engine import resolve

    empty = tmp_path / "models"
    empty.mkdir()
    monkeypatch.setattr(resolve, "shipped_models_dir", lambda: empty)
    line = one_line_error(invoke("sample", "--prompt", "a red bird", "-o", tmp_path / "bird.png"))
    assert "regvq-text2img" in line and "--model" in line
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8), mode="L").save(tmp_path / "map.png")
    line = one_line_error(invoke("sample", "--seg-map", tmp_path / "map.png", "-o", tmp_path / "x"))
    assert "regvq-seg2img" in line and "--model" in line
    r = invoke("sample", "--class", "cat", "-o", tmp_path / "x")
    assert r.returncode == 2 and b"--model" in r.stderr


def test_refuses_to_write_a_png_to_a_terminal(tmp_path):
    import pty
    import subprocess
    import sys

    from tests.conftest import REPO

    main, other = pty.openpty()
    try:
        r = subprocess.run([sys.executable, "-m", "regvq_cli", "sample", "-m", tmp_path, "-o", "-"], stdout=other,
                           stderr=subprocess.PIPE, cwd=REPO, timeout=60)
    finally:
        os.close(main)
        os.close(other)
    assert r.returncode == 2 and b"terminal" in r.stderr


def test_tokenizer_override_warns_on_a_different_tokenizer(ar_model, tmp_path):
    torch.manual_seed(1)
    other = save_model(Tokenizer(TOKENIZERS["tok-test"]), tmp_path / "other")
    r = ok(invoke("sample", "-m", ar_model, "--class", "cat", "--tokenizer", other, "-o", tmp_path / "x.png"))
    assert b"is not the tokenizer the prior was trained on" in r.stderr
    r = ok(invoke("sample", "-m", ar_model, "--class", "cat", "-o", tmp_path / "y.png"))
    assert b"warning" not in r.stderr


def test_text_prior(work, tmp_path):
    from regvq_cli.data.dataset import TokenDataset

    imgs = make_images(tmp_path / "imgs", 4, seed=2)
    captions = ["a red square", "a blue circle", "a red circle", "a blue square"]
    with open(imgs / "metadata.jsonl", "w") as f:
        for i, text in enumerate(captions):
            f.write(json.dumps({"file_name": f"img{i:03d}.png", "text": text}) + "\n")
    ok(invoke("encode", "--workers", "0", imgs, "-o", tmp_path / "tokens", "-m", work / "tok", "--device", "cpu"))
    r = ok(train(tmp_path / "tokens", tmp_path / "run", "--preset", "ar-test", "--max-steps", "2"))
    model = json.loads(r.stdout)["model"]
    assert (tmp_path / "run" / "text_states.safetensors").is_file()
    ok(invoke("sample", "-m", model, "--prompt", "a blue bird", "--prompts-from", "-", "--seed", "0",
              "-o", tmp_path / "out", "--tokens-out", tmp_path / "gen", input="a red bird\n\na green bird\n"))
    assert sorted(os.listdir(tmp_path / "out")) == ["000000-a-blue-bird.png", "000001-a-red-bird.png",
                                                    "000002-a-green-bird.png"]
    ds = TokenDataset(tmp_path / "gen")
    assert [ds[i]["caption"] for i in range(3)] == ["a blue bird", "a red bird", "a green bird"]
    line = one_line_error(invoke("sample", "-m", model, "--class", "0", "-o", tmp_path / "x"))
    assert "text-conditional" in line
    assert np.asarray(Image.open(tmp_path / "out" / "000000-a-blue-bird.png")).shape == (32, 32, 3)


def test_eval_gen_samples_a_class_prior_in_turn(work, ar_model, tmp_path):
    ref = make_images(tmp_path / "ref", 12, seed=3)
    r = ok(invoke("eval", "gen", "-m", ar_model, "-n", "12", "--ref", ref, "--fid-method", "eigh", "--device", "cpu",
                  "--workers", "0", "--json"))
    result = json.loads(r.stdout)
    assert result["kind"] == "gen" and result["protocol"]["n_images"] == 12 and result["protocol"]["model"] == ar_model
    assert result["metrics"]["fid"] > 0 and result["protocol"]["image_size"] == [32, 32]
    assert result["metrics"]["class_agreement"] is None  # the reference has no classes
    assert any("class agreement not measured" in w for w in result["warnings"])
    # a reference in class sub-folders named like the prior's classes: agreement of the samples' classes
    make_images(tmp_path / "ref2" / "cat", 6, seed=4)
    make_images(tmp_path / "ref2" / "dog", 6, seed=5)
    r = ok(invoke("eval", "gen", "-m", ar_model, "-n", "12", "--ref", tmp_path / "ref2", "--fid-method", "eigh",
                  "--device", "cpu", "--workers", "0"))
    line = next(x for x in r.stdout.decode().splitlines() if x.startswith("class_agreement"))
    assert "over 12 samples (chance 0.5; the 5-NN classifier on the references:" in line
    r = invoke("eval", "gen", "--ref", ref)
    assert r.returncode == 2 and b"either --samples DIR or --model PRIOR" in r.stderr


# ---- --init: fine-tuning from a model -----------------------------------------------------------------------

def test_init_starts_a_new_run_from_the_models_weights_and_a_rerun_resumes(work, ar_model, tmp_path):
    from regvq_cli.engine.resolve import load

    base = load(ar_model)
    run = tmp_path / "ft"
    # no --kind / --preset / --cond: the model's. lr 1e-30 moves no fp32 weight, so after a real step the exported
    # EMA must still equal the init weights exactly; --cond-dropout and --dropout follow the command line
    args = ["--init", ar_model, "--lr", "1e-30", "--weight-decay", "0", "--cond-dropout", "0.2", "--dropout", "0.1"]
    r = ok(train(work / "tokens", run, *args, "--max-steps", "1"))
    ft = load(json.loads(r.stdout)["model"])
    want, got = base.state_dict(), ft.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert ft.config == dataclasses.replace(base.config, cond_dropout=0.2, dropout=0.1)
    record = json.loads((run / "model" / "config.json").read_text())
    assert record["info"]["init"]["spec"] == ar_model and record["info"]["train_config"]["init"] == ar_model
    assert record["info"]["train_config"]["preset"] == "ar-test" and record["info"]["train_config"]["cond"] == "auto"
    assert "fine-tuned from" in (run / "model" / "README.md").read_text()
    # a rerun continues the run (the resume state wins over --init, even one that no longer resolves)
    r = ok(train(work / "tokens", run, *args[2:], "--init", tmp_path / "gone", "--max-steps", "2"))
    assert b"--init is ignored" in r.stderr
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    record = json.loads((run / "model" / "config.json").read_text())
    assert record["info"]["init"]["spec"] == ar_model and record["info"]["steps"] == 2


def test_init_refuses_another_architecture_or_other_data(work, ar_model, tmp_path):
    torch.manual_seed(0)
    f8 = save_model(Tokenizer(TOKENIZERS["tok-test-f8"]), tmp_path / "tok-f8")
    make_images(tmp_path / "imgs" / "cat", 2, seed=0)
    make_images(tmp_path / "imgs" / "dog", 2, seed=1)
    ok(invoke("encode", "--workers", "0", tmp_path / "imgs", "-o", tmp_path / "tokens-f8", "-m", f8, "--device", "cpu"))
    ok(invoke("encode", "--workers", "0", tmp_path / "imgs" / "cat", "-o", tmp_path / "unlabelled", "-m", work / "tok",
              "--device", "cpu"))
    cases = [
        (work / "tokens", ["--kind", "diffusion"], "is a ar prior, not diffusion"),
        (work / "tokens", ["--preset", "ar-small"], "not a ar-small prior (its dim is 32, the preset's 384)"),
        (work / "tokens", ["--preset", "diffusion-test"], "not a diffusion-test prior (it is a ar prior)"),
        (work / "tokens", ["--cond", "none"], "models cond 'class', but"),
        (tmp_path / "tokens-f8", [], "models grid_size (8, 8), but"),
        (tmp_path / "unlabelled", [], "is conditioned on class (labels)"),
    ]
    for tokens, args, words in cases:
        line = one_line_error(train(tokens, tmp_path / "run", "--init", ar_model, *args))
        assert line.startswith("regvq: error: --init") and words in line, line
        assert not (tmp_path / "run").exists()
    line = one_line_error(train(work / "tokens", tmp_path / "run", "--init", work / "tok"))
    assert "needs a prior" in line


def test_only_rank_zero_reports_the_export(monkeypatch, capsys):
    """Under torchrun only rank 0's progress callback counts steps: another rank must not warn that none ran."""
    from regvq_cli.cli import _common

    monkeypatch.setattr(_common, "_verbosity", 0)
    monkeypatch.setenv("RANK", "1")
    _common.report_export("run/model", "run", 0, 5, as_json=True)
    assert capsys.readouterr() == ("", "")
    monkeypatch.setenv("RANK", "0")
    _common.report_export("run/model", "run", 0, 5, as_json=True)
    out, err = capsys.readouterr()
    assert "no training step ran" in err and json.loads(out)["model"] == "run/model"


@pytest.mark.parametrize("args", [
    ("sample", "-m", "x", "--class", "1", "-o", "x.png", "--cfg", "nan"),
    ("sample", "-m", "x", "--class", "1", "-o", "x.png", "--cfg", "inf"),
    ("sample", "-m", "x", "--class", "1", "-o", "x.png", "--temperature", "nan"),
    ("sample", "-m", "x", "--class", "1", "-o", "x.png", "--top-p", "nan"),
    ("eval", "gen", "-m", "x", "--ref", ".", "--cfg", "inf"),
    ("train-prior", ".", "-o", "run", "--lr", "nan"),
    ("train-prior", ".", "-o", "run", "--time-limit", "nan"),
    ("train-prior", ".", "-o", "run", "--sample-cfg", "inf"),
    ("train-prior", ".", "-o", "run", "--betas", "nan", "0.9"),
])
def test_non_finite_numbers_are_usage_errors(args, tmp_path, monkeypatch):
    # nan compares false against any bound, so a plain range lets it (and inf above a lower bound) through
    monkeypatch.chdir(tmp_path)
    r = invoke(*args)
    assert r.returncode == 2, r.stderr.decode()
    assert b"not a finite number" in r.stderr


@pytest.mark.parametrize("args", [
    ("sample", "-m", "x", "--class", "1", "-o", "x.png", "--seed", str(2 ** 64)),
    ("eval", "gen", "-m", "x", "--ref", ".", "--seed", "-5"),
    ("eval", "recon", ".", "--seed", "-1"),
    ("train-prior", ".", "-o", "run", "--seed", str(2 ** 64)),
])
def test_seeds_the_generators_cannot_take_are_usage_errors(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = invoke(*args)
    assert r.returncode == 2, r.stderr.decode()
    assert b"--seed" in r.stderr and b"is not in the range" in r.stderr


def test_out_that_cannot_be_written_is_refused_before_sampling(tmp_path):
    (tmp_path / "notes").write_text("kept")
    r = invoke("sample", "-m", tmp_path / "no-model", "--class", "1", "-n", "2", "-o", tmp_path / "notes")
    assert r.returncode == 2 and b"is a file" in r.stderr, r.stderr.decode()
    assert (tmp_path / "notes").read_text() == "kept"
    (tmp_path / "sheet.png").mkdir()
    r = invoke("sample", "-m", tmp_path / "no-model", "--class", "1", "-o", tmp_path / "sheet.png")
    assert r.returncode == 2 and b"is a folder" in r.stderr, r.stderr.decode()


@pytest.mark.parametrize("prompt", ["", "   "])
def test_an_empty_prompt_is_a_usage_error(prompt, tmp_path):
    r = invoke("sample", "--prompt", "a red bird", "--prompt", prompt, "-o", tmp_path / "out")
    assert r.returncode == 2 and b"an empty prompt" in r.stderr and not (tmp_path / "out").exists(), r.stderr


def test_prompts_file_without_prompts_or_not_utf8(tmp_path):
    (tmp_path / "empty.txt").write_text("\n  \n")
    r = invoke("sample", "--prompts-from", tmp_path / "empty.txt", "-o", tmp_path / "x.png")
    assert r.returncode == 2 and b"holds no prompts" in r.stderr, r.stderr.decode()
    r = invoke("sample", "--prompts-from", "-", "-o", tmp_path / "x.png", input="")
    assert r.returncode == 2 and b"holds no prompts" in r.stderr, r.stderr.decode()
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    r = invoke("sample", "--prompts-from", tmp_path / "latin1.txt", "-o", tmp_path / "x.png")
    assert r.returncode == 2 and b"not UTF-8" in r.stderr and b"Traceback" not in r.stderr, r.stderr.decode()
    from regvq_cli.cli.sample import read_prompts

    (tmp_path / "bom.txt").write_bytes("a red bird\r\na blue car\r\n".encode("utf-8-sig"))  # as Notepad saves it
    assert read_prompts(str(tmp_path / "bom.txt")) == ["a red bird", "a blue car"]


def test_resuming_with_another_kind_preset_or_condition_names_the_option(work, tmp_path):
    ok(train(work / "tokens", tmp_path / "run", "--preset", "ar-test", "--max-steps", "1"))
    for args, want in ((("--kind", "diffusion", "--preset", "diffusion-test"), "--kind ar, not diffusion"),
                       (("--preset", "ar-small"), "--preset ar-test, not ar-small"),
                       (("--preset", "ar-test", "--cond", "none"), "--cond class, not none")):
        line = one_line_error(train(work / "tokens", tmp_path / "run", *args))
        assert want in line and "new run directory" in line, line


def test_a_fine_tuned_run_resumed_with_another_preset_given_is_refused(work, ar_model, tmp_path):
    run = tmp_path / "run"
    ok(train(work / "tokens", run, "--init", ar_model, "--max-steps", "1"))
    line = one_line_error(train(work / "tokens", run, "--preset", "ar-small", "--max-steps", "2"))
    assert line == (f"regvq: error: {run} was started with --preset ar-test, not ar-small: rerun with the same "
                    "settings to resume it, or use a new run directory"), line
    ok(train(work / "tokens", run, "--preset", "ar-test", "--max-steps", "2"))  # the run's own: fine


def test_a_resume_on_data_of_another_size_says_so(work, tmp_path):
    ok(invoke("encode", "--workers", "0", work / "imgs" / "cat", "-o", tmp_path / "cats", "-m", work / "tok",
              "--device", "cpu"))
    ok(train(tmp_path / "cats", tmp_path / "run", "--preset", "ar-test", "--cond", "none", "--max-steps", "1"))
    r = ok(train(tmp_path / "cats", tmp_path / "run", "--preset", "ar-test", "--cond", "none", "--max-steps", "2"))
    assert b"token grids" not in r.stderr  # the same data: nothing to say
    r = ok(train(work / "tokens", tmp_path / "run", "--preset", "ar-test", "--cond", "none", "--max-steps", "3"))
    assert (f"regvq: warning: {tmp_path / 'run'} was trained on 4 token grids up to step 2; the data holds 8 now, "
            "and the run goes on with it as it is") in r.stderr.decode(), r.stderr.decode()


def test_a_rerun_after_a_kill_drops_the_metrics_its_checkpoint_does_not_hold(work, tmp_path):
    run = tmp_path / "run"

    def steps():
        return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]

    ok(train(work / "tokens", run, "--preset", "ar-test", "--max-steps", "2"))  # checkpoint at step 2
    with open(run / "metrics.jsonl", "a") as f:  # what a run killed at step 4, writing step 5, leaves
        f.write('{"loss": 1.0, "step": 3}\n{"loss": 1.0, "step": 4}\n{"loss": 1.0, "st')
    ok(train(work / "tokens", run, "--preset", "ar-test", "--max-steps", "3"))
    assert steps() == [1, 2, 3]
    (run / "state.pt").unlink()  # killed before its first checkpoint: the rerun starts over
    ok(train(work / "tokens", run, "--preset", "ar-test", "--max-steps", "2"))
    assert steps() == [1, 2]


def test_a_token_folder_whose_manifest_grid_differs_from_its_shards_is_a_clean_error(work, tmp_path):
    import shutil

    shutil.copytree(work / "tokens", tmp_path / "tokens")
    manifest = json.loads((tmp_path / "tokens" / "manifest.json").read_text())
    manifest["grid"] = [4, 4]  # the shards hold 8x8 grids
    (tmp_path / "tokens" / "manifest.json").write_text(json.dumps(manifest))
    r = train(tmp_path / "tokens", tmp_path / "run", "--preset", "ar-test")
    assert r.returncode == 1 and r.stderr.count(b"\n") == 1, r.stderr.decode()
    assert b"regvq shards verify" in r.stderr and b"broadcast" not in r.stderr, r.stderr.decode()
