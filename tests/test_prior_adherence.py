"""The measurements of benchmarks/prior_adherence.py on constructed pictures (no model, CPU, fast)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import load_benchmark


@pytest.fixture(scope="module")
def pa():
    return load_benchmark("prior_adherence")


def disc(cx: float, cy: float, fg=(220, 30, 30), bg=(40, 80, 220), size=128, r=0.18) -> np.ndarray:
    """A disc of colour fg centred at (cx, cy) (fractions of the side) on a flat bg."""
    y, x = (np.mgrid[:size, :size] + 0.5) / size
    img = np.empty((size, size, 3), np.uint8)
    img[:] = bg
    img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = fg
    return img


def test_red_disc_on_blue_at_the_left(pa):
    m = pa.measure_text(disc(0.25, 0.5))
    assert m["background"] == "blue"
    assert m["object"] == "red"
    x, y = m["centroid"]
    assert x == pytest.approx(0.25, abs=0.02) and y == pytest.approx(0.5, abs=0.02)
    assert pa.position_ok("at the left", m["centroid"], 2) and pa.position_ok("at the left", m["centroid"], 3)
    assert not pa.position_ok("at the right", m["centroid"], 2)
    assert not pa.position_ok("at the top", m["centroid"], 3)


def test_other_colours_and_positions(pa):
    m = pa.measure_text(disc(0.5, 0.8, fg=(250, 230, 40), bg=(245, 245, 245)))
    assert (m["background"], m["object"]) == ("white", "yellow")
    assert pa.position_ok("at the bottom", m["centroid"], 3) and not pa.position_ok("at the top", m["centroid"], 2)
    # Near the centre: in the right half but not in the right third.
    m = pa.measure_text(disc(0.55, 0.5))
    assert pa.position_ok("at the right", m["centroid"], 2) and not pa.position_ok("at the right", m["centroid"], 3)


def test_flat_picture_has_no_object(pa):
    img = np.full((64, 64, 3), (40, 160, 60), np.uint8)
    m = pa.measure_text(img)
    assert m["background"] == "green" and m["object"] is None and m["centroid"] is None
    assert not pa.position_ok("at the left", m["centroid"])


def test_score_text(pa):
    prompts = [{"prompt": "a red bird on a blue background", "object": "bird", "color": "red", "background": "blue",
                "position": None},
               {"prompt": "a red car at the left", "object": "car", "color": "red", "background": None,
                "position": "at the left"}]
    images = np.stack([disc(0.5, 0.5), disc(0.5, 0.5, bg=(255, 255, 255)),  # prompt 0: right; bg wrong
                       disc(0.25, 0.5), disc(0.75, 0.5)])  # prompt 1: left, right
    r = pa.score_text(prompts, images, n=2)
    assert r["rates"]["background"] == 0.5
    assert r["rates"]["object_color"] == 1.0
    assert r["rates"]["position_half"] == 0.5
    assert r["chance"]["object_color"] == pytest.approx(1 / 12)
    assert r["counts"] == {"images": 4, "background_images": 2, "position_images": 2}


def test_prompt_set(pa):
    ps = pa.text_prompts(48)
    assert len(ps) == 48 and ps == pa.text_prompts(48)  # fixed
    assert {"bird", "car"} <= {p["object"] for p in ps}
    bg = [p for p in ps if p["background"]]
    pos = [p for p in ps if p["position"]]
    assert len(bg) == 32 and len(pos) == 16
    assert all(p["color"] != p["background"] and "background" in p["prompt"] for p in bg)
    assert all("background" not in p["prompt"] for p in pos)
    assert sorted(p["position"] for p in pos) == sorted(pa.POSITIONS * 4)
    assert len(pa.text_prompts(12)) == 12


def scene(horizon: int, ground: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A map (sky 0 over a ground class 1-4, a square 'house' thing 10, as in segmaps.py) and its perfect
    picture."""
    colors = {0: (90, 150, 230), 1: (70, 150, 55), 2: (222, 200, 150), 3: (40, 95, 165), 4: (236, 240, 248)}
    m = np.zeros((size, size), np.uint8)
    m[horizon:] = ground
    m[4:10, 4:10] = 10  # house: not scored
    img = np.zeros((size, size, 3), np.uint8)
    for c, rgb in colors.items():
        img[m == c] = rgb
    img[m == 10] = (200, 30, 30)
    return img, m


