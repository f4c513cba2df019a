"""`regvq eval recon | gen` and `regvq codebook` through the CLI."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from regvq_cli.engine.checkpoint import save_model
from regvq_cli.eval.result import validate_result
from regvq_cli.tokenizer.model import Tokenizer
from regvq_cli.tokenizer.presets import PRESETS
from tests.conftest import invoke
from tests.test_encode_decode import make_images


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    torch.manual_seed(0)
    return save_model(Tokenizer(PRESETS["tok-test"]), tmp_path_factory.mktemp("tok") / "tok")


def test_recon_json_follows_the_schema_and_skips_bad_files(tmp_path, tok):
    imgs = make_images(tmp_path / "imgs", 4)
    (imgs / "broken.png").write_bytes(b"\x89PNG broken")
    r = invoke("eval", "recon", imgs, "-m", tok, "--json", "--workers", "0")
    assert r.returncode == 0, r.stderr.decode()
    result = json.loads(r.stdout)
    validate_result(result)
    assert result["kind"] == "recon" and result["protocol"]["n_images"] == 4
    assert result["metrics"]["rfid"] is None  # 4 images: too few for FID, said on stderr
    assert 0 < result["metrics"]["psnr"] < 100 and result["metrics"]["codebook_size"] == 64
    assert b"skipped broken.png" in r.stderr and b"too few for rFID" in r.stderr
    assert b"5 inputs are too few" in r.stderr  # 4 images and a broken file: not "5 images"


def test_gen_measures_fid_kid_precision_recall(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(12):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    r = invoke("eval", "gen", "--samples", tmp_path / "a", "--ref", tmp_path / "b", "--size", "32", "--fid-method",
               "eigh", "--json", "--workers", "0", "--device", "cpu")
    assert r.returncode == 0, r.stderr.decode()
    result = json.loads(r.stdout)
    validate_result(result)
    assert result["metrics"]["fid"] > 0 and result["metrics"]["fid_biased"] is True
    assert isinstance(result["metrics"]["kid"], float)
    assert all(0 <= result["metrics"][k] <= 1 for k in ("precision", "recall"))
    assert result["protocol"]["feature_network"].startswith("inception")

    # the reference's statistics computed once, alone, then used in place of its images: the same numbers
    stats = tmp_path / "b-stats.safetensors"
    r = invoke("eval", "gen", "--ref", tmp_path / "b", "--save-ref-stats", stats, "--size", "32", "--json",
               "--workers", "0", "--device", "cpu")
    assert r.returncode == 0, r.stderr.decode()
    saved = json.loads(r.stdout)
    assert saved["n_images"] == 12 and saved["features_kept"] and saved["protocol"]["image_size"] == [32, 32]
    r = invoke("eval", "gen", "--samples", tmp_path / "a", "--ref", stats, "--size", "32", "--fid-method", "eigh",
               "--json", "--workers", "0", "--device", "cpu")
    assert r.returncode == 0, r.stderr.decode()
    cached = json.loads(r.stdout)["metrics"]
    for key in ("fid", "kid", "precision", "recall"):
        assert cached[key] == pytest.approx(result["metrics"][key], rel=1e-6), key
    r = invoke("eval", "gen", "--ref", stats, "--save-ref-stats", tmp_path / "again.safetensors")
    assert r.returncode == 2 and b"already statistics" in r.stderr


def test_codebook_over_images_and_over_tokens(tmp_path, tok):
    imgs = make_images(tmp_path / "imgs", 3)
    r = invoke("codebook", tok, imgs, "--json", "--plot", tmp_path / "use.png")
    assert r.returncode == 0, r.stderr.decode()
    from_images = json.loads(r.stdout)
    assert from_images["n_tokens"] == 3 * 8 * 8 and Image.open(tmp_path / "use.png").size[0] > 0
    assert invoke("encode", imgs, "-o", tmp_path / "tokens", "-m", tok, "--workers", "0").returncode == 0
    from_tokens = json.loads(invoke("codebook", tok, tmp_path / "tokens", "--json").stdout)
    assert from_tokens["dead_codes"] == from_images["dead_codes"] and from_tokens["n_tokens"] == from_images["n_tokens"]


def test_codebook_over_nothing_usable_is_an_error(tmp_path, tok):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not an image")
    r = invoke("codebook", tok, tmp_path / "imgs")
    err = r.stderr.decode()
    assert r.returncode == 1 and "skipped broken.png" in err and "error: no tokens to count" in err, err
    assert "Traceback" not in err


def test_codebook_table_shortens_a_long_dead_code_list(tmp_path, tok):
    r = invoke("codebook", tok, make_images(tmp_path / "imgs", 1))
    line = next(x for x in r.stdout.decode().splitlines() if x.startswith("dead_code_indices"))
    dead = int(next(x for x in r.stdout.decode().splitlines() if x.startswith("dead_codes")).split()[1])
    assert r.returncode == 0 and dead > 20 and f"({dead} in all; --json lists them)" in line, line


def test_gen_reads_ref_statistics_saved_under_any_file_name(tmp_path):
    # --save-ref-stats writes whatever name it is given; --ref must read that file back as statistics
    make_images(tmp_path / "samples", 10)
    (tmp_path / "train.stats").write_bytes(b"not statistics")
    r = invoke("eval", "gen", "--samples", tmp_path / "samples", "--ref", tmp_path / "train.stats", "--workers", "0",
               "--device", "cpu")
    assert r.returncode == 1 and b"recompute the statistics" in r.stderr, r.stderr.decode()
    assert b"not an image" not in r.stderr


def test_codebook_with_data_alone_uses_the_default_tokenizer(tmp_path, tok):
    # MODEL is optional and comes first: one argument that is data, not a model, is DATA
    r = invoke("codebook", make_images(tmp_path / "imgs", 1), "--json", "--device", "cpu")
    assert r.returncode == 0, r.stderr.decode()
    report = json.loads(r.stdout)
    assert report["codebook_size"] == 1024 and report["n_tokens"] == 16 * 16
    r = invoke("codebook", tok)  # a model alone still lacks DATA
    assert r.returncode == 2 and b"give DATA" in r.stderr


def test_gen_says_which_folder_has_no_images(tmp_path):
    make_images(tmp_path / "imgs", 10)
    (tmp_path / "empty").mkdir()
    r = invoke("eval", "gen", "--samples", tmp_path / "empty", "--ref", tmp_path / "imgs", "--device", "cpu")
    assert r.returncode == 1 and b"--samples" in r.stderr and b"no images found" in r.stderr, r.stderr.decode()
    r = invoke("eval", "gen", "--samples", tmp_path / "imgs", "--ref", tmp_path / "empty", "--device", "cpu")
    assert r.returncode == 1 and b"--ref" in r.stderr and b"no images found" in r.stderr, r.stderr.decode()


def test_gen_refuses_sampling_options_with_given_samples(tmp_path):
    """--cfg, --steps, --sampler and --num-samples act on --model's sampling; with --samples they were ignored."""
    make_images(tmp_path / "imgs", 10)
    r = invoke("eval", "gen", "--samples", tmp_path / "imgs", "--ref", tmp_path / "imgs", "--device", "cpu",
               "--cfg", "3", "--steps", "8")
    assert r.returncode == 2 and b"--cfg, --steps sample from --model" in r.stderr, r.stderr.decode()


