"""The autoregressive prior: config round trip, shapes, causality, KV cache, padding, checkpoints, learning."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from regvq_cli.priors.ar import ARConfig, ARPrior
from regvq_cli.priors.conditioning import TextStates
from regvq_cli.priors.presets import PRESETS, model_for, preset
from regvq_cli.priors.sampling import sample_ar

K, H, W = 17, 3, 4


def tiny(cond="none", **kw) -> ARPrior:
    cfg = ARConfig(codebook_size=K, grid_size=(H, W), dim=32, n_layers=2, n_heads=2, cond=cond, num_classes=4,
                   text_dim=16, text_max_tokens=6, seg_classes=3, **kw)
    torch.manual_seed(0)
    return ARPrior(cfg).eval()


def raw_cond(kind, B=2):
    g = torch.Generator().manual_seed(1)
    if kind == "none":
        return None
    if kind == "class":
        return torch.tensor([1, 3])[:B]
    if kind == "text":
        mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)[:B]
        return TextStates(torch.randn(B, 5, 16, generator=g), mask)
    return torch.randint(0, 3, (B, 12, 16), generator=g)


KINDS = ["none", "class", "text", "segmap"]


def test_config_json_round_trip():
    cfg = ARConfig(codebook_size=64, grid_size=[2, 5], cond="class", num_classes=2, class_names=["cat", "dog"],
                   dim=64, n_heads=4, n_layers=1)
    assert cfg.grid_size == (2, 5) and cfg.class_names == ("cat", "dog")
    again = ARConfig(**json.loads(json.dumps(dataclasses.asdict(cfg))))
    assert again == cfg


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_and_loss(kind):
    m = tiny(kind)
    x = torch.randint(0, K, (2, H, W))
    logits = m(x.flatten(1)[:, :5], raw_cond(kind))
    assert logits.shape == (2, 6, K)  # predictions for x_0 .. x_5
    m.train()
    loss, parts = m.loss(x, raw_cond(kind))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert m.tok_emb.weight.grad is not None and m.tok_emb.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["class", "text"])
def test_causal(kind):
    m = tiny(kind)
    x = torch.randint(0, K, (2, H * W))
    k = 5
    y = x.clone()
    y[:, k] = (y[:, k] + 1) % K
    a, b = m(x[:, :-1], raw_cond(kind)), m(y[:, :-1], raw_cond(kind))
    # row j predicts x_j from x_<j: rows 0..k may not see x_k, row k+1 must
    torch.testing.assert_close(a[:, :k + 1], b[:, :k + 1])
    assert (a[:, k + 1] - b[:, k + 1]).abs().max() > 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_kv_cache_matches_full_forward(kind):
    m = tiny(kind)
    x = torch.randint(0, K, (2, H * W))
    full = m(x[:, :-1], raw_cond(kind))  # [2, N, K]
    cache = m.new_cache(2)
    steps = [m(x[:, :0], raw_cond(kind), cache=cache)]
    for i in range(H * W - 1):
        steps.append(m(x[:, i:i + 1], cache=cache, start_pos=i))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)
    # a chunked prefill (prefix + 4 tokens), then single steps, gives the same too
    cache.reset()
    chunks = [m(x[:, :4], raw_cond(kind), cache=cache)]
    for i in range(4, H * W - 1):
        chunks.append(m(x[:, i:i + 1], cache=cache, start_pos=i))
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-5, rtol=1e-4)


def test_cache_layout():
    """One key and one value tensor per layer, [B, heads, max_len, head_dim], each with its own storage: a
    compiled decode step writes into them in place (into views of one shared buffer it would copy the buffer)."""
    m = tiny("class")
    cache = m.new_cache(3)
    cfg = m.config
    assert len(cache.k) == len(cache.v) == cfg.n_layers
    shape = (3, cfg.n_heads, 1 + H * W, cfg.dim // cfg.n_heads)
    assert all(tuple(t.shape) == shape and t.is_contiguous() for t in cache.k + cache.v)
    assert len({t.untyped_storage().data_ptr() for t in cache.k + cache.v}) == 2 * cfg.n_layers
    assert cache.max_len == 1 + H * W and cache.nbytes == 2 * cfg.n_layers * math.prod(shape) * 4


def test_padded_text_positions_are_ignored():
    m = tiny("text")
    cond = raw_cond("text")
    other = TextStates(cond.states.clone(), cond.mask)
    other.states[0, 3:] += 5.0  # row 0 has only 3 real tokens
    x = torch.randint(0, K, (2, 6))
    torch.testing.assert_close(m(x, cond), m(x, other))
    other.states[0, 1] += 5.0  # a real token does matter
    assert (m(x, cond) - m(x, other))[0].abs().max() > 1e-4


def test_presets():
    for name in ("ar-test", "ar-small", "ar-b", "ar-l"):
        assert isinstance(PRESETS[name], ARConfig)
    assert (PRESETS["ar-b"].n_layers, PRESETS["ar-b"].dim) == (12, 768)
    assert (PRESETS["ar-l"].n_layers, PRESETS["ar-l"].dim) == (24, 1024)
    with torch.device("meta"):
        n = sum(p.numel() for p in model_for(PRESETS["ar-b"]).parameters())
    assert 80e6 < n < 95e6  # GPT-B body with a 1024-code vocabulary
    cfg = preset("ar-test")
    assert cfg is not PRESETS["ar-test"] and cfg == PRESETS["ar-test"]


def test_ar_m_fits_the_shipped_models_60_mb_with_text_conditioning():
    text = dataclasses.replace(preset("ar-m"), codebook_size=1024, grid_size=(16, 16), cond="text", text_dim=384,
                               text_max_tokens=32)
    with torch.device("meta"):
        n = sum(p.numel() for p in model_for(text).parameters())
    assert 50e6 < 2 * n < 60e6  # bytes in bf16: under the cap, and well above the -small presets (30 MB)


def test_checkpoint_round_trip(tmp_path):
    from regvq_cli.engine.checkpoint import load_model, save_model

    m = tiny("class", class_names=("a", "b", "c", "d"))
    save_model(m, tmp_path / "ar", card="# test\n", info={"note": "test"})
    loaded = load_model(tmp_path / "ar")
    assert isinstance(loaded, ARPrior) and loaded.config == m.config
    x = torch.randint(0, K, (2, 7))
    torch.testing.assert_close(loaded(x, raw_cond("class")), m(x, raw_cond("class")))


def stripes(c):
    """Toy class-conditional data: class c -> a 4x4 grid whose column j holds token 4c + j."""
    return (4 * c[:, None, None] + torch.arange(4)[None, None, :]).expand(-1, 4, 4) % 16


def test_learns_toy_class_conditional_distribution():
    torch.manual_seed(0)
    cfg = dataclasses.replace(preset("ar-test"), cond="class", num_classes=4, cond_dropout=0.1)
    m = model_for(cfg)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.0)
    m.train()
    first = None
    for _ in range(300):
        c = torch.randint(0, 4, (64,))
        loss, _ = m.loss(stripes(c), c)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first
    c = torch.arange(4).repeat(16)
    out = sample_ar(m, c, 64, generator=torch.Generator().manual_seed(0))
    assert out.shape == (64, 4, 4)
    acc = (out == stripes(c)).float().mean().item()
    assert acc > 0.9, acc


# ---- training on a token folder ---------------------------------------------------------------------------

def write_class_shards(folder, n=48, names=("a", "b", "c", "d")):
    """A token folder of the stripes data: two shards, labels with names, no tokenizer to decode with."""
    import numpy as np

    from regvq_cli.data.shards import RunInfo, write_manifest, write_shard

    labels = np.arange(n) % len(names)
    tokens = stripes(torch.from_numpy(labels)).numpy()
    run = RunInfo(tokenizer_id="", tokenizer_sha256="", grid=(4, 4), codebook_size=16, num_inputs=n,
                  shard_size=n // 2, labels=True, label_names=tuple(names))
    for k in range(2):
        rows = slice(k * n // 2, (k + 1) * n // 2)
        write_shard(folder, k, run, tokens[rows], [f"{i}.png" for i in range(n)[rows]], labels=labels[rows])
    write_manifest(folder)
    return folder


def train_cfg(**kw):
    from regvq_cli.priors.training import TrainPriorConfig

    base = dict(kind="ar", preset="ar-test", batch_size=8, max_steps=6, log_every=3, sample_every=3,
                checkpoint_every=3, num_samples=4, lr=3e-3, device="cpu", seed=1, command="test")
    base.update(kw)
    return TrainPriorConfig(**base)


def test_train_prior_exports_a_conditional_model(tmp_path):
    from regvq_cli.engine.checkpoint import load_model, read_record
    from regvq_cli.priors.training import train_prior
    from regvq_cli.train.common import read_metrics

    tokens = write_class_shards(tmp_path / "tokens")
    seen = []
    folder = train_prior(tokens, tmp_path / "run", train_cfg(), callback=lambda step, m: seen.append(step))
    assert seen == [1, 2, 3, 4, 5, 6]
    model = load_model(folder)
    assert isinstance(model, ARPrior)
    assert model.config.cond == "class" and model.config.class_names == ("a", "b", "c", "d")
    assert model.config.grid_size == (4, 4) and model.config.codebook_size == 16
    record = read_record(folder)
    assert record["info"]["steps"] == 6 and record["info"]["trained_on"]["rows"] == 48
    assert "samples not decoded" in record["info"]["note"]  # the shards name no tokenizer
    assert "class-conditional (4 classes)" in (folder / "README.md").read_text()
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [3, 6] and all(m["loss"] > 0 for m in metrics)
    import numpy as np

    grids = np.load(tmp_path / "run" / "samples" / "step-000006.npy")
    assert grids.shape == (4, 4, 4) and grids.max() < 16


def test_train_prior_resume_is_identical(tmp_path):
    from regvq_cli.priors.training import train_prior

    tokens = write_class_shards(tmp_path / "tokens")
    full = load_weights(train_prior(tokens, tmp_path / "full", train_cfg(max_steps=6, sample_every=0)))
    train_prior(tokens, tmp_path / "split", train_cfg(max_steps=3, sample_every=0))
    steps = []  # the rerun must take up at step 4: a fresh 6-step run would give the same weights
    resumed = load_weights(train_prior(tokens, tmp_path / "split", train_cfg(max_steps=6, sample_every=0),
                                       callback=lambda step, metrics: steps.append(step)))
    assert steps == [4, 5, 6]
    assert full.keys() == resumed.keys()
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], rtol=0, atol=0)


def test_a_resume_with_another_batch_size_goes_on_from_the_same_place_in_the_data(tmp_path):
    """The data position is a count of micro-batches: with another --batch-size it is counted again in the new
    size (16 grids taken as 2 batches of 8 are 4 of 4), as for another number of ranks, and the run says so."""
    from regvq_cli.priors.training import PriorTrainer, train_prior

    tokens = write_class_shards(tmp_path / "tokens")
    train_prior(tokens, tmp_path / "run", train_cfg(max_steps=2, batch_size=8, sample_every=0))
    trainer = PriorTrainer(tokens, tmp_path / "run", train_cfg(max_steps=4, batch_size=4, sample_every=0))
    assert trainer.step == 2 and trainer.batches == 4
    assert any("took batches of 8 up to step 2; it goes on with 4" in note for note in trainer.notes)


def test_the_logged_rate_leaves_out_checkpoints_and_samples(tmp_path, monkeypatch):
    """samples_per_s (and TFLOP/s, MFU) are the training's: a slow checkpoint write is not in the next window."""
    import time

    from regvq_cli.priors.training import PriorTrainer
    from regvq_cli.train.common import read_metrics

    trainer = PriorTrainer(write_class_shards(tmp_path / "tokens"), tmp_path / "run",
                           train_cfg(max_steps=4, log_every=1, checkpoint_every=1, sample_every=0))
    save = trainer.save
    monkeypatch.setattr(trainer, "save", lambda: (time.sleep(0.5), save()))
    trainer.run()
    rates = [m["samples_per_s"] for m in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert len(rates) == 4 and min(rates[1:]) > 8 / 0.5, rates  # 8 rows a step: one pause would cap it at 16


def test_train_prior_steps_return_host_numbers_and_log_window_means(tmp_path, monkeypatch):
    """A step returns host numbers only (no wait for the device); the logged loss is the mean of its window."""
    from regvq_cli.priors.training import PriorTrainer

    trainer = PriorTrainer(write_class_shards(tmp_path / "tokens"), tmp_path / "run",
                           train_cfg(max_steps=4, log_every=2, checkpoint_every=2, sample_every=0))
    seen, returned = [], []
    loss_fn = trainer.model.loss

    def spy(*a, **k):
        loss, parts = loss_fn(*a, **k)
        seen.append(float(loss))
        return loss, parts

    monkeypatch.setattr(trainer.model, "loss", spy)
    step_once = trainer.train_step
    monkeypatch.setattr(trainer, "train_step", lambda: returned.append(step_once()) or returned[-1])
    trainer.run()
    assert all(set(m) == {"lr", "samples"} and all(isinstance(v, float) for v in m.values()) for m in returned)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4] and trainer.pending == {}
    for w, record in enumerate(records):
        assert record["loss"] == pytest.approx(sum(seen[2 * w: 2 * w + 2]) / 2, rel=1e-5)
        assert record["grad_norm"] > 0


