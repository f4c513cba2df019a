"""FID, KID, precision/recall, cached statistics, `evaluate_gen`, and the Inception features."""

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from regvq_cli.errors import RegvqError
from regvq_cli.eval import fid as fidlib
from regvq_cli.eval.gen import evaluate_gen
from regvq_cli.eval.result import make_protocol, validate_result
from tests.conftest import needs_inception_weights

DATA = Path(__file__).parent / "data"


def _gauss(n, d, seed, shift=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) * scale + shift


# -- streaming statistics ------------------------------------------------------------------------


def test_streaming_stats_equal_numpy():
    x = _gauss(203, 7, 0, shift=3.0) ** 2  # skewed, offset: a poor case for naive sums
    stats = fidlib.FeatureStats(keep_features=True)
    for i, chunk in enumerate(np.array_split(x, [1, 50, 51, 130])):  # uneven batches, two of size 1
        stats.update(torch.from_numpy(chunk) if i % 2 else chunk)  # torch or numpy
    assert stats.n == 203
    np.testing.assert_allclose(stats.mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(stats.features, x.astype(np.float32))


def test_stats_refuse_mixed_sizes_and_empty():
    stats = fidlib.FeatureStats()
    with pytest.raises(RegvqError, match="empty"):
        stats.mu
    stats.update(np.zeros((3, 4)))
    with pytest.raises(RegvqError, match="feature size changed"):
        stats.update(np.zeros((3, 5)))


# -- Frechet distance ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["sqrtm", "eigh"])
def test_frechet_distance_closed_form_diagonal(method):
    # diagonal covariances: FID = |mu1 - mu2|^2 + sum_i (s1_i + s2_i - 2 sqrt(s1_i s2_i))
    rng = np.random.default_rng(1)
    d = 12
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.1, 3, size=d), rng.uniform(0.1, 3, size=d)
    expected = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
    got = fidlib.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2), method=method)
    assert got == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("method", ["sqrtm", "eigh"])
def test_frechet_distance_closed_form_rotated(method):
    # S2 = c^2 S1 for a full (non-diagonal) S1: (S1 S2)^{1/2} = c S1, so FID = |dmu|^2 + (1 - c)^2 Tr S1
    rng = np.random.default_rng(2)
    a = rng.normal(size=(9, 9))
    s1 = a @ a.T + 0.1 * np.eye(9)
    c = 1.7
    mu1, mu2 = np.zeros(9), np.full(9, 0.5)
    expected = 9 * 0.25 + (1 - c) ** 2 * np.trace(s1)
    assert fidlib.frechet_distance(mu1, s1, mu2, c * c * s1, method=method) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("n1, n2", [(300, 250), (15, 12)])  # full-rank and rank-deficient covariances
def test_three_methods_agree_on_sample_covariances(n1, n2):
    a = fidlib.FeatureStats.from_features(_gauss(n1, 40, 3) ** 2)
    b = fidlib.FeatureStats.from_features(_gauss(n2, 40, 4, shift=0.3))
    f1 = fidlib.frechet_distance(a.mu, a.sigma, b.mu, b.sigma, method="sqrtm")
    f2 = fidlib.frechet_distance(a.mu, a.sigma, b.mu, b.sigma, method="eigh")
    f3 = fidlib.fid_from_stats(a, b, method="features")["fid"]
    assert f1 == pytest.approx(f2, rel=1e-7) and f3 == pytest.approx(f2, rel=1e-6)  # features are kept as float32
    with pytest.raises(RegvqError, match="unknown"):
        fidlib.frechet_distance(a.mu, a.sigma, b.mu, b.sigma, method="svd")


