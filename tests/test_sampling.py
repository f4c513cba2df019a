"""Samplers: top-k / top-p filtering, seeds, classifier-free guidance, callbacks, argument checks."""

from __future__ import annotations

import weakref

import pytest
import torch

from regvq_cli.errors import RegvqError
from regvq_cli.priors.ar import ARConfig, ARPrior
from regvq_cli.priors.conditioning import CondStates, TextStates
from regvq_cli.priors import sampling
from regvq_cli.priors.diffusion import DiffusionConfig, DiffusionPrior
from regvq_cli.priors.sampling import (filter_logits, sample_ar, sample_categorical, sample_diffusion,
                                       sample_logits)
from tests.test_priors_ar_static import no_collector, record_graphs

K = 12


def ar(cond="class"):
    torch.manual_seed(0)
    m = ARPrior(ARConfig(codebook_size=K, grid_size=(3, 3), dim=32, n_layers=2, n_heads=2, cond=cond,
                         num_classes=3, text_dim=6, text_max_tokens=5)).eval()
    for p in m.parameters():  # larger weights than the init: peaked, condition-dependent predictions
        torch.nn.init.normal_(p, std=0.3)
    return m


def diffusion(cond="class"):
    torch.manual_seed(0)
    m = DiffusionPrior(DiffusionConfig(codebook_size=K, grid_size=(3, 3), dim=32, n_layers=2, n_heads=2,
                                       cond=cond, num_classes=3, num_timesteps=12, text_dim=6,
                                       text_max_tokens=5)).eval()
    for p in m.parameters():  # adaLN-Zero starts as a near-constant model; give it some structure
        torch.nn.init.normal_(p, std=0.3)
    return m


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_filter_logits_top_k_and_top_p():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0, 0.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[True, False, False, True, True]]
    probs = torch.tensor([[0.05, 0.5, 0.3, 0.1, 0.05]])
    # nucleus 0.7: 0.5 alone is not enough, 0.5 + 0.3 is
    kept = ~torch.isinf(filter_logits(probs.log(), top_p=0.7))
    assert kept.tolist() == [[False, True, True, False, False]]
    kept = ~torch.isinf(filter_logits(probs.log(), top_p=0.5))
    assert kept.tolist() == [[False, True, False, False, False]]
    kept = ~torch.isinf(filter_logits(probs.log(), top_k=3, top_p=0.99))
    assert kept.sum() == 3
    torch.testing.assert_close(filter_logits(logits), logits)
    # the kept logits are unchanged and in place
    torch.testing.assert_close(filter_logits(logits, top_k=2)[0, 1:3], logits[0, 1:3])


def test_sampling_frequencies():
    probs = torch.tensor([0.6, 0.3, 0.1, 0.0])
    draws = sample_categorical(probs.log().expand(100_000, 4), generator=gen())
    freq = torch.bincount(draws, minlength=4).float() / 100_000
    torch.testing.assert_close(freq, probs, atol=6e-3, rtol=0)
    draws = sample_logits(probs.log().expand(20_000, 4), top_k=1, generator=gen())
    assert (draws == 0).all()
    assert (sample_logits(torch.tensor([[0.0, 3.0, 1.0]]), temperature=0) == 1).all()


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_a_temperature_near_zero_draws_what_greedy_draws(top_p):
    """Dividing by a tiny temperature overflowed float32 to inf in many entries at once, and the draw took the first
    of them (AR: a constant token; diffusion: NaN probabilities); the scaled logits now peak at 0, so the limit is
    the greedy draw."""
    c = torch.tensor([0, 1, 2])
    greedy = sample_ar(ar(), c, 3, temperature=0)
    assert torch.equal(sample_ar(ar(), c, 3, temperature=1e-40, top_p=top_p, generator=gen(1)), greedy)
    for kw in ({"steps": 4}, {"sampler": "maskgit", "steps": 4}):
        greedy = sample_diffusion(diffusion(), c, 3, temperature=0, generator=gen(2), **kw)
        cold = sample_diffusion(diffusion(), c, 3, temperature=1e-40, top_p=top_p, generator=gen(2), **kw)
        assert torch.equal(cold, greedy), kw
    logits = torch.tensor([[2.0, 30.0, 29.0, -5.0]])
    assert sample_logits(logits, temperature=1e-45, generator=gen()).item() == 1


def test_ar_seed_reproducibility():
    m = ar()
    c = torch.tensor([0, 1, 2, 0])
    a = sample_ar(m, c, 4, top_k=5, top_p=0.9, generator=gen(1))
    b = sample_ar(m, c, 4, top_k=5, top_p=0.9, generator=gen(1))
    d = sample_ar(m, c, 4, top_k=5, top_p=0.9, generator=gen(2))
    assert a.shape == (4, 3, 3) and a.dtype == torch.long and 0 <= a.min() and a.max() < K
    assert torch.equal(a, b) and not torch.equal(a, d)