def test_train_prior_reports_the_model_flops_of_its_steps_and_mfu(tmp_path, monkeypatch, credited_flops):
    """One step is counted (torch's FLOP formulas) and every step is credited with it: for an AR prior about
    6 x matmul parameters x positions per step (forward and backward), plus a little attention. With a peak
    given (REGVQ_PEAK_TFLOPS) the records carry MFU = achieved / peak."""
    from regvq_cli.priors.training import PriorTrainer

    monkeypatch.setenv("REGVQ_PEAK_TFLOPS", "0.001")
    cfg = train_cfg(max_steps=4, log_every=2, sample_every=0)
    trainer = PriorTrainer(write_class_shards(tmp_path / "tokens"), tmp_path / "run", cfg)
    trainer.run()
    assert len(credited_flops) == 4 and len(set(credited_flops)) == 1  # counted once, the same work every step
    matmul_params = sum(m.weight.numel() for m in trainer.model.modules() if isinstance(m, torch.nn.Linear))
    per_position = credited_flops[0] / (6 * matmul_params * cfg.batch_size)
    assert 16 <= per_position <= 1.3 * 18  # 16 image tokens, and a class and a start token before them
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["tflops"] > 0 and r["mfu"] == pytest.approx(r["tflops"] * 1000) for r in records)