def test_recon_text_says_one_image_and_names_no_missing_feature_network(tmp_path, tok):
    imgs = make_images(tmp_path / "imgs", 1)
    for flags in ([], ["--no-fid"]):
        r = invoke("eval", "recon", imgs, "-m", tok, "--workers", "0", *flags)
        assert r.returncode == 0, r.stderr.decode()
        assert b"protocol: 1 image at [32, 32], resize shorter-crop\n" in r.stderr, r.stderr.decode()
        assert b"1 images" not in r.stderr and b"None" not in r.stderr


def test_gen_with_too_small_a_reference_says_which_set_is_short(tmp_path):
    make_images(tmp_path / "samples", 12)
    make_images(tmp_path / "ref", 6)
    (tmp_path / "ref" / "broken.png").write_bytes(b"")  # listed, then skipped: 6 reference images are left
    r = invoke("eval", "gen", "--samples", tmp_path / "samples", "--ref", tmp_path / "ref", "--size", "32",
               "--workers", "0", "--device", "cpu")
    line = r.stderr.decode().strip().splitlines()[-1]
    assert r.returncode == 1 and line == ("regvq: error: FID needs at least 10 reference images, got 6; give a "
                                          "reference with more images"), line


def test_gen_help_offers_no_option_it_refuses():
    gen = invoke("eval", "gen", "--help")
    assert gen.returncode == 0 and b"--no-fid" not in gen.stdout, gen.stdout.decode()
    assert b"--no-fid" in invoke("eval", "recon", "--help").stdout


def test_gen_with_cached_reference_says_the_statistics_carry_no_classes():
    from regvq_cli.eval import fid as fidlib
    from regvq_cli.eval.gen import evaluate_gen

    def features(x):  # [B, 3, H, W] -> [B, 3]: the mean colour
        return x.mean((2, 3))

    torch.manual_seed(0)
    ref = fidlib.FeatureStats(keep_features=True)  # cached statistics: features, no class names
    ref.update(torch.randn(12, 3))
    samples = [(torch.rand(6, 3, 8, 8) * 2 - 1, ["cat"] * 3 + ["dog"] * 3) for _ in range(2)]
    result = evaluate_gen(samples, ref, feature_fn=features)
    assert result["metrics"]["class_agreement"] is None
    warning = [w for w in result["warnings"] if "class agreement" in w]
    assert warning and "statistics" in warning[0] and "sub-folders" not in warning[0], result["warnings"]


def test_recon_json_says_why_rfid_is_missing(tmp_path, tok):
    imgs = make_images(tmp_path / "imgs", 2)
    r = invoke("eval", "recon", imgs, "-m", tok, "--json", "--workers", "0")
    assert r.returncode == 0, r.stderr.decode()
    result = json.loads(r.stdout)
    assert result["metrics"]["rfid"] is None
    assert any("too few for rFID" in w for w in result["warnings"]), result["warnings"]
    text = invoke("eval", "recon", imgs, "-m", tok, "--workers", "0")
    assert text.stderr.count(b"too few for rFID") == 1, text.stderr.decode()
