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
