"""The discrete diffusion prior: schedule, forward process, posterior, loss, checkpoints, learning."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from regvq_cli.errors import RegvqError
from regvq_cli.priors.conditioning import TextStates
from regvq_cli.priors.diffusion import DiffusionConfig, DiffusionPrior
from regvq_cli.priors.presets import PRESETS, model_for, preset
from regvq_cli.priors.sampling import sample_diffusion

K = 5


def tiny(cond="none", T=10, **kw) -> DiffusionPrior:
    cfg = DiffusionConfig(codebook_size=K, grid_size=(2, 3), dim=32, n_layers=2, n_heads=2, num_timesteps=T,
                          cond=cond, num_classes=3, text_dim=8, text_max_tokens=4, seg_classes=3, **kw)
    torch.manual_seed(0)
    return DiffusionPrior(cfg).eval()


def transition(abar_s, gbar_s, abar_t, gbar_t):
    """Dense (K+1)x(K+1) matrix q(x_t = col | x_s = row) of the mask-and-replace step s -> t, float64."""
    a = abar_t / abar_s
    g = 1 - (1 - gbar_t) / (1 - gbar_s)
    b = (1 - a - g) / K
    Q = torch.zeros(K + 1, K + 1, dtype=torch.float64)
    Q[:K, :K] = b
    Q[range(K), range(K)] += a
    Q[:K, K] = g
    Q[K, K] = 1.0
    return Q


def test_config_json_round_trip():
    cfg = DiffusionConfig(grid_size=[8, 8], cond="text", dim=64, n_heads=4, num_timesteps=50, aux_weight=0.1)
    assert DiffusionConfig(**json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg


def test_step_transitions_compose_to_the_cumulative_ones():
    m = tiny()
    abar, gbar = m._abar, m._gbar
    product = torch.eye(K + 1, dtype=torch.float64)
    for t in range(1, m.num_timesteps + 1):
        Q = transition(abar[t - 1], gbar[t - 1], abar[t], gbar[t])
        assert (Q >= 0).all()
        torch.testing.assert_close(Q.sum(1), torch.ones(K + 1, dtype=torch.float64))
        product = product @ Q
        torch.testing.assert_close(product, transition(abar[0], gbar[0], abar[t], gbar[t]))


def test_forward_process_at_T_is_all_mask():
    m = tiny(T=100)
    # the paper's schedule: gbar_T = 0.99999
    assert m._gbar[-1] == pytest.approx(0.99999) and m._abar[-1] == pytest.approx(0.000009)
    x0 = torch.randint(0, K, (64, 6))
    xT = m.q_sample(x0, torch.full((64,), 100), generator=torch.Generator().manual_seed(0))
    assert (xT == K).all()
    # at t = 1 almost nothing changes
    x1 = m.q_sample(x0, torch.ones(64, dtype=torch.long), generator=torch.Generator().manual_seed(0))
    assert (x1 == x0).float().mean() > 0.99


def test_q_sample_matches_marginal():
    m = tiny(T=10)
    t = 5
    n = 200_000
    x0 = torch.full((n, 1), 2)
    xt = m.q_sample(x0, torch.full((n,), t), generator=torch.Generator().manual_seed(0))[:, 0]
    freq = torch.bincount(xt, minlength=K + 1).double() / n
    expected = transition(m._abar[0], m._gbar[0], m._abar[t], m._gbar[t])[2]
    torch.testing.assert_close(freq, expected, atol=4e-3, rtol=0)


@pytest.mark.parametrize("s,t", [(0, 1), (3, 4), (2, 7), (0, 10), (9, 10)])
def test_posterior_matches_dense_bayes(s, t):
    """p(x_s | x_t) from the log-space O(K) formula == sum_x0 p(x0) q(x_s | x_t, x0) from dense matrices."""
    m = tiny(T=10)
    abar, gbar = m._abar, m._gbar
    x_t = torch.tensor([[0, 1, K, K, 2, 4]])
    p0 = torch.softmax(torch.randn(1, 6, K, generator=torch.Generator().manual_seed(0)), -1)
    out = m.q_posterior(p0.log(), x_t, m.coefs(t, s)).exp().double()
    Q_step = transition(abar[s], gbar[s], abar[t], gbar[t])
    Q_s = transition(abar[0], gbar[0], abar[s], gbar[s])
    ref = torch.zeros(1, 6, K + 1, dtype=torch.float64)
    for n in range(6):
        for x0 in range(K):
            w = Q_step[:, x_t[0, n]] * Q_s[x0, :]  # q(x_t | x_s) q(x_s | x0), a function of x_s
            ref[0, n] += p0[0, n, x0] * w / w.sum()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.sum(-1), torch.ones(1, 6, dtype=torch.float64))


def test_training_coefficients_match_the_explicit_ones():
    m = tiny(T=10)
    t = torch.tensor([1, 4, 10])
    table = m.coefs(t)
    for i, ti in enumerate(t.tolist()):
        torch.testing.assert_close(table[i], m.coefs(ti, ti - 1)[0])


def test_true_posterior_at_t1_is_x0():
    m = tiny(T=10)
    x0 = torch.tensor([[0, 1, 2, 3, 4, 0]])
    x1 = torch.tensor([[0, K, 2, 1, 4, K]])  # some masked, one replaced
    post = m.q_posterior(m.log_onehot(x0), x1, m.coefs(1, 0)).exp()
    assert (post.argmax(-1) == x0).all() and (post.max(-1).values > 0.999).all()


@pytest.mark.parametrize("kind", ["none", "class", "text", "segmap"])
def test_shapes_and_loss(kind):
    m = tiny(kind)
    cond = {"none": None, "class": torch.tensor([0, 2]),
            "text": TextStates(torch.randn(2, 3, 8), torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)),
            "segmap": torch.randint(0, 3, (2, 8, 12))}[kind]
    x0 = torch.randint(0, K, (2, 2, 3))
    logits = m(torch.full((2, 6), K), torch.tensor([10, 3]), cond)
    assert logits.shape == (2, 6, K)
    m.train()
    loss, parts = m.loss(x0, cond, t=torch.tensor([1, 6]))
    assert torch.isfinite(loss) and set(parts) == {"vlb", "ce"}
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_invalid_schedule_is_rejected():
    with pytest.raises(RegvqError):
        DiffusionConfig(abar_1=0.6, gbar_1=0.6)
    with pytest.raises(RegvqError):
        DiffusionConfig(num_timesteps=1)


def test_checkpoint_round_trip(tmp_path):
    from regvq_cli.engine.checkpoint import load_model, save_model

    m = tiny("class")
    save_model(m, tmp_path / "d", card="# test\n")
    loaded = load_model(tmp_path / "d")
    assert isinstance(loaded, DiffusionPrior) and loaded.config == m.config
    x = torch.randint(0, K + 1, (2, 6))
    t = torch.tensor([3, 9])
    torch.testing.assert_close(loaded(x, t, torch.tensor([1, 2])), m(x, t, torch.tensor([1, 2])))


def test_presets():
    for name in ("diffusion-test", "diffusion-small", "diffusion-m", "diffusion-b", "diffusion-l"):
        assert isinstance(PRESETS[name], DiffusionConfig)
    # the AR presets' sizes, so that the two kinds compare at equal size
    assert (PRESETS["diffusion-b"].n_layers, PRESETS["diffusion-b"].dim) == (12, 768)
    assert (PRESETS["diffusion-l"].n_layers, PRESETS["diffusion-l"].dim) == (24, 1024)


def test_diffusion_m_fits_the_shipped_models_60_mb_with_text_conditioning():
    """diffusion-m is the diffusion counterpart of ar-m: under the 60 MB cap in bf16 with text conditioning, within
    a few percent of ar-m's parameters; diffusion-small is over it."""
    def n_params(name):
        cfg = dataclasses.replace(preset(name), codebook_size=1024, grid_size=(16, 16), cond="text", text_dim=384,
                                  text_max_tokens=32)
        with torch.device("meta"):
            return sum(p.numel() for p in model_for(cfg).parameters())

    assert 50e6 < 2 * n_params("diffusion-m") < 60e6 < 2 * n_params("diffusion-small")
    assert abs(n_params("diffusion-m") / n_params("ar-m") - 1) < 0.05