def test_perfect_segmentation_scores_one_and_shuffled_lower(pa):
    pairs = [scene(10, 1), scene(20, 2), scene(14, 3), scene(24, 4), scene(8, 1)]
    real = np.stack([p[0] for p in pairs])
    maps = np.stack([p[1] for p in pairs])
    for k in (1, 8):
        refs = pa.stuff_refs(real, maps, k)
        perfect = pa.stuff_iou(real, maps, refs)
        assert perfect["miou"] == pytest.approx(1.0)
        assert set(perfect["per_class"]) == {"sky", "grass", "sand", "water", "snow"}
        assert pa.stuff_iou(np.roll(real, -1, axis=0), maps, refs)["miou"] < 0.6

    # Noisy generated copies (2 per scene) still score well; their shuffle scores low.
    rng = np.random.default_rng(0)
    gen = np.repeat(real, 2, axis=0).astype(np.int16) + rng.integers(-10, 11, size=(10, 32, 32, 3))
    r = pa.score_segmap(real, maps, np.clip(gen, 0, 255).astype(np.uint8), 2, pa.stuff_refs(real, maps))
    assert r["ceiling_real"]["miou"] == pytest.approx(1.0)
    assert r["generated"]["miou"] > 0.95
    assert r["floor_shuffled_generated"]["miou"] < 0.6 and r["floor_shuffled_real"]["miou"] < 0.6


def test_several_references_tell_sky_kinds_apart(pa):
    """A blue and a gray sky averaged into one colour send blue sky to water; two references per class do not."""
    real, maps = [], []
    for sky, ground, rgb in (((55, 110, 215), 3, (40, 95, 165)), ((200, 204, 210), 4, (236, 240, 248))):
        m = np.zeros((16, 16), np.uint8)
        m[8:] = ground
        img = np.zeros((16, 16, 3), np.uint8)
        img[:8], img[8:] = sky, rgb
        real.append(img)
        maps.append(m)
    real, maps = np.stack(real), np.stack(maps)
    assert pa.stuff_iou(real, maps, pa.stuff_refs(real, maps, 1))["miou"] < 0.9
    assert pa.stuff_iou(real, maps, pa.stuff_refs(real, maps, 2))["miou"] == pytest.approx(1.0)


def test_classify_stuff(pa):
    refs = (np.array([[90, 150, 230], [70, 150, 55], [80, 160, 240]], float), np.array([0, 1, 0]))
    img = np.array([[[250, 250, 250], [60, 140, 60], [85, 160, 245]]], np.uint8)
    assert pa.classify_stuff(img, refs).tolist() == [[0, 1, 0]]  # white goes to sky: there is no snow reference


def test_recipe_measurement_agrees_with_recipe_facts(pa):
    """The measurement on the recipe's own pictures reads back what the recipe recorded (needs its packages)."""
    if not (Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf").is_file()
            and Path("/usr/share/openclipart/png").is_dir()):
        pytest.skip("needs apt packages fonts-noto-color-emoji and openclipart-png")
    images, facts = pa.recipe_pictures(24, 128, seed=5)
    r = pa.score_recipe(images, facts)
    assert r["background"] >= 0.9 and r["object_color"] >= 0.85


