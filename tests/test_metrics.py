"""Image metrics, codebook statistics, the usage plot, the result schema and `evaluate_recon`."""

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from regvq_cli.errors import RegvqError
from regvq_cli.eval import codebook, metrics
from regvq_cli.eval.batches import quantize_8bit, signed_to_uint8, uint8_to_signed
from regvq_cli.eval.recon import evaluate_recon
from regvq_cli.eval.result import SCHEMA, validate_result

# -- PSNR / L1 -----------------------------------------------------------------------------------


def test_psnr_known_mse_both_data_ranges():
    x = torch.full((2, 3, 8, 8), 0.5)
    y = x.clone()
    y[0] += 0.1  # MSE 0.01 -> 20 dB
    y[1] += 0.01  # MSE 1e-4 -> 40 dB
    got = metrics.psnr(x, y, data_range=1.0)
    assert torch.allclose(got, torch.tensor([20.0, 40.0], dtype=torch.float64), atol=1e-5)
    got255 = metrics.psnr(x * 255, y * 255, data_range=255.0)
    assert torch.allclose(got255, got, atol=1e-5)


def test_psnr_identical_is_inf_and_mse_by_hand():
    x = torch.rand(1, 3, 5, 5)
    assert math.isinf(float(metrics.psnr(x, x)[0]))
    y = x.clone()
    y[0, 0, 0, 0] += 0.3  # one pixel of 75 off by 0.3: MSE = 0.09 / 75
    assert float(metrics.mse(x, y)[0]) == pytest.approx(0.09 / 75, rel=1e-5)
    assert float(metrics.psnr(x, y)[0]) == pytest.approx(10 * math.log10(75 / 0.09), rel=1e-5)


def test_l1_per_image():
    x = torch.zeros(2, 3, 4, 4)
    y = torch.zeros(2, 3, 4, 4)
    y[0] = 0.25
    y[1, 0] = 0.6  # one channel of three
    assert metrics.l1(x, y).tolist() == pytest.approx([0.25, 0.2])


def test_shape_mismatch_is_refused():
    with pytest.raises(RegvqError, match="different shapes"):
        metrics.psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))


# -- SSIM ----------------------------------------------------------------------------------------


def _ssim_direct(x: np.ndarray, y: np.ndarray, data_range=1.0) -> float:
    """Wang et al. 2004 written out with loops: for every channel and every window position that fits,
    Gaussian-weighted means, variances and covariance, then the SSIM formula; average of everything."""
    k, sigma = 11, 1.5
    g = np.exp(-((np.arange(k) - 5.0) ** 2) / (2 * sigma**2))
    w = np.outer(g, g)
    w /= w.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    C, H, W = x.shape
    for c in range(C):
        for i in range(H - k + 1):
            for j in range(W - k + 1):
                px, py = x[c, i : i + k, j : j + k], y[c, i : i + k, j : j + k]
                mx, my = (w * px).sum(), (w * py).sum()
                vx = (w * (px - mx) ** 2).sum()
                vy = (w * (py - my) ** 2).sum()
                cxy = (w * (px - mx) * (py - my)).sum()
                values.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_matches_direct_implementation():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 14, 13, generator=g)
    y = (x + 0.2 * torch.randn(2, 3, 14, 13, generator=g)).clamp(0, 1)
    got = metrics.ssim(x, y)
    for b in range(2):
        assert float(got[b]) == pytest.approx(_ssim_direct(x[b].double().numpy(), y[b].double().numpy()), abs=1e-10)
    assert 0.0 < float(got.min()) < 0.95  # the noise is visible


def _ssim_pair():
    i, j = np.meshgrid(np.arange(24), np.arange(21), indexing="ij")
    x = np.stack([0.5 + 0.4 * np.sin(0.3 * i + 0.2 * c) * np.cos(0.25 * j) for c in range(3)], -1)
    y = np.clip(x + 0.15 * np.sin(1.7 * i + 2.3 * j)[..., None] * np.array([1.0, -0.5, 0.8]), 0, 1)
    return [torch.from_numpy(a).permute(2, 0, 1)[None] for a in (x, y)]  # [1, 3, 24, 21] float64