def stripes(c):
    """Toy class-conditional data: class c -> a 4x4 grid whose column j holds token 4c + j."""
    return (4 * c[:, None, None] + torch.arange(4)[None, None, :]).expand(-1, 4, 4) % 16


def test_learns_toy_class_conditional_distribution():
    torch.manual_seed(0)
    cfg = dataclasses.replace(preset("diffusion-test"), cond="class", num_classes=4)  # paper's aux weight
    m = model_for(cfg)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.0)
    m.train()
    losses = []
    for _ in range(250):
        c = torch.randint(0, 4, (64,))
        loss, _ = m.loss(stripes(c), c)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert sum(losses[-20:]) < 0.1 * sum(losses[:20])
    c = torch.arange(4).repeat(8)
    target = stripes(c)
    for kw in ({}, {"steps": 5}, {"sampler": "maskgit", "steps": 4}):
        out = sample_diffusion(m, c, 32, generator=torch.Generator().manual_seed(0), **kw)
        assert out.shape == (32, 4, 4) and out.max() < 16  # no [MASK] left
        acc = (out == target).float().mean().item()
        assert acc > 0.9, (kw, acc)


# ---- training on a token folder ---------------------------------------------------------------------------

def test_train_segmap_prior_decodes_samples_with_the_shards_tokenizer(tmp_path):
    import numpy as np

    from regvq_cli.data.shards import RunInfo, write_manifest, write_shard
    from regvq_cli.engine.checkpoint import file_sha256, load_model, save_model
    from regvq_cli.priors.training import TrainPriorConfig, train_prior
    from regvq_cli.tokenizer.model import Tokenizer
    from regvq_cli.tokenizer.presets import PRESETS as TOKENIZERS

    torch.manual_seed(0)
    tok_dir = save_model(Tokenizer(TOKENIZERS["tok-test"]), tmp_path / "tok")  # 32 px, 8x8 grid, 64 codes
    n = 12
    rng = np.random.default_rng(0)
    maps = np.zeros((n, 32, 32), dtype=np.uint8)
    maps[:, 16:] = rng.integers(1, 3, n)[:, None, None]  # sky (0) over ground 1 or 2
    tokens = np.where(maps[:, ::4, ::4] == 0, 5, 10 * maps[:, ::4, ::4])  # [n, 8, 8]
    run = RunInfo(tokenizer_id=str(tok_dir), tokenizer_sha256=file_sha256(tok_dir / "model.safetensors"),
                  grid=(8, 8), codebook_size=64, num_inputs=n, shard_size=n, segmap_size=(32, 32))
    write_shard(tmp_path / "tokens", 0, run, tokens, [f"{i}.png" for i in range(n)], segmaps=maps)
    write_manifest(tmp_path / "tokens")
    cfg = TrainPriorConfig(kind="diffusion", preset="diffusion-test", batch_size=4, max_steps=2, log_every=1,
                           sample_every=2, checkpoint_every=2, num_samples=3, sample_steps=4, device="cpu",
                           command="test")
    folder = train_prior(tmp_path / "tokens", tmp_path / "run", cfg)
    model = load_model(folder)
    assert isinstance(model, DiffusionPrior)
    assert model.config.cond == "segmap" and model.config.seg_classes == 3
    assert model.config.tokenizer == str(tok_dir) and model.config.tokenizer_sha256 == run.tokenizer_sha256
    from PIL import Image

    with Image.open(tmp_path / "run" / "samples" / "step-000002.png") as im:
        assert im.size == (3 * 32, 32)  # three decoded samples side by side