def test_diffusion_seed_reproducibility():
    m = diffusion()
    c = torch.tensor([0, 1, 2])
    for kw in ({"steps": 4}, {"sampler": "maskgit", "steps": 3}):
        a = sample_diffusion(m, c, 3, generator=gen(1), **kw)
        assert torch.equal(a, sample_diffusion(m, c, 3, generator=gen(1), **kw))
        assert not torch.equal(a, sample_diffusion(m, c, 3, generator=gen(2), **kw))
        assert a.shape == (3, 3, 3) and a.max() < K


def test_ar_cfg_scale_one_equals_conditional():
    m = ar()
    c = torch.tensor([0, 2])
    x = torch.randint(0, K, (2, 8))
    # logits: the doubled batch (conditional rows, then null rows) mixed at scale 1 == the conditional model
    states = CondStates.cat(m.cond(c, 2), m.cond.null(2))
    both = m(x.repeat(2, 1), states)
    cond_only = m(x, c)
    mixed = both[2:] + 1.0 * (both[:2] - both[2:])
    torch.testing.assert_close(mixed, cond_only, atol=1e-5, rtol=1e-5)
    assert (both[2:] - cond_only).abs().max() > 1e-4  # the null rows differ: the check above means something
    # samples: the guided path at (almost) scale 1 draws the same tokens as the conditional one
    plain = sample_ar(m, c, 2, cfg=1.0, generator=gen(3))
    guided = sample_ar(m, c, 2, cfg=1.0 + 1e-6, generator=gen(3))
    assert torch.equal(plain, guided)
    assert not torch.equal(plain, sample_ar(m, c, 2, cfg=5.0, generator=gen(3)))


def test_diffusion_cfg_scale_one_equals_conditional():
    m = diffusion()
    c = torch.tensor([1, 2])
    plain = sample_diffusion(m, c, 2, steps=6, cfg=1.0, generator=gen(4))
    guided = sample_diffusion(m, c, 2, steps=6, cfg=1.0 + 1e-6, generator=gen(4))
    assert torch.equal(plain, guided)
    assert not torch.equal(plain, sample_diffusion(m, c, 2, steps=6, cfg=6.0, generator=gen(4)))


def test_text_prior_samples_with_guidance():
    m = ar("text")
    cond = TextStates(torch.randn(2, 3, 6), torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool))
    out = sample_ar(m, cond, 2, cfg=3.0, generator=gen())
    assert out.shape == (2, 3, 3)
    assert torch.equal(out, sample_ar(m, cond, 2, cfg=3.0, generator=gen()))  # the generator decides the draws
    assert not torch.equal(out, sample_ar(m, cond, 2, cfg=1.0, generator=gen()))  # and guidance moves them
    other = TextStates(torch.randn(2, 3, 6), cond.mask)
    assert not torch.equal(out, sample_ar(m, other, 2, cfg=3.0, generator=gen()))  # so does the text


def test_condition_broadcast_and_unconditional():
    m = ar()
    one = sample_ar(m, torch.tensor([1]), 3, generator=gen(5))
    many = sample_ar(m, torch.tensor([1, 1, 1]), 3, generator=gen(5))
    assert torch.equal(one, many)
    u = diffusion("none")
    assert sample_diffusion(u, None, 2, steps=3, cfg=3.0, generator=gen()).shape == (2, 3, 3)


def test_callbacks():
    seen = []
    sample_ar(ar(), torch.tensor([0]), 1, generator=gen(), callback=lambda info: seen.append(info["i"]))
    assert seen == list(range(9))
    seen = []
    sample_diffusion(diffusion(), torch.tensor([0]), 1, steps=5, generator=gen(),
                     callback=lambda info: seen.append((info["i"], info["total"])))
    assert seen == [(i, 5) for i in range(5)]


def test_maskgit_unmasks_on_a_cosine_schedule():
    masked = []
    sample_diffusion(diffusion(), torch.tensor([0]), 1, sampler="maskgit", steps=4, generator=gen(),
                     callback=lambda info: masked.append(int((info["tokens"] == K).sum())))
    # N = 9: floor(9 cos(pi/2 * k/4)) = 8, 6, 3, 0 still masked after steps 1..4
    assert masked == [8, 6, 3, 0]


