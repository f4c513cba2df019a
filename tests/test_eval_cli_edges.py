"""Edge cases of `regvq eval recon | gen` and `regvq codebook`: few images, reused statistics, options that do not
apply, token folders and plot paths."""

import json

import pytest
import torch

from regvq_cli.engine.checkpoint import save_model
from regvq_cli.tokenizer.model import Tokenizer
from regvq_cli.tokenizer.presets import PRESETS
from tests.conftest import invoke
from tests.test_encode_decode import make_images


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    torch.manual_seed(0)
    return save_model(Tokenizer(PRESETS["tok-test"]), tmp_path_factory.mktemp("tok") / "tok")


@pytest.fixture(scope="module")
def priors(tmp_path_factory, tok):
    """An AR and a diffusion prior of one training step over the tokens of 4 images: {kind: model folder}."""
    root = tmp_path_factory.mktemp("priors")
    imgs = make_images(root / "imgs", 4)
    assert invoke("encode", imgs, "-o", root / "tokens", "-m", tok, "--workers", "0", "--device", "cpu").returncode == 0
    made = {}
    for kind in ("ar", "diffusion"):
        r = invoke("train-prior", root / "tokens", "-o", root / kind, "--kind", kind, "--preset", f"{kind}-test",
                   "--max-steps", "1", "--batch-size", "4", "--sample-every", "0", "--device", "cpu", "--json")
        assert r.returncode == 0, r.stderr.decode()
        made[kind] = json.loads(r.stdout)["model"]
    return made


def test_recon_with_too_few_readable_images_reports_the_other_metrics(tmp_path, tok):
    imgs = make_images(tmp_path / "imgs", 8)
    for i in range(2):  # 10 inputs listed, 8 readable: the shortage shows only during the pass
        (imgs / f"broken{i}.png").write_bytes(b"\x89PNG broken")
    r = invoke("eval", "recon", imgs, "-m", tok, "--json", "--workers", "0", "--device", "cpu")
    assert r.returncode == 0, r.stderr.decode()
    result = json.loads(r.stdout)
    assert result["metrics"]["rfid"] is None and result["metrics"]["kid"] is None
    assert result["metrics"]["psnr"] > 0 and result["metrics"]["codebook_size"] == 64
    assert result["protocol"]["n_images"] == 8 and result["protocol"]["feature_network"] is None
    assert any("8 images were readable, too few for rFID" in w for w in result["warnings"]), result["warnings"]


def test_fid_below_the_minimum_suggests_nothing_the_cli_lacks():
    from regvq_cli.errors import RegvqError
    from regvq_cli.eval import fid as fidlib

    small = fidlib.FeatureStats.from_features(torch.randn(8, 4))
    with pytest.raises(RegvqError) as e:
        fidlib.fid_from_stats(small, small)
    assert "evaluate more images" in str(e.value) and "KID" not in str(e.value)


def test_recon_says_when_cached_statistics_come_from_other_images(tmp_path, tok):
    one, other = make_images(tmp_path / "one", 10, seed=1), make_images(tmp_path / "other", 10, seed=2)
    stats = tmp_path / "one.stats"
    args = ("-m", tok, "--json", "--workers", "0", "--device", "cpu", "--fid-method", "eigh", "--ref-stats", stats)
    assert invoke("eval", "recon", one, *args).returncode == 0 and stats.exists()
    r = invoke("eval", "recon", other, *args)  # not refused: the same data set may sit under another path
    assert r.returncode == 0, r.stderr.decode()
    said = f"the statistics in {stats} were computed over {one}, not {other}"
    assert said in r.stderr.decode() and any(said in w for w in json.loads(r.stdout)["warnings"]), r.stderr.decode()
    from regvq_cli.cli.eval import same_paths

    assert same_paths(f"{one}", f"{one}/") and same_paths("a/b c", "./a/b c/") and not same_paths("a", "a b")


def test_recon_says_ref_stats_go_unused_without_rfid(tmp_path, tok):
    stats = tmp_path / "s.stats"
    # --no-fid; too few images listed for rFID; enough listed, too few readable
    for n, broken, flags in ((10, 0, ["--no-fid"]), (2, 0, []), (8, 2, [])):
        imgs = make_images(tmp_path / f"imgs{n}", n)
        for i in range(broken):
            (imgs / f"broken{i}.png").write_bytes(b"")
        r = invoke("eval", "recon", imgs, "-m", tok, "--workers", "0", "--device", "cpu", "--ref-stats", stats, *flags)
        assert r.returncode == 0, r.stderr.decode()
        assert f"--ref-stats {stats} is unused" in r.stderr.decode() and not stats.exists(), r.stderr.decode()


