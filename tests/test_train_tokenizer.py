"""Tokenizer training: data stream, a few real steps, outputs, resume, time limit, baselines."""

import json
import os
import re
import signal

import numpy as np
import pytest
import torch
from PIL import Image

from regvq_cli.engine import dist
from regvq_cli.errors import RegvqError, TrainingStopped
from regvq_cli.train import common
from regvq_cli.train.data import AugmentedImages, ShardedBatchSampler
from regvq_cli.train.tokenizer import TokenizerTrainer, TrainTokenizerConfig, codebook_stats, train_tokenizer


def make_images(folder, n=8, size=40, seed=0):
    """Flat-coloured images with a coloured rectangle: easy to reconstruct, so the loss falls fast."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        a = np.zeros((size, size + 4 * (i % 3), 3), np.uint8)
        a[:] = rng.integers(0, 256, 3)
        y, x = rng.integers(0, size // 2, 2)
        a[y : y + size // 2, x : x + size // 2] = rng.integers(0, 256, 3)
        Image.fromarray(a).save(folder / f"img{i:02d}.png")
    return folder


def fast_cfg(**kw):
    base = dict(preset="tok-test", batch_size=4, num_workers=0, perceptual_weight=0.0, contrastive_weight=0.0,
                gan_weight=0.0, log_every=1, sample_every=0, checkpoint_every=100, lr=2e-3, seed=0)
    base.update(kw)
    return TrainTokenizerConfig(**base)


def test_sampler_is_deterministic_sharded_and_resumable():
    full = ShardedBatchSampler(10, 2, rank=0, world_size=1, seed=3)
    r0 = ShardedBatchSampler(10, 1, rank=0, world_size=2, seed=3)
    r1 = ShardedBatchSampler(10, 1, rank=1, world_size=2, seed=3)
    it, i0, i1 = iter(full), iter(r0), iter(r1)
    for _ in range(12):  # a few epochs (5 global batches per epoch)
        g = next(it)
        a, b = next(i0), next(i1)
        assert [a[0], b[0]] == g  # the ranks split each global batch, with the same augmentation seeds
    order = ShardedBatchSampler(10, 2, seed=3).epoch_order(0).tolist()
    assert sorted(order) == list(range(10))
    assert order != ShardedBatchSampler(10, 2, seed=4).epoch_order(0).tolist()
    # resuming at batch k continues the same stream
    stream = iter(ShardedBatchSampler(10, 3, seed=1))
    first = [next(stream) for _ in range(7)]
    resumed = iter(ShardedBatchSampler(10, 3, seed=1, start_batch=4))
    assert [next(resumed) for _ in range(3)] == first[4:]
    # fewer items than one global batch: the permutation repeats
    small = next(iter(ShardedBatchSampler(3, 4, rank=1, world_size=2)))
    assert len(small) == 4 and {i for i, _ in small} <= {0, 1, 2}


def test_dataset_decodes_every_mode_and_skips_bad_files(tmp_path):
    from regvq_cli.data.inputs import list_inputs

    d = tmp_path / "mixed"
    d.mkdir()
    Image.new("RGBA", (20, 30), (255, 0, 0, 0)).save(d / "a_transparent.png")  # fully transparent -> white
    Image.fromarray((np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20)).save(d / "b_grey16.png")
    Image.new("P", (10, 10), 3).save(d / "c_palette.gif")
    (d / "d_broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    Image.new("L", (400, 40), 128).save(d / "e_panorama.png")
    ds = AugmentedImages(list_inputs([d]), size=16)
    for i in range(len(ds)):
        x, skipped = ds[(i, 7)]
        assert x.shape == (3, 16, 16) and x.min() >= -1 and x.max() <= 1
    white, _ = ds[(0, 1)]
    assert torch.equal(white, torch.ones(3, 16, 16))
    grey, _ = ds[(4, 1)]
    assert torch.allclose(grey, torch.full((3, 16, 16), 128 / 127.5 - 1), atol=1e-6)
    x, skipped = ds[(3, 0)]  # the broken file is replaced by the next decodable one, and reported
    assert skipped == [3] and x.shape == (3, 16, 16)
    a, _ = ds[(1, 5)]
    b, _ = ds[(1, 5)]
    assert torch.equal(a, b)  # augmentation depends only on the item's seed
    batch, k = ds.center_batch(10)
    assert k == 4 and batch.shape == (4, 3, 16, 16)


def test_training_reduces_the_loss(tmp_path):
    # four images, batch four, no scale/flip augmentation: every step sees the same pictures
    data = make_images(tmp_path / "imgs", n=4, size=32)
    losses = []
    cfg = fast_cfg(max_steps=60, mask_ratio=0.4, hflip=False, scale_range=(1.0, 1.0))
    out = train_tokenizer([data], tmp_path / "run", cfg, callback=lambda step, m: losses.append(m["l1"]))
    assert len(losses) == 60 and (out / "model.safetensors").exists()
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < 0.8 * first, (first, last)


def test_full_objective_writes_metrics_samples_and_model(tmp_path):
    from regvq_cli.engine.checkpoint import load_model

    data = make_images(tmp_path / "imgs", n=6)
    (data / "broken.png").write_bytes(b"garbage")
    cfg = fast_cfg(max_steps=3, perceptual_weight=1.0, contrastive_weight=0.1, pcl=True, num_patches=16,
                   gan_weight=0.5, gan_start=1, sample_every=2, checkpoint_every=2, num_samples=3,
                   command="regvq train-tokenizer imgs")
    out = train_tokenizer([data], tmp_path / "run", cfg)
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for key in ("l1", "perceptual", "pcl", "prior_kl", "loss", "usage_pct", "perplexity", "dead_codes",
                "images_per_s", "lr", "mask_fraction", "skipped_files"):
        assert key in records[-1], key
    assert "g_loss" in records[-1] and "d_loss" in records[-1] and "gan_lambda" in records[-1]
    assert "g_loss" not in records[0]  # the GAN starts at step 1 (0-based), i.e. from the second step
    assert 0 < records[-1]["usage_pct"] <= 100 and records[-1]["perplexity"] >= 1
    grid = Image.open(run / "samples" / "step-000002.png")
    assert grid.size == (3 * 32, 2 * 32)
    assert (run / "samples" / "step-000003.png").exists()
    model = load_model(out)
    assert model.config.quantizer == "regvq"
    card = (out / "README.md").read_text()
    assert str(data) in card and "regvq train-tokenizer imgs" in card and "Inception" in card
    info = json.loads((out / "config.json").read_text())["info"]
    assert info["steps"] == 3 and info["trained_on"]["files"] == 7
    assert info["trained_on"]["skipped"] == records[-1]["skipped_files"]


def test_the_counted_step_flops_follow_the_discriminator_joining(tmp_path, monkeypatch, credited_flops):
    """A step's FLOPs are counted once, and again when the GAN starts (the discriminator's passes join)."""
    monkeypatch.delenv("REGVQ_PEAK_TFLOPS", raising=False)
    train_tokenizer([make_images(tmp_path / "imgs", n=4)], tmp_path / "run",
                    fast_cfg(max_steps=4, gan_weight=0.5, gan_start=2))
    assert credited_flops[0] == credited_flops[1] < credited_flops[2] == credited_flops[3]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["tflops"] > 0 and "mfu" not in r for r in records)  # no known peak on a CPU


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    data = make_images(tmp_path / "imgs")
    kw = dict(gan_weight=0.5, gan_start=1, checkpoint_every=2, ema_decay=0.9)
    straight = TokenizerTrainer([data], tmp_path / "a", fast_cfg(max_steps=4, **kw))
    straight.run()
    first = TokenizerTrainer([data], tmp_path / "b", fast_cfg(max_steps=2, **kw))
    first.run()
    state = common.load_state(tmp_path / "b" / "state.pt")
    assert state["step"] == 2 and state["batches"] == 2
    # moments saved channels-last (as a compiled CUDA run holds them) are resumed in the parameters' layout
    for opt in ("opt", "opt_d"):
        for moments in state[opt]["state"].values():
            for k, v in moments.items():
                if v.dim() == 4:
                    moments[k] = v.contiguous(memory_format=torch.channels_last)
    common.save_state(tmp_path / "b" / "state.pt", state)
    resumed = TokenizerTrainer([data], tmp_path / "b", fast_cfg(max_steps=4, **kw))
    assert resumed.step == 2
    for opt in (resumed.opt, resumed.opt_d):
        for p, moments in opt.state.items():
            assert all(v.stride() == p.stride() for v in moments.values() if v.dim() == 4)
    resumed.run()
    assert resumed.step == 4
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), name
    for (name, a), (_, b) in zip(straight.ema.model.state_dict().items(), resumed.ema.model.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), name
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    # a finished run stays finished
    again = TokenizerTrainer([data], tmp_path / "b", fast_cfg(max_steps=4, **kw))
    assert again.step == 4
    again.run()
    assert again.step == 4
    with pytest.raises(RegvqError, match="started with --quantizer regvq, not vq: rerun with the same settings"):
        TokenizerTrainer([data], tmp_path / "b", fast_cfg(max_steps=6, quantizer="vq", **kw))


def test_a_signal_stops_after_the_step_with_a_checkpoint_and_a_rerun_resumes(tmp_path):
    data = make_images(tmp_path / "imgs", n=4)

    def preempt(step, metrics):  # what a scheduler or `timeout` does: SIGTERM mid-run
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    trainer = TokenizerTrainer([data], tmp_path / "run", fast_cfg(max_steps=6, checkpoint_every=100))
    with pytest.raises(TrainingStopped, match="step 3 of 6.*again to resume") as stopped:
        trainer.run(preempt)
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler lasts only as long as the run
    assert common.load_state(tmp_path / "run" / "state.pt")["step"] == 3  # not the last periodic checkpoint (0)
    assert not (tmp_path / "run" / "model").exists()  # a stopped run is not a finished model
    resumed = TokenizerTrainer([data], tmp_path / "run", fast_cfg(max_steps=6, checkpoint_every=100))
    assert resumed.step == 3
    assert (resumed.run() / "config.json").exists() and resumed.step == 6


def test_the_decoding_workers_are_two_on_a_cpu_unless_asked(tmp_path):
    """The default of --workers: 2 on a CPU (the step wants the cores); a number asked for is kept, 0 included."""
    data = make_images(tmp_path / "imgs", n=4)
    assert TokenizerTrainer([data], tmp_path / "a", fast_cfg(num_workers=None)).workers == 2
    assert TokenizerTrainer([data], tmp_path / "b", fast_cfg(num_workers=0)).workers == 0
    assert TokenizerTrainer([data], tmp_path / "c", fast_cfg(num_workers=5)).workers == 5


@pytest.mark.gpu
def test_for_a_gpu_the_default_decoding_workers_are_the_hosts_cores_but_one(tmp_path):
    """Two Pillow workers can hold a GPU's training back: the default there is encode's for a GPU."""
    data = make_images(tmp_path / "imgs", n=4)
    trainer = TokenizerTrainer([data], tmp_path / "a", fast_cfg(num_workers=None, device="cuda"))
    assert trainer.workers == dist.default_loader_workers(pillow_on_gpu_host=True)


def test_once_a_stop_is_asked_the_batches_exited_workers_never_made_come_from_this_process(tmp_path):
    """A scheduler's SIGTERM to the process group ends the loader workers too; the step they leave without its
    next micro-batches gets them from this process, the same batches the workers would have made."""
    data = make_images(tmp_path / "imgs", n=8)
    straight = TokenizerTrainer([data], tmp_path / "a", fast_cfg(num_workers=2, batch_size=2))
    want = [straight._next_batch() for _ in range(4)]
    straight._batch_iter = None
    trainer = TokenizerTrainer([data], tmp_path / "b", fast_cfg(num_workers=2, batch_size=2))
    got = [trainer._next_batch()]

    def workers_gone():
        raise RuntimeError("DataLoader worker (pid(s) 12345) exited unexpectedly")
        yield

    trainer._batch_iter = workers_gone()
    with pytest.raises(RuntimeError, match="exited unexpectedly"):  # no stop asked: the loader's error stands
        trainer._next_batch()
    trainer._batch_iter, trainer.stop_request = workers_gone(), common.StopRequest()
    trainer.stop_request.requested = True
    got += [trainer._next_batch() for _ in range(3)]
    assert trainer.batches == 4
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("workers", [0, 2])
def test_files_that_go_bad_mid_run_stop_it_with_one_line(workers, tmp_path):
    from regvq_cli.cli import describe

    data = make_images(tmp_path / "imgs", n=4)
    trainer = TokenizerTrainer([data], tmp_path / "run", fast_cfg(max_steps=4, num_workers=workers))
    for f in data.iterdir():  # after the start-up check, as when the data's disk goes away
        f.write_bytes(b"")
    with pytest.raises(RegvqError) as stopped:
        trainer.run()
    line = describe(stopped.value)  # what the CLI prints; from a worker, torch's message holds its traceback
    assert re.fullmatch(r"4 images in a row could not be decoded, starting at \S+img0\d\.png; check the data", line), line


def test_a_resume_on_more_files_says_so(tmp_path):
    data = make_images(tmp_path / "imgs", n=4)
    notes = []
    train_tokenizer([data], tmp_path / "run", fast_cfg(max_steps=1), on_note=notes.append)
    make_images(tmp_path / "more", n=6)
    for f in (tmp_path / "more").iterdir():
        f.rename(data / f"new-{f.name}")
    train_tokenizer([data], tmp_path / "run", fast_cfg(max_steps=2), on_note=notes.append)
    assert notes == [f"{tmp_path / 'run'} was trained on 4 inputs up to step 1; the data holds 10 now, and the run "
                     "goes on with it as it is"]


def test_time_limit_stops_and_exports(tmp_path):
    data = make_images(tmp_path / "imgs", n=4)
    out = train_tokenizer([data], tmp_path / "run", fast_cfg(max_steps=1000, time_limit=0.0))
    assert common.load_state(tmp_path / "run" / "state.pt")["step"] == 1
    assert (out / "config.json").exists()


@pytest.mark.parametrize("quantizer,extra,term", [
    ("vq", dict(vq_ema=True, grad_accum=2), "commitment"),
    ("vq", dict(vq_l2_norm=True), "codebook"),
    ("gumbel", dict(temperature_anneal=0.1), "kl_uniform"),
    ("regvq", dict(logits="distance", use_mask=False), "prior_kl"),
])
def test_baselines_and_options_train(tmp_path, quantizer, extra, term):
    data = make_images(tmp_path / "imgs", n=4)
    cfg = fast_cfg(max_steps=2, quantizer=quantizer, **extra)
    train_tokenizer([data], tmp_path / "run", cfg)
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert term in last and np.isfinite(last["loss"])


def test_config_roundtrips_and_rejects_bad_values():
    import dataclasses

    cfg = TrainTokenizerConfig(perceptual_weights=["a.pth"], betas=[0.9, 0.99])
    assert TrainTokenizerConfig(**json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg
    with pytest.raises(RegvqError, match="preset"):
        TrainTokenizerConfig(preset="nope")
    with pytest.raises(RegvqError, match="mask ratio"):
        TrainTokenizerConfig(mask_ratio=1.5)


def test_codebook_stats():
    s = codebook_stats(torch.tensor([5.0, 5.0, 0.0, 0.0]))
    assert s["usage_pct"] == 50.0 and s["dead_codes"] == 2.0 and s["perplexity"] == pytest.approx(2.0)
    assert codebook_stats(torch.ones(8))["perplexity"] == pytest.approx(8.0)


def test_ema_lr_schedule_and_state_files(tmp_path):
    lin = torch.nn.Linear(2, 2)
    ema = common.EMA(lin, decay=0.5)
    with torch.no_grad():
        lin.weight.add_(1.0)
    before = ema.model.weight.clone()
    ema.update(lin)  # first update: decay min(0.5, 1/10) = 0.1
    assert torch.allclose(ema.model.weight, 0.1 * before + 0.9 * lin.weight)
    assert common.lr_at(0, 1.0, warmup_steps=4) == 0.25
    assert common.lr_at(10, 1.0, warmup_steps=4) == 1.0
    assert common.lr_at(100, 1.0, schedule="cosine", max_steps=100) == pytest.approx(0.1)
    state = {"step": 3, "w": torch.ones(2), "rng": common.rng_state(), "nested": [{"a": 1.5, "b": "x"}]}
    common.save_state(tmp_path / "state.pt", state)
    back = common.load_state(tmp_path / "state.pt")
    assert back["step"] == 3 and torch.equal(back["w"], torch.ones(2)) and back["nested"] == [{"a": 1.5, "b": "x"}]
    common.set_rng_state(back["rng"])
    a = torch.rand(3)
    common.set_rng_state(back["rng"])
    assert torch.equal(a, torch.rand(3))
    (tmp_path / "evil.pt").write_bytes(b"not a state")
    with pytest.raises(RegvqError, match="resume state"):
        common.load_state(tmp_path / "evil.pt")