def test_maskgit_step_sees_the_masked_share_of_every_row(monkeypatch):
    """The masked count that picks each step's t is kept on the host (no device sync); it must be the count in
    every row of the grid the step starts from, for any steps and with guidance."""
    d, N = diffusion(), 9
    real, ratios = d.t_for_mask_ratio, []
    monkeypatch.setattr(d, "t_for_mask_ratio", lambda r: ratios.append(r) or real(r))
    for steps, n in ((4, 3), (9, 2), (2, 4)):
        ratios.clear()
        counts = [[N] * n]  # masked tokens per row before each step, then after the last
        sample_diffusion(d, torch.arange(n) % 2, n, sampler="maskgit", steps=steps, cfg=2.0, generator=gen(),
                         callback=lambda info: counts.append((info["tokens"] == K).sum(1).tolist()))
        assert [[round(r * N)] * n for r in ratios] == counts[:-1] and counts[-1] == [0] * n


def test_compiled_denoiser_draws_the_same_tokens():
    """compile=True (torch.compile of the denoiser, on the CPU here): the tokens of the eager sampler, with both
    samplers and guidance; the compiled function is made once per model."""
    d = diffusion()
    for kw in ({"steps": 5, "cfg": 2.0}, {"sampler": "maskgit", "steps": 4, "cfg": 2.0}):
        eager = sample_diffusion(d, torch.tensor([0, 1]), 2, generator=gen(), **kw)
        assert torch.equal(sample_diffusion(d, torch.tensor([0, 1]), 2, generator=gen(), compile=True, **kw), eager)
    assert sampling.compiled(d, "forward") is sampling.compiled(d, "forward")


@pytest.mark.parametrize("cond", ["class", "text"])
def test_a_kept_diffusion_sampler_draws_what_fresh_calls_draw(cond, monkeypatch):
    """DiffusionSampler keeps its buffers and recorded denoiser pass between calls: each call draws what a fresh
    sample_diffusion call draws from the same generator state, with both samplers; the pass is recorded again
    only when the condition states' shapes change (text: padded, then not; a stand-in for the graphs records what
    a real one would)."""
    recorded = record_graphs(monkeypatch)
    d = diffusion(cond)
    if cond == "class":
        conds = [torch.tensor([0, 1]), torch.tensor([2, 0]), torch.tensor([0, 1])]
    else:
        padded = TextStates(torch.randn(2, 5, 6, generator=gen(1)), torch.tensor([[1, 1, 0, 0, 0], [1] * 5]).bool())
        conds = [padded, TextStates(torch.randn(2, 5, 6, generator=gen(2)), torch.ones(2, 5, dtype=torch.bool)), padded]
    for kw in ({"steps": 5, "cfg": 2.0}, {"sampler": "maskgit", "steps": 4}):
        for graphs in (False, True):
            mine, fresh = gen(7), gen(7)
            kept = sampling.DiffusionSampler(d, 2, generator=mine, cuda_graphs=graphs, **kw)
            recorded.clear()
            for i, c in enumerate(conds):
                assert torch.equal(kept(c), sample_diffusion(d, c, 2, generator=fresh, **kw)), (kw, graphs, i)
            assert len(recorded) == (0 if not graphs else 3 if cond == "text" else 1), recorded


def test_argument_errors():
    m, d = ar(), diffusion()
    c = torch.tensor([0])
    with pytest.raises(RegvqError, match="steps must be in 1..12"):
        sample_diffusion(d, c, 1, steps=13)
    with pytest.raises(RegvqError, match="unknown diffusion sampler"):
        sample_diffusion(d, c, 1, sampler="ddim")
    with pytest.raises(RegvqError, match="top_p"):
        sample_ar(m, c, 1, top_p=0.0)
    with pytest.raises(RegvqError, match="at least 1"):
        sample_ar(m, c, 0)
    with pytest.raises(RegvqError, match="class-conditional"):
        sample_ar(m, None, 1)
    with pytest.raises(RegvqError, match="needs the model on a CUDA device"):
        sample_diffusion(d, c, 1, steps=2, cuda_graphs=True)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_diffusion_denoiser_replays_in_a_cuda_graph(dtype):
    """cuda_graphs=True records the denoiser once per call and replays it every step: the tokens of the eager
    sampler (the same kernels run), with both samplers and guidance, any generator; with compile=True, those of
    the compiled eager sampler (compiled kernels may round differently from the plain ones)."""
    dev = torch.device("cuda")
    d = diffusion().to(dev, dtype)
    c = torch.tensor([0, 1, 2], device=dev)
    for kw in ({"steps": 6, "cfg": 2.0}, {"sampler": "maskgit", "steps": 4, "cfg": 2.0}, {"steps": 3}):
        for g in (torch.Generator(device=dev), torch.Generator()):
            eager = sample_diffusion(d, c, 3, generator=g.manual_seed(1), **kw)
            assert torch.equal(sample_diffusion(d, c, 3, generator=g.manual_seed(1), cuda_graphs=True, **kw), eager)
        comp = sample_diffusion(d, c, 3, generator=g.manual_seed(1), compile=True, **kw)
        both = sample_diffusion(d, c, 3, generator=g.manual_seed(1), compile=True, cuda_graphs=True, **kw)
        assert torch.equal(both, comp) and both.max() < K, kw