def test_train_prior_stops_on_a_non_finite_loss_before_saving_it(tmp_path, monkeypatch):
    """A NaN loss is found at the next log or checkpoint, whichever comes first: the run stops with a one-line
    error and the checkpoint on disk is the last good one."""
    from regvq_cli.errors import RegvqError
    from regvq_cli.priors.training import PriorTrainer

    trainer = PriorTrainer(write_class_shards(tmp_path / "tokens"), tmp_path / "run",
                           train_cfg(max_steps=8, log_every=4, checkpoint_every=2, sample_every=0))
    loss_fn = trainer.model.loss

    def nan_at_step_3(*a, **k):
        loss, parts = loss_fn(*a, **k)
        return (loss * float("nan"), parts) if trainer.step == 2 else (loss, parts)

    monkeypatch.setattr(trainer.model, "loss", nan_at_step_3)
    with pytest.raises(RegvqError, match="the loss became nan by step 4.*--lr.*last checkpoint is kept"):
        trainer.run()
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=False)
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values())


def load_weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_train_prior_refuses_a_missing_condition(tmp_path):
    from regvq_cli.errors import RegvqError
    from regvq_cli.priors.training import TrainPriorConfig, train_prior

    tokens = write_class_shards(tmp_path / "tokens")
    with pytest.raises(RegvqError, match="--cond text needs captions"):
        train_prior(tokens, tmp_path / "run", train_cfg(cond="text"))
    with pytest.raises(RegvqError, match="not for --kind ar"):
        TrainPriorConfig(kind="ar", preset="diffusion-test")