def test_ssim_matches_stored_scikit_image_value():
    ref = json.loads((Path(__file__).parent / "data" / "ssim_reference.json").read_text())
    x, y = _ssim_pair()
    assert float(metrics.ssim(x, y)[0]) == pytest.approx(ref["ssim"], abs=1e-12)


def test_ssim_identical_is_one_and_constant_images_by_hand():
    x = torch.rand(1, 3, 16, 16)
    assert float(metrics.ssim(x, x)[0]) == pytest.approx(1.0, abs=1e-12)
    # constant images: no variance, so SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    a, b = 0.3, 0.7
    c1 = 0.01**2
    got = metrics.ssim(torch.full((1, 1, 12, 12), a, dtype=torch.float64), torch.full((1, 1, 12, 12), b, dtype=torch.float64))
    assert float(got[0]) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-9)
    # the same pictures in 8-bit units with data_range 255 give the same value
    got255 = metrics.ssim(torch.full((1, 1, 12, 12), a * 255), torch.full((1, 1, 12, 12), b * 255), data_range=255.0)
    assert float(got255[0]) == pytest.approx(float(got[0]), rel=1e-9)


def test_ssim_refuses_images_smaller_than_window():
    with pytest.raises(RegvqError, match="at least 11x11"):
        metrics.ssim(torch.zeros(1, 3, 10, 32), torch.zeros(1, 3, 10, 32))


# -- codebook statistics -------------------------------------------------------------------------


def test_usage_and_perplexity_constructed_histograms():
    n = 64
    uniform = torch.full((n,), 5)
    assert metrics.codebook_usage(uniform) == 100.0
    assert metrics.codebook_perplexity(uniform) == pytest.approx(n)
    one = torch.zeros(n, dtype=torch.long)
    one[7] = 1000
    assert metrics.codebook_usage(one) == pytest.approx(100 / n)
    assert metrics.codebook_perplexity(one) == pytest.approx(1.0)
    assert metrics.dead_codes(one) == [i for i in range(n) if i != 7]
    half = torch.zeros(n, dtype=torch.long)
    half[::2] = 3  # 32 codes equally often
    assert metrics.codebook_usage(half) == 50.0
    assert metrics.codebook_perplexity(half) == pytest.approx(32)
    # two codes with p = 1/4, 3/4: exp(-(1/4 ln 1/4 + 3/4 ln 3/4))
    two = torch.tensor([1, 3, 0])
    assert metrics.codebook_perplexity(two) == pytest.approx(math.exp(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75))))


def test_histogram_most_least_used():
    idx = torch.tensor([[3, 3, 3], [1, 1, 0], [5, 3, 1]])  # counts: 0:1 1:3 3:4 5:1, others 0
    hist = metrics.code_histogram(idx, 8)
    assert hist.tolist() == [1, 3, 0, 4, 0, 1, 0, 0]
    assert metrics.most_used(hist, 2) == [(3, 4), (1, 3)]
    assert metrics.least_used(hist, 3) == [(0, 1), (5, 1), (1, 3)]  # dead codes are left out
    with pytest.raises(RegvqError, match="codebook has 4 codes"):
        metrics.code_histogram(idx, 4)


def test_codebook_report_and_batches():
    batches = [torch.tensor([[0, 1], [2, 3]]), torch.tensor([0, 0, 5])]
    hist = codebook.histogram_from_batches(batches, 8)
    rep = codebook.codebook_report(hist, top_k=2)
    assert rep["codebook_size"] == 8 and rep["n_tokens"] == 7
    assert rep["usage"] == pytest.approx(5 / 8 * 100)
    assert rep["dead_codes"] == 3 and rep["dead_code_indices"] == [4, 6, 7]
    assert rep["most_used"] == [[0, 3], [1, 1]]
    assert rep["entropy_bits"] == pytest.approx(math.log2(rep["perplexity"]))
    json.dumps(rep)