def test_fid_self_zero_and_grows_with_noise():
    x = _gauss(400, 16, 5)
    ref = fidlib.FeatureStats.from_features(x)
    assert fidlib.fid_from_stats(ref, ref)["fid"] == pytest.approx(0.0, abs=1e-8)
    noise = _gauss(400, 16, 6)
    fids = [fidlib.fid_from_stats(ref, fidlib.FeatureStats.from_features(x + s * noise))["fid"] for s in (0.1, 0.5, 1.0)]
    assert 0 < fids[0] < fids[1] < fids[2]


def test_fid_small_sample_rules():
    small = fidlib.FeatureStats.from_features(_gauss(9, 4, 0))
    ok = fidlib.FeatureStats.from_features(_gauss(50, 4, 1))
    with pytest.raises(RegvqError, match="at least 10 images per set, got 9 and 50; evaluate more images$"):
        fidlib.fid_from_stats(small, ok)
    res = fidlib.fid_from_stats(ok, ok)
    assert res["fid_biased"] is True and "biased" in res["warning"]
    # the flag depends on n alone: 2049 images can give a full-rank 2048-d covariance, 2048 cannot
    assert fidlib.fid_from_stats(*[fidlib.FeatureStats.from_moments(2048, ok.mu, ok.sigma)] * 2)["fid_biased"]
    big = fidlib.FeatureStats.from_moments(2049, ok.mu, ok.sigma)
    res = fidlib.fid_from_stats(big, big)
    assert res["fid_biased"] is False and res["warning"] is None


# -- KID -----------------------------------------------------------------------------------------


def _kid_direct(x, y):
    """Unbiased MMD^2 with k(a, b) = (a.b/d + 1)^3, written out with loops."""
    d, m = x.shape[1], x.shape[0]
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_direct_formula():
    x, y = _gauss(12, 5, 7), _gauss(12, 5, 8, shift=0.4)
    mean, std = fidlib.kernel_inception_distance(x, y, n_subsets=3, subset_size=100)  # subset = whole set
    assert mean == pytest.approx(_kid_direct(x, y), rel=1e-10) and std is None  # one round: no spread to report


def test_kid_near_zero_for_same_distribution_positive_for_shift():
    x = _gauss(600, 32, 9)
    same, same_std = fidlib.kernel_inception_distance(x, _gauss(600, 32, 10), n_subsets=20, subset_size=200)
    ident, _ = fidlib.kernel_inception_distance(x, x, n_subsets=20, subset_size=200)
    shifted, _ = fidlib.kernel_inception_distance(x, _gauss(600, 32, 11, shift=0.3), n_subsets=20, subset_size=200)
    assert abs(ident) < 0.05 and abs(same) < 0.05
    assert shifted > 5 * max(abs(same), abs(ident)) and shifted > 3 * same_std
    # a set against itself is not two independent samples: the k(x_i, x_i) pairs bias KID by O(1/n),
    # so it goes to 0 as the set grows
    ident_150, _ = fidlib.kernel_inception_distance(x[:150], x[:150], n_subsets=1)
    ident_600, _ = fidlib.kernel_inception_distance(x, x, n_subsets=1)
    assert abs(ident_600) < abs(ident_150) / 3
    # deterministic for a seed
    again = fidlib.kernel_inception_distance(x, _gauss(600, 32, 10), n_subsets=20, subset_size=200)
    assert again == (same, same_std)


# -- precision / recall --------------------------------------------------------------------------


def _pr_direct(real, fake, k):
    def radii(a):
        d = np.linalg.norm(a[:, None] - a[None], axis=-1)
        return np.sort(d, axis=1)[:, k]

    def cover(q, ref, r):
        d = np.linalg.norm(q[:, None] - ref[None], axis=-1)
        return float((d <= r[None]).any(1).mean())

    return cover(fake, real, radii(real)), cover(real, fake, radii(fake))