def _ddp_worker(rank, port, tmp):
    import os

    from regvq_cli.priors.training import PriorTrainer

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    trainer = PriorTrainer(tmp / "tokens", tmp / "run", train_cfg(max_steps=3, log_every=1, sample_every=0,
                                                                   val_size=8))
    first = trainer._next_batch()[0]
    trainer.batches, trainer._batch_iter = 0, None
    trainer.run()
    torch.save({"model": trainer.model.state_dict(), "ema": trainer.ema.model.state_dict(), "first": first,
                "batches": trainer.batches}, tmp / f"rank{rank}.pt")


def test_ddp_training_keeps_ranks_in_sync(tmp_path):
    """Two gloo processes: different data per rank, identical weights after every step, rank 0 writes."""
    import socket

    import torch.multiprocessing as mp

    from regvq_cli.train.common import read_metrics

    write_class_shards(tmp_path / "tokens")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, tmp_path), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert not torch.equal(r0["first"], r1["first"])  # each rank trains on its own slice of the global batch
    for part in ("model", "ema"):
        for k in r0[part]:
            assert torch.equal(r0[part][k], r1[part][k]), (part, k)
    assert r0["batches"] == r1["batches"] == 3
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [m["step"] for m in records] == [1, 2, 3]
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()
    # the held-out score, each rank scoring 4 of the 8 grids, is the whole set's (one process, the same EMA weights)
    assert "val_loss" in records[-1] and "val_loss" not in records[0]
    assert records[-1]["val_loss"] == pytest.approx(_held_out_loss(tmp_path, r0["ema"], 8), rel=1e-5)


def _held_out_loss(tmp, ema_state, val_size):
    """The mean loss of an ar-test prior with these weights over the held-out grids of tmp/tokens, in one batch."""
    from regvq_cli.priors.training import PriorTrainer

    t = PriorTrainer(tmp / "tokens", tmp / "other-run", train_cfg(val_size=val_size))
    t.model.load_state_dict(ema_state)
    t.model.eval()
    with torch.no_grad():
        return float(t.model.loss(t.data.tokens[t.val_idx].long(), t.data.labels[t.val_idx])[0])