def test_tokenizer_mode_scores_a_round_trip(pa, monkeypatch, capsys):
    """The tokenizer mode scores the recipe pictures as made and after encode/decode (here an identity stand-in)."""
    if not (Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf").is_file()
            and Path("/usr/share/openclipart/png").is_dir()):
        pytest.skip("needs apt packages fonts-noto-color-emoji and openclipart-png")
    import types

    import regvq_cli.engine.resolve as resolve

    fake = types.SimpleNamespace(regvq_id="identity", config=types.SimpleNamespace(image_size=128))
    monkeypatch.setattr(resolve, "load", lambda spec, device=None, expect=None: fake)
    monkeypatch.setattr(pa, "roundtrip", lambda tok, dev, images, batch_size: images[:, :, ::-1])  # mirrored
    pa.main(["tokenizer", "--ceiling-pictures", "12", "--device", "cpu", "--json"])
    r = json.loads(capsys.readouterr().out)
    assert r["mode"] == "tokenizer" and r["pictures"] == 12
    assert r["ceiling_tokenizer"]["object_color"] == r["ceiling_recipe"]["object_color"]  # colours survive a mirror
    assert r["ceiling_tokenizer"]["position_half"] < r["ceiling_recipe"]["position_half"]  # positions do not
    assert r["code_top1_probability"] is None  # no code distributions to measure


def test_code_confidence_sees_sharper_logits(pa):
    """Top-1 code probability: near 1/N for flat logits, higher when the logit projection starts sharper;
    None for a deterministic VQ."""
    import numpy as np
    import torch

    import dataclasses

    from regvq_cli.tokenizer.model import Tokenizer
    from regvq_cli.tokenizer.presets import PRESETS

    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    rows = {}
    for q, k in (("regvq", 1.0), ("regvq", 30.0), ("vq", 1.0)):
        torch.manual_seed(0)
        cfg = dataclasses.replace(PRESETS["tok-test"], quantizer=q, logit_init=k)
        rows[q, k] = pa.code_confidence(Tokenizer(cfg).eval(), torch.device("cpu"), images, 2)
    flat, sharp = rows["regvq", 1.0], rows["regvq", 30.0]
    assert flat["uniform"] == pytest.approx(1 / cfg.codebook_size, rel=1e-3)
    assert flat["mean"] < 3 * flat["uniform"] < sharp["mean"] <= 1
    assert rows["vq", 1.0] is None


def test_object_kind_classifier_learns_the_recipe_objects(pa):
    """The object classifier of the text mode: trained on recipe pictures of OBJECTS, it names them (here, a
    short training on 300 pictures already fits them: each object counted alike, well above chance, and every
    object named right more often than chance. Its loss weighs the objects alike, so its plain rate is not held
    against always answering the commonest object, which a rate counted over unbalanced pictures favours)."""
    if not (Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf").is_file()
            and Path("/usr/share/openclipart/png").is_dir()):
        pytest.skip("needs apt packages fonts-noto-color-emoji and openclipart-png")
    images, kinds = pa.kind_pictures(300, pa.KIND_SEED)
    assert images.shape == (300, pa.KIND_SIZE, pa.KIND_SIZE, 3) and set(kinds) <= set(pa.OBJECTS)
    clf = pa.KindClassifier(300, epochs=20)
    by_object = pa.kind_scores(clf, images, kinds)["by_object"]
    balanced = np.mean([r["rate"] for r in by_object.values()])
    assert balanced > 1 / len(pa.OBJECTS) + 0.3
    assert all(r["rate"] > 1 / len(pa.OBJECTS) for r in by_object.values()), by_object
    assert set(clf(images[:5])) <= set(pa.OBJECTS)
    # pictures at another size are resized to the classifier's
    big = np.repeat(np.repeat(images[:4], 4, axis=1), 4, axis=2)
    assert clf(big) == clf(images[:4])