def test_gen_refuses_diffusion_options_for_an_ar_prior(tmp_path, priors):
    ref = make_images(tmp_path / "ref", 10)
    for flag in (["--steps", "4"], ["--sampler", "maskgit"]):  # as `regvq sample` refuses them
        r = invoke("eval", "gen", "-m", priors["ar"], "-n", "10", "--ref", ref, "--device", "cpu", *flag)
        err = r.stderr.decode()
        assert r.returncode == 2 and "--steps and --sampler apply to diffusion priors only" in err, err


def test_gen_records_how_the_prior_sampled(tmp_path, priors):
    ref = make_images(tmp_path / "ref", 10)
    r = invoke("eval", "gen", "-m", priors["diffusion"], "-n", "10", "--steps", "2", "--sampler", "maskgit", "--cfg",
               "1", "--batch-size", "5", "--seed", "3", "--ref", ref, "--fid-method", "eigh", "--workers", "0",
               "--device", "cpu", "--json")
    assert r.returncode == 0, r.stderr.decode()
    protocol = json.loads(r.stdout)["protocol"]
    assert protocol["sampling"] == {"cfg": 1.0, "steps": 2, "sampler": "maskgit", "temperature": 1.0, "top_k": 0,
                                    "top_p": 1.0, "batch_size": 5}
    assert protocol["seed"] == 3 and protocol["model"] == priors["diffusion"]


def test_gen_seed_help_says_it_seeds_the_sampling():
    assert b"of the sampling" in invoke("eval", "gen", "--help").stdout
    assert b"of the sampling" not in invoke("eval", "recon", "--help").stdout


@pytest.fixture(scope="module")
def tokens(tmp_path_factory, tok):
    """A token folder of 3 images, encoded with the 64-code test tokenizer."""
    root = tmp_path_factory.mktemp("tokens")
    imgs = make_images(root / "imgs", 3)
    assert invoke("encode", imgs, "-o", root / "tokens", "-m", tok, "--workers", "0", "--device", "cpu").returncode == 0
    return root / "tokens"


def test_codebook_of_a_token_folder_alone_needs_no_model(tokens, tok, tmp_path):
    r = invoke("codebook", tokens, "--json", "--plot", tmp_path / "use.png")  # not the 1024-code default tokenizer
    assert r.returncode == 0, r.stderr.decode()
    alone = json.loads(r.stdout)
    assert alone["codebook_size"] == 64 and alone["n_tokens"] == 3 * 8 * 8 and (tmp_path / "use.png").exists()
    assert json.loads(invoke("codebook", tok, tokens, "--json").stdout) == alone


def test_codebook_limit_counts_the_first_token_rows(tokens):
    r = invoke("codebook", tokens, "--json", "--limit", "2")
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads(r.stdout)["n_tokens"] == 2 * 8 * 8


def test_codebook_plot_not_named_png_is_a_usage_error(tokens, tmp_path):
    r = invoke("codebook", tokens, "--plot", tmp_path / "use.jpg")  # the bytes written are a PNG's
    assert r.returncode == 2 and b"name it .png" in r.stderr and b"--plot" in r.stderr, r.stderr.decode()
    assert not (tmp_path / "use.jpg").exists()


def test_codebook_plot_folder_is_made_or_refused_before_the_pass(tokens, tok, tmp_path):
    r = invoke("codebook", tokens, "--plot", tmp_path / "new" / "use.png")
    assert r.returncode == 0 and (tmp_path / "new" / "use.png").exists(), r.stderr.decode()
    (tmp_path / "file").write_bytes(b"")
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "broken.png").write_bytes(b"")  # would be "no tokens to count" after a pass
    r = invoke("codebook", tok, tmp_path / "imgs", "--plot", tmp_path / "file" / "use.png")
    lines = r.stderr.decode().strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "for --plot" in lines[0] and "is a file" in lines[0], lines


def test_codebook_most_used_leaves_out_dead_codes_as_least_used_does(tokens):
    r = invoke("codebook", tokens, "--json", "--top", "1000")
    assert r.returncode == 0, r.stderr.decode()
    report = json.loads(r.stdout)
    used = report["codebook_size"] - report["dead_codes"]
    assert len(report["most_used"]) == len(report["least_used"]) == used
    assert all(count > 0 for _, count in report["most_used"])