def test_held_out_grids_are_never_trained_on_and_scored_at_checkpoints(tmp_path, monkeypatch):
    """--val-size grids leave the training batches (a fixed draw, the same for another run on the folder) and the
    EMA model's loss on them is logged at each checkpoint and at the end, without touching the training RNG."""
    from regvq_cli.errors import RegvqError
    from regvq_cli.priors.training import PriorTrainer, held_out_split
    from regvq_cli.train.common import read_metrics

    tokens = write_class_shards(tmp_path / "tokens")
    trainer = PriorTrainer(tokens, tmp_path / "run", train_cfg(max_steps=5, log_every=1, checkpoint_every=2,
                                                               sample_every=0, val_size=8))
    val, train = set(trainer.val_idx.tolist()), set(trainer.train_idx.tolist())
    assert len(val) == 8 and not val & train and val | train == set(range(48))
    seen, condition = [], trainer._condition
    monkeypatch.setattr(trainer, "_condition", lambda idx: seen.extend(idx.tolist()) or condition(idx))
    for _ in range(10):  # two passes over the 40 training grids
        trainer._next_batch()
    assert set(seen) == train
    trainer.batches, trainer._batch_iter = 0, None
    rng = torch.get_rng_state()
    score = trainer.evaluate()["val_loss"]
    assert torch.equal(torch.get_rng_state(), rng) and trainer.evaluate()["val_loss"] == score
    trainer.run()
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records if "val_loss" in r] == [2, 4, 5]
    assert records[-1]["val_loss"] == pytest.approx(
        _held_out_loss(tmp_path, trainer.ema.model.state_dict(), 8), rel=1e-5)
    assert "val_loss" in (tmp_path / "run" / "model" / "README.md").read_text()
    again = PriorTrainer(tokens, tmp_path / "run2", train_cfg(val_size=8))
    assert torch.equal(again.val_idx, trainer.val_idx)
    # a diffusion prior's score draws timesteps and noise: from a fixed seed, the training RNG left as it was
    diffusion = PriorTrainer(tokens, tmp_path / "run3", train_cfg(kind="diffusion", preset="diffusion-test",
                                                                  val_size=8))
    rng = torch.get_rng_state()
    score = diffusion.evaluate()["val_loss"]
    assert torch.equal(torch.get_rng_state(), rng) and diffusion.evaluate()["val_loss"] == score
    assert held_out_split(48, None)[0].numel() == 0  # 1% of 48: none
    assert held_out_split(50_000, None)[0].numel() == 500 and held_out_split(500_000, None)[0].numel() == 1000
    with pytest.raises(RegvqError, match="leaves none of the 48 token grids"):
        held_out_split(48, 48)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["ar", "diffusion"])
def test_train_prior_steps_after_the_first_do_not_wait_for_the_gpu(tmp_path, kind):
    """A training step never makes the host wait for the GPU, so the host queues the next step while the GPU runs
    this one: the batch and its labels reach the device through pinned memory, class ids on the device are not
    read back to check their range, the diffusion schedule is copied there once, and the loss terms stay there
    until the next log. torch's sync debug mode, on from the second step, turns any wait into an error."""
    from regvq_cli.priors.training import PriorTrainer

    cfg = train_cfg(kind=kind, preset=f"{kind}-test", device="cuda", bf16=True, max_steps=4, log_every=100,
                    sample_every=0, checkpoint_every=100)
    trainer = PriorTrainer(write_class_shards(tmp_path / "tokens"), tmp_path / "run", cfg)
    trainer.train_step()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            trainer.train_step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert trainer.step == 4 and torch.isfinite(trainer.pending["loss"])


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["ar", "diffusion"])
def test_train_prior_on_cuda_with_bf16_and_compile(tmp_path, kind):
    from regvq_cli.engine.checkpoint import load_model
    from regvq_cli.priors.training import train_prior

    tokens = write_class_shards(tmp_path / "tokens")
    cfg = train_cfg(kind=kind, preset=f"{kind}-test", device="cuda", bf16=True, compile=True, max_steps=4,
                    sample_every=4)
    model = load_model(train_prior(tokens, tmp_path / "run", cfg))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # the counted step runs under the FLOP counter with compile on; MFU where the GPU's peak is known
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["tflops"] > 0 for r in records)
    assert ("mfu" in records[-1]) == ("H200" in torch.cuda.get_device_name())