def test_precision_recall_direct_and_extremes():
    real, fake = _gauss(40, 3, 12), _gauss(35, 3, 13, shift=0.8)
    p, r = fidlib.precision_recall(real, fake, k=3, batch_size=7)  # row batches smaller than the sets
    assert (p, r) == pytest.approx(_pr_direct(real, fake, 3))
    assert 0 < p < 1 and 0 < r < 1
    assert fidlib.precision_recall(real, real, k=3) == (1.0, 1.0)
    assert fidlib.precision_recall(real, real + 100.0, k=3) == (0.0, 0.0)
    # mode collapse: fakes near one real sample are precise but cover little of the real set
    collapsed = real[0] + 0.01 * _gauss(30, 3, 14)
    p, r = fidlib.precision_recall(real, collapsed, k=3)
    assert p == 1.0 and r < 0.2
    with pytest.raises(RegvqError, match="more than 3"):
        fidlib.precision_recall(real[:3], fake, k=3)


def test_float64_work_stays_on_cuda_and_falls_back_to_the_cpu_elsewhere():
    assert fidlib.float64_device("cuda:1") == torch.device("cuda:1")
    assert fidlib.float64_device("mps") == torch.device("cpu")  # MPS has no float64
    assert fidlib.float64_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.gpu
def test_precision_recall_and_knn_agreement_on_cuda_match_the_cpu():
    from regvq_cli.eval.gen import knn_agreement

    real, fake = _gauss(300, 16, 12), _gauss(200, 16, 13, shift=0.5)
    assert fidlib.precision_recall(real, fake, batch_size=64, device="cuda") == \
        fidlib.precision_recall(real, fake, batch_size=64)
    names = [("a", "b", "c")[i % 3] for i in range(300)]
    assert knn_agreement(real, names, fake, names[:200], device="cuda") == knn_agreement(real, names, fake, names[:200])


# -- cached statistics ---------------------------------------------------------------------------


def _protocol(**kw):
    class Net:
        name = "inception-test"
        weights_sha256 = "ab" * 32
        input_size = 299
        resize = "bilinear"

    base = dict(n_images=30, image_size=64, feature_fn=Net(), resize="crop")
    base.update(kw)
    return make_protocol(**base)


def test_stats_cache_round_trip(tmp_path):
    stats = fidlib.FeatureStats(keep_features=True)
    stats.update(_gauss(30, 6, 15))
    proto = _protocol()
    path = tmp_path / "ref.safetensors"
    old = os.umask(0o022)
    try:
        assert fidlib.save_stats(path, stats, proto) is True
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # as the umask says (safetensors alone: 0600)
    back, proto_back = fidlib.load_stats(path, expect=_protocol(n_images=999, seed=3))  # n and seed do not matter
    assert proto_back == json.loads(json.dumps(proto))
    assert back.n == 30
    np.testing.assert_array_equal(back.mu, stats.mu)
    np.testing.assert_array_equal(back.sigma, stats.sigma)
    np.testing.assert_array_equal(back.features, stats.features)
    assert fidlib.read_stats_protocol(path)["feature_network"] == "inception-test"
    assert not list(tmp_path.glob("*.tmp"))
    # too large for the feature budget: moments only
    assert fidlib.save_stats(tmp_path / "small.safetensors", stats, proto, max_feature_bytes=100) is False
    assert fidlib.load_stats(tmp_path / "small.safetensors")[0].features is None


@pytest.mark.parametrize(
    "change",
    [
        {"image_size": 128},
        {"resize": "pad"},
    ],
)
def test_stats_cache_refuses_other_protocol(tmp_path, change):
    path = tmp_path / "ref.safetensors"
    fidlib.save_stats(path, fidlib.FeatureStats.from_features(_gauss(20, 4, 16)), _protocol())
    with pytest.raises(RegvqError, match="different protocol"):
        fidlib.load_stats(path, expect=_protocol(**change))