@pytest.mark.gpu
def test_a_kept_diffusion_sampler_replays_its_graph_call_after_call():
    """On a GPU, a DiffusionSampler's recorded denoiser replayed in later calls (compiled or not) draws the tokens
    of fresh calls; dropped, it is freed at once (nothing refers back to it)."""
    dev = torch.device("cuda")
    d = diffusion().to(dev, torch.bfloat16)
    conds = [torch.tensor(c, device=dev) for c in ([0, 1, 2], [2, 2, 0], [0, 1, 2])]
    for kw in ({"steps": 6, "cfg": 2.0}, {"sampler": "maskgit", "steps": 4, "cfg": 2.0, "compile": True}):
        mine, fresh = torch.Generator(device=dev).manual_seed(1), torch.Generator(device=dev).manual_seed(1)
        kept = sampling.DiffusionSampler(d, 3, generator=mine, cuda_graphs=True, **kw)
        for i, c in enumerate(conds):
            assert torch.equal(kept(c), sample_diffusion(d, c, 3, generator=fresh, cuda_graphs=True, **kw)), (kw, i)
        ref = weakref.ref(kept)
        with no_collector():  # dropped, it is freed at once (nothing refers back to it)
            del kept
            assert ref() is None


@pytest.mark.gpu
def test_cuda_bf16_cache_and_seeded_sampling():
    dev = torch.device("cuda")
    m = ar().to(dev, torch.bfloat16)
    c = torch.tensor([0, 1, 2], device=dev)
    x = torch.randint(0, K, (3, 9), device=dev)
    full = m(x[:, :-1], c).float()
    cache = m.new_cache(3)
    steps = [m(x[:, :0], c, cache=cache)] + [m(x[:, i:i + 1], cache=cache, start_pos=i) for i in range(8)]
    torch.testing.assert_close(torch.cat(steps, 1).float(), full, atol=0.1, rtol=0.05)
    gen_cuda = torch.Generator(device=dev)
    a = sample_ar(m, c, 3, cfg=2.0, top_k=4, generator=gen_cuda.manual_seed(0))
    assert a.device.type == "cuda" and torch.equal(a, sample_ar(m, c, 3, cfg=2.0, top_k=4,
                                                                generator=gen_cuda.manual_seed(0)))
    d = diffusion().to(dev, torch.bfloat16)
    for kw in ({"steps": 6}, {"sampler": "maskgit", "steps": 4}):
        s1 = sample_diffusion(d, c, 3, cfg=2.0, generator=gen_cuda.manual_seed(1), **kw)
        assert torch.equal(s1, sample_diffusion(d, c, 3, cfg=2.0, generator=gen_cuda.manual_seed(1), **kw))
        assert s1.max() < K
        s2 = sample_diffusion(d, c, 3, cfg=2.0, generator=gen_cuda.manual_seed(1), compile=True, **kw)
        assert torch.equal(s2, sample_diffusion(d, c, 3, cfg=2.0, generator=gen_cuda.manual_seed(1), compile=True,
                                                **kw))
        assert s2.shape == s1.shape and s2.max() < K


@pytest.mark.gpu
@pytest.mark.parametrize("sampler", ["ar", "vq", "maskgit"])
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_no_step_after_the_first_waits_for_the_gpu(sampler, cuda_graphs):
    """From the second step on, a sampling loop never makes the host wait for the GPU (no reads of device values,
    no synchronous copies), so the host queues steps ahead: torch's sync debug mode, switched on by the callback
    after the first step, turns any such wait into an error. A CUDA generator, as `regvq sample` uses on a GPU
    (a CPU one copies every draw's noise to the device)."""
    dev = torch.device("cuda")
    m = (ar() if sampler == "ar" else diffusion()).to(dev)
    c, g = torch.tensor([0, 1], device=dev), torch.Generator(device=dev).manual_seed(0)
    seen = []

    def callback(info):
        seen.append(info["i"])
        if info["i"] == 0:
            torch.cuda.set_sync_debug_mode("error")

    try:
        if sampler == "ar":
            x = sample_ar(m, c, 2, cfg=2.0, top_k=6, generator=g, callback=callback, cuda_graphs=cuda_graphs)
        else:
            x = sample_diffusion(m, c, 2, steps=6, cfg=2.0, sampler=sampler, generator=g, callback=callback,
                                 cuda_graphs=cuda_graphs)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert len(seen) == (9 if sampler == "ar" else 6) and x.max() < K