def test_object_kind_classifier_cache(pa, tmp_path, monkeypatch):
    """--kind-cache: the first run trains and saves, the next loads the same weights (same names for the same
    pictures) without training; a cache made with other settings is refused with a message, not used."""
    if not (Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf").is_file()
            and Path("/usr/share/openclipart/png").is_dir()):
        pytest.skip("needs apt packages fonts-noto-color-emoji and openclipart-png")
    cache = tmp_path / "kind.safetensors"
    first = pa.KindClassifier(64, epochs=1, cache=str(cache))
    assert cache.is_file()
    with monkeypatch.context() as m:
        m.setattr(pa, "kind_pictures", None)  # loading must not render training pictures
        again = pa.KindClassifier(64, epochs=1, cache=str(cache))
    images = np.random.default_rng(0).integers(0, 256, (6, pa.KIND_SIZE, pa.KIND_SIZE, 3), dtype=np.uint8)
    assert again(images) == first(images)
    with pytest.raises(SystemExit, match="trained otherwise"):
        pa.KindClassifier(64, epochs=2, cache=str(cache))


def test_caption_gain_scores_own_null_and_other_captions():
    """caption_gain.caption_ce: per grid, the teacher-forced cross-entropy under its own caption, the null condition
    and the next grid's caption, in batches, equal to the prior's own loss under each."""
    import torch

    from regvq_cli.priors.ar import ARConfig, ARPrior
    from regvq_cli.priors.conditioning import prepare_condition

    cg = load_benchmark("caption_gain")
    torch.manual_seed(0)
    cfg = ARConfig(codebook_size=16, grid_size=(2, 2), dim=32, n_layers=1, n_heads=2, cond="text", text_max_tokens=16)
    prior = ARPrior(cfg)
    for p in prior.parameters():
        torch.nn.init.normal_(p, std=0.3)  # condition-dependent predictions
    tokens = torch.randint(0, 16, (3, 2, 2))
    captions = ["a red bird", "a blue car on a yellow background", "a green apple at the left"]
    got = cg.caption_ce(prior, tokens, captions, torch.device("cpu"), batch_size=2)
    prior.eval()
    other = captions[1:] + captions[:1]
    for name, caps, drop in (("own", captions, False), ("null", captions, True), ("other", other, False)):
        for i in range(3):
            cond = prepare_condition(cfg, prompts=[caps[i]])
            want = prior.loss(tokens[i:i + 1], cond, drop=torch.tensor([drop]))[0]
            assert got[name][i] == pytest.approx(float(want), rel=1e-5), (name, i)
    assert not np.allclose(got["own"], got["null"]) and not np.allclose(got["own"], got["other"])


def test_object_kind_by_object_counts_what_each_object_was_named(pa):
    named = ["bird", "fish", "bird", "car", "car", "house"]
    wanted = ["bird", "bird", "bird", "car", "car", "car"]
    got = pa.kind_by_object(named, wanted)
    assert got["bird"] == {"rate": 2 / 3, "n": 3, "seen_as": {"bird": 2, "fish": 1}}
    assert got["car"] == {"rate": 2 / 3, "n": 3, "seen_as": {"car": 2, "house": 1}}
    assert list(got) == ["bird", "car"]
    assert pa.kind_by_object(["fish"], ["apple"])["apple"] == {"rate": 0.0, "n": 1, "seen_as": {"fish": 1}}
    images = np.zeros((6, 8, 8, 3), np.uint8)
    scores = pa.kind_scores(lambda x: named[:len(x)], images, wanted)  # a stand-in classifier
    assert scores == {"rate": 4 / 6, "by_object": got}


def test_rate_at_another_object_mix(pa):
    """The classifier's ceiling at the prompts' mix of objects: its per-object rates averaged over the prompts'
    objects, not over the held-out pictures' (where birds and cars are five times as common)."""
    by_object = pa.kind_by_object(["bird", "bird", "bird", "fish"], ["bird", "bird", "fish", "fish"])
    assert pa.rate_at_mix(by_object, ["bird", "bird", "fish", "fish"]) == 0.75
    assert pa.rate_at_mix(by_object, ["fish", "fish", "fish", "bird"]) == pytest.approx(0.625)
    assert pa.rate_at_mix(by_object, ["fish", "house"]) is None