def test_stats_cache_refuses_other_network_and_bad_files(tmp_path):
    path = tmp_path / "ref.safetensors"
    fidlib.save_stats(path, fidlib.FeatureStats.from_features(_gauss(20, 4, 16)), _protocol())
    other = _protocol()
    other["feature_weights_sha256"] = "cd" * 32
    with pytest.raises(RegvqError, match="feature_weights_sha256"):
        fidlib.load_stats(path, expect=other)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(RegvqError, match="not a readable"):
        fidlib.load_stats(junk)
    with pytest.raises(RegvqError, match="no statistics file"):
        fidlib.load_stats(tmp_path / "missing.safetensors")


# -- evaluate_gen --------------------------------------------------------------------------------


def _pooled_features(x):
    g = torch.Generator().manual_seed(321)
    proj = torch.randn(3 * 4 * 4, 5, generator=g)
    return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1) @ proj


_pooled_features.name = "pooled-test"


def _write_images(folder, n, seed, noise=0.0):
    folder.mkdir()
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        base = np.linspace(0, 255, 16)[None, :, None] * rng.uniform(0.3, 1, size=(1, 1, 3))
        img = np.clip(base + rng.normal(scale=20 + noise, size=(16, 16, 3)), 0, 255).astype(np.uint8)
        p = folder / f"{i:03d}.png"
        Image.fromarray(img).save(p)
        paths.append(str(p))
    return paths


def _load(path, size):
    return np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC))


def test_evaluate_gen_paths_cache_and_refusal(tmp_path):
    ref = _write_images(tmp_path / "ref", 24, 0)
    samples = _write_images(tmp_path / "samples", 20, 1, noise=40)
    cache = tmp_path / "ref-stats.safetensors"
    calls = []
    res = evaluate_gen(
        samples, ref, feature_fn=_pooled_features, load_image=_load, image_size=16, batch_size=8,
        resize="bicubic", save_ref_stats=cache, ref_name="ref", callback=lambda d, t: calls.append((d, t)),
    )  # fmt: skip
    validate_result(json.loads(json.dumps(res)))
    m, p = res["metrics"], res["protocol"]
    assert res["kind"] == "gen" and m["fid"] > 0 and m["fid_biased"] is True
    assert 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1 and m["kid"] is not None
    assert p["n_images"] == 20 and p["n_ref"] == 24 and p["image_size"] == [16, 16] and p["feature_network"] == "pooled-test"
    assert calls[-1] == (44, 44) and len(calls) == 6
    # the cached reference gives the same numbers
    again = evaluate_gen(samples, str(cache), feature_fn=_pooled_features, load_image=_load, image_size=16, resize="bicubic")
    for key in ("fid", "kid", "precision", "recall"):
        assert again["metrics"][key] == pytest.approx(m[key], rel=1e-6)
    # ... but not at another image size
    with pytest.raises(RegvqError, match="image_size"):
        evaluate_gen(samples, str(cache), feature_fn=_pooled_features, load_image=_load, image_size=12, resize="bicubic")
    # the same set against itself scores FID ~0 and full precision/recall
    self_res = evaluate_gen(ref, ref, feature_fn=_pooled_features, load_image=_load, image_size=16)
    assert self_res["metrics"]["fid"] == pytest.approx(0, abs=1e-6)
    assert (self_res["metrics"]["precision"], self_res["metrics"]["recall"]) == (1.0, 1.0)
    with pytest.raises(RegvqError, match="at least 10 samples"):
        evaluate_gen(samples[:5], ref, feature_fn=_pooled_features, load_image=_load, image_size=16)