@pytest.mark.parametrize("n", [16, 5000])
def test_usage_plot_draws_bars_and_dead_codes(tmp_path, n):
    hist = torch.zeros(n, dtype=torch.long)
    hist[: n // 2] = torch.arange(1, n // 2 + 1)  # the second half is dead
    path = tmp_path / "usage.png"
    codebook.save_usage_plot(hist, str(path), width=400, height=200)
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert img.shape == (200, 400, 3)
    bar = (img[..., 0] == 52) & (img[..., 1] == 101) & (img[..., 2] == 164)
    red = (img[..., 0] == 204) & (img[..., 1] == 0) & (img[..., 2] == 0)
    cols_bar = np.nonzero(bar.any(0))[0]
    cols_red = np.nonzero(red.any(0))[0]
    assert len(cols_bar) > 0 and len(cols_red) > 0
    # used codes on the left, dead ones on the right (one column may hold both when codes share columns)
    assert cols_bar.max() <= cols_red.min() and (n > 400 or cols_bar.max() < cols_red.min())
    # the bars grow with the code index: the tallest bar is right of the shortest
    heights = bar.sum(0)
    assert heights[cols_bar[-1]] > heights[cols_bar[0]]


# -- 8-bit conversions ---------------------------------------------------------------------------


def test_8bit_round_trip():
    u = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16, 1).expand(1, 16, 16, 3).contiguous()
    x = uint8_to_signed(u)
    assert x.shape == (1, 3, 16, 16) and float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert torch.equal(signed_to_uint8(x), u)
    assert torch.equal(quantize_8bit(x), x)
    assert torch.allclose(quantize_8bit(torch.tensor([-3.0, 0.0, 5.0])), torch.tensor([-1.0, 1 / 255, 1.0]), atol=1e-6)  # 0 -> level 128


# -- evaluate_recon ------------------------------------------------------------------------------


class GreyTokenizer:
    """Codes are the 8-bit grey level of each pixel: lossless on grey images, 256 codes."""

    codebook_size = 256

    def encode(self, x):
        return signed_to_uint8(x)[..., 0].long()  # [B, H, W]

    def decode(self, idx):
        return (idx.float() / 127.5 - 1.0)[:, None].expand(-1, 3, -1, -1)


class BlockTokenizer:
    """Mean brightness of each 4x4 block, quantized to 4 levels: lossy, 4 codes."""

    codebook_size = 4

    def encode(self, x):
        m = torch.nn.functional.avg_pool2d(x.mean(1, keepdim=True), 4)[:, 0]  # [B, H/4, W/4]
        return ((m + 1) / 2 * 3).round().long().clamp(0, 3)

    def decode(self, idx):
        v = idx.float() / 3 * 2 - 1
        return torch.nn.functional.interpolate(v[:, None], scale_factor=4, mode="nearest").expand(-1, 3, -1, -1)


def _pooled_features(x):
    # a cheap stand-in for the Inception network: 4x4-pooled pixels through a fixed projection
    g = torch.Generator().manual_seed(123)
    proj = torch.randn(3 * 4 * 4, 6, generator=g)
    return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1) @ proj