def test_evaluate_gen_from_batches_quantizes():
    # model outputs off the 8-bit grid and out of range give the same result as their rounded versions
    g = torch.Generator().manual_seed(0)
    ref = [torch.rand(12, 3, 8, 8, generator=g) * 2 - 1]
    raw = torch.rand(12, 3, 8, 8, generator=g) * 2.4 - 1.2
    rounded = ((raw.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
    a = evaluate_gen([raw], ref, feature_fn=_pooled_features)
    b = evaluate_gen([rounded], ref, feature_fn=_pooled_features)
    assert a["metrics"]["fid"] == pytest.approx(b["metrics"]["fid"], rel=1e-9)


def test_knn_agreement_on_constructed_features():
    from regvq_cli.eval.gen import knn_agreement

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g) * 5
    names = ["cat", "dog", "eel"]
    ref_y = torch.arange(60) % 3
    ref = centres[ref_y] + torch.randn(60, 16, generator=g)
    smp_y = torch.arange(30) % 3
    smp = centres[smp_y] + torch.randn(30, 16, generator=g)
    ref_names, smp_names = [names[i] for i in ref_y], [names[i] for i in smp_y]
    good = knn_agreement(ref, ref_names, smp, smp_names)
    assert good["rate"] == 1.0 and good["n"] == 30 and good["k"] == 5 and good["chance"] == pytest.approx(1 / 3, abs=1e-4)
    assert good["reference_leave_one_out"] == 1.0 and good["per_class"] == {"cat": 1.0, "dog": 1.0, "eel": 1.0}
    # samples that ignore the requested class: agreement falls to what the shifted labels give (0 here)
    shifted = knn_agreement(ref, ref_names, smp, [names[(i + 1) % 3] for i in smp_y])
    assert shifted["rate"] == 0.0
    # a class the reference lacks is left out and counted
    odd = knn_agreement(ref, ref_names, smp, smp_names[:-1] + ["fox"])
    assert odd["n"] == 29 and odd["n_unknown"] == 1 and odd["unknown_classes"] == ["fox"] and odd["rate"] == 1.0


def test_knn_vote_breaks_ties_towards_the_nearest():
    from regvq_cli.eval.gen import _knn_vote

    labels = torch.tensor([0, 1, 1, 0])
    sims = torch.tensor([[0.9, 0.8, 0.7, 0.6]])  # votes 0, 1, 1, 0: a tie, the nearest is class 0
    assert _knn_vote(sims, labels, 4).tolist() == [0]
    assert _knn_vote(sims, labels, 3).tolist() == [1]  # 0, 1, 1: majority


def test_evaluate_gen_reports_class_agreement_for_labelled_batches():
    g = torch.Generator().manual_seed(3)
    colours = torch.tensor([[0.9, -0.9, -0.9], [-0.9, 0.9, -0.9]])  # red and green images

    def batches(n, names):
        y = torch.arange(n) % 2
        x = colours[y][:, :, None, None] + 0.1 * torch.randn(n, 3, 8, 8, generator=g)
        return [(x.clamp(-1, 1), [names[i] for i in y])]

    res = evaluate_gen(batches(12, ["red", "green"]), batches(20, ["red", "green"]), feature_fn=_pooled_features)
    validate_result(json.loads(json.dumps(res)))
    agreement = res["metrics"]["class_agreement"]
    assert agreement["rate"] == 1.0 and agreement["n"] == 12 and agreement["reference_leave_one_out"] == 1.0
    swapped = evaluate_gen(batches(12, ["green", "red"]), batches(20, ["red", "green"]), feature_fn=_pooled_features)
    assert swapped["metrics"]["class_agreement"]["rate"] == 0.0
    plain_ref = [x for x, _ in batches(20, ["red", "green"])]
    unmatched = evaluate_gen(batches(12, ["red", "green"]), plain_ref, feature_fn=_pooled_features)
    assert unmatched["metrics"]["class_agreement"] is None
    assert any("class agreement not measured" in w for w in unmatched["warnings"])
    assert evaluate_gen(plain_ref, plain_ref, feature_fn=_pooled_features)["metrics"]["class_agreement"] is None


# -- the Inception network (real weights; about 0.15 s per image on 2 CPU cores) ---------------------

INCEPTION_REFERENCE = DATA / "inception_reference.json"
SPREAD = list(range(0, 2048, 128))  # 16 features spread over the vector


def synthetic_image() -> np.ndarray:
    """A fixed 64x64 RGB test picture, uint8 [64, 64, 3]: waves, a gradient and a disc."""
    i, j = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")
    r = 128 + 100 * np.sin(i / 5.0) * np.cos(j / 7.0)
    g = 255 * (i + j) / 126
    b = np.where((i - 32) ** 2 + (j - 20) ** 2 < 150, 230, 30)
    return np.stack([r, g, b], -1).round().clip(0, 255).astype(np.uint8)


def _reference_numbers(features: np.ndarray) -> dict:
    return {
        "first16": features[:16].tolist(),
        "spread16": features[SPREAD].tolist(),
        "norm": float(np.linalg.norm(features)),
        "sum": float(features.sum()),
    }


@pytest.fixture(scope="module")
def inception():
    needs_inception_weights()
    return fidlib.default_feature_network("cpu")


def test_fid_features_are_computed_with_cudnns_tf32_off(inception, monkeypatch):
    """PyTorch lets cuDNN round fp32 convolutions' inputs to TF32 by default; FID's features are true fp32."""
    net, seen = inception.net, []
    block = net._block

    def spy(name):
        seen.append(torch.backends.cudnn.allow_tf32)
        return block(name)

    monkeypatch.setattr(net, "_block", spy)
    before = torch.backends.cudnn.allow_tf32
    net(torch.zeros(1, 3, 299, 299))
    assert seen and not any(seen) and torch.backends.cudnn.allow_tf32 == before


def test_inception_features_match_stored_reference(inception):
    """Catches a silent change of the weights or of the preprocessing (input range, resize, clamping):
    any of those moves these numbers by 1e-2 or more; rounding differences between machines stay < 1e-4."""
    ref = json.loads(INCEPTION_REFERENCE.read_text())
    assert inception.name == ref["feature_network"] and inception.input_size == 299
    assert inception.weights_sha256 == ref["weights_sha256"]
    from regvq_cli.eval.batches import uint8_to_signed

    with torch.no_grad():
        feats = inception(uint8_to_signed(synthetic_image()[None]))
    assert feats.shape == (1, 2048)
    got = _reference_numbers(feats[0].double().numpy())
    np.testing.assert_allclose(got["first16"], ref["first16"], atol=2e-3)
    np.testing.assert_allclose(got["spread16"], ref["spread16"], atol=2e-3)
    assert got["norm"] == pytest.approx(ref["norm"], abs=5e-3)
    assert got["sum"] == pytest.approx(ref["sum"], rel=1e-3)


def test_inception_fid_self_zero_and_monotone_in_noise(inception):
    # 10 small pictures (the FID minimum), and the same with Gaussian noise of three strengths; FID from the
    # features (a 2048 x 2048 sqrtm or eigh costs seconds to a minute on these CPUs; all agree, see above)
    base = torch.from_numpy(synthetic_image()).permute(2, 0, 1).float() / 127.5 - 1
    g = torch.Generator().manual_seed(0)
    shifts = [(int(a), int(b)) for a, b in torch.randint(-20, 20, (10, 2), generator=g)]
    images = torch.stack([torch.roll(base, s, dims=(1, 2)) * (0.6 + 0.04 * k) for k, s in enumerate(shifts)])
    images = images[:, :, ::2, ::2]  # 32x32: the network resizes to 299 anyway
    noise = torch.randn(images.shape, generator=g)
    clean = fidlib.extract_features([images], inception, keep_features=True)
    fids = []
    for sigma in (0.005, 0.02, 0.08):  # FID about 5, 115, 230: Inception features are very noise-sensitive
        noisy = fidlib.extract_features([(images + sigma * noise).clamp(-1, 1)], inception, keep_features=True)
        fids.append(fidlib.fid_from_stats(clean, noisy, method="features")["fid"])
    assert abs(fidlib.fid_from_stats(clean, clean, method="features")["fid"]) < 1e-3
    assert 0 < fids[0] < fids[1] < fids[2], fids