def _grey_images(n, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randint(0, 256, (n, size, size, 1), generator=g, dtype=torch.uint8)
    return v.expand(n, size, size, 3).contiguous()


def test_recon_lossless_tokenizer():
    images = _grey_images(12)
    calls = []
    res = evaluate_recon(
        GreyTokenizer(), [images[:8], images[8:]], feature_fn=_pooled_features, callback=lambda d, t: calls.append((d, t))
    )
    m = res["metrics"]
    assert m["psnr"] == 100.0 and m["psnr_std"] == 0.0  # exact copies hit the cap
    assert m["ssim"] == pytest.approx(1.0) and m["l1"] == 0.0
    assert m["rfid"] == pytest.approx(0.0, abs=1e-6) and m["rfid_biased"] is True
    assert m["codebook_size"] == 256
    used = len(torch.unique(images[..., 0]))
    assert m["codebook_usage"] == pytest.approx(100 * used / 256)
    assert m["dead_codes"] == 256 - used
    assert calls == [(8, None), (12, None)]
    p = res["protocol"]
    assert p["n_images"] == 12 and p["image_size"] == [16, 16] and p["feature_network"] == "_pooled_features"
    assert any("biased" in w for w in res["warnings"])


def test_recon_lossy_tokenizer_by_hand():
    # every 4x4 block is flat at level 0.4 on [0, 1]: mean brightness 2*0.4-1 = -0.2 -> code round(0.4*3) = 1
    # -> decoded 1/3 on [0, 1] (then 8-bit rounded: 85/255)
    level = round(0.4 * 255)
    images = torch.full((10, 16, 16, 3), level, dtype=torch.uint8)
    res = evaluate_recon(BlockTokenizer(), [images], feature_fn=None)
    m = res["metrics"]
    err = abs(level / 255 - 85 / 255)
    assert m["l1"] == pytest.approx(err)
    assert m["psnr"] == pytest.approx(10 * math.log10(1 / err**2))
    assert m["codebook_usage"] == 25.0 and m["codebook_perplexity"] == pytest.approx(1.0) and m["dead_codes"] == 3
    assert m["rfid"] is None and m["kid"] is None


def test_recon_from_paths_and_refusals(tmp_path):
    images = _grey_images(10, size=16, seed=1)
    paths = []
    for i, im in enumerate(images):
        p = tmp_path / f"{i}.png"
        Image.fromarray(im.numpy()).save(p)
        paths.append(str(p))

    def load_image(path, size):
        return np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC))

    res = evaluate_recon(
        GreyTokenizer(), paths, load_image=load_image, image_size=16, batch_size=4, feature_fn=_pooled_features, resize="bicubic"
    )
    assert res["metrics"]["l1"] == 0.0 and res["protocol"]["resize"] == "bicubic"
    with pytest.raises(RegvqError, match="at least 10 images"):
        evaluate_recon(GreyTokenizer(), paths[:9], load_image=load_image, image_size=16, feature_fn=_pooled_features)


# -- result schema -------------------------------------------------------------------------------


def test_result_schema_round_trip_and_violations():
    res = evaluate_recon(BlockTokenizer(), [_grey_images(12, seed=2)], feature_fn=_pooled_features)
    assert res["schema"] == SCHEMA and res["kind"] == "recon"
    back = json.loads(json.dumps(res, allow_nan=False))
    validate_result(back)
    assert back == res

    def broken(edit):
        bad = copy.deepcopy(res)
        edit(bad)
        with pytest.raises(RegvqError):
            validate_result(bad)

    broken(lambda r: r["metrics"].pop("ssim"))
    broken(lambda r: r["metrics"].update(extra=1.0))
    broken(lambda r: r["metrics"].update(psnr="high"))
    broken(lambda r: r["metrics"].update(psnr=float("inf")))
    broken(lambda r: r["metrics"].update(dead_codes=True))
    broken(lambda r: r["protocol"].pop("feature_weights_sha256"))
    broken(lambda r: r["protocol"].update(image_size=[16]))
    broken(lambda r: r.update(kind="other"))
    broken(lambda r: r.update(warnings="none"))


def test_recon_with_the_project_tokenizer(tmp_path):
    from regvq_cli.tokenizer.model import Tokenizer
    from regvq_cli.tokenizer.presets import PRESETS

    torch.manual_seed(0)
    tok = Tokenizer(PRESETS["tok-test"]).eval()
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (10, 32, 32, 3), generator=g, dtype=torch.uint8)
    cache = tmp_path / "originals.safetensors"
    res = evaluate_recon(tok, [images[:6], images[6:]], feature_fn=_pooled_features, save_ref_stats=cache, model="tok-test")
    m = res["metrics"]
    assert m["codebook_size"] == 64 and 0 < m["codebook_usage"] <= 100 and 1 <= m["codebook_perplexity"] <= 64
    assert 0 < m["psnr"] < 100 and -1 <= m["ssim"] < 1 and m["l1"] > 0 and m["rfid"] > 0
    # the cached statistics of the originals reproduce rFID and KID without recomputing them
    again = evaluate_recon(tok, [images], feature_fn=_pooled_features, ref_stats=cache)
    for key in ("psnr", "rfid", "kid", "codebook_perplexity"):
        assert again["metrics"][key] == pytest.approx(m[key], rel=1e-6)
    with pytest.raises(RegvqError, match="image_size"):
        evaluate_recon(tok, [images[:, :16, :16]], feature_fn=_pooled_features, ref_stats=cache)
