"""The CUDA-graph friendly AR decode path: `ARPrior.decode_step` on the static KV cache, and `sample_ar` built on it.

CPU: decode_step equals the full forward pass at every position (all condition kinds, whole cache or windows);
sample_ar draws exactly the tokens of the former dynamic-cache loop (`dynamic_sample_ar` below) for the same seed;
the step that the graph path records reads no tensor value on the host (NoHostReads below).
GPU (`-m gpu`): the recorded graphs replay the eager loop token for token.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import types
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from regvq_cli.errors import RegvqError
from regvq_cli.priors import decode_attention, sampling
from regvq_cli.priors.ar import dequantize, quantize
from regvq_cli.priors.conditioning import CondStates, TextStates
from regvq_cli.priors.sampling import _encode, sample_ar, sample_logits
from tests.test_priors_ar import KINDS, H, K, W, raw_cond, tiny
from tests.conftest import run_interpreted


def peaked(kind):
    """A tiny prior with larger weights than the init: peaked, condition-dependent predictions."""
    m = tiny(kind)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return m


@torch.no_grad()
def dynamic_sample_ar(model, cond, n, *, cfg=1.0, temperature=1.0, top_k=0, top_p=1.0, generator=None):
    """The sampler as it was before decode_step: `forward` on the cache, the attended length growing per step."""
    N = H * W
    states, guided = _encode(model, cond, n, cfg)
    B = 2 * n if guided else n
    cache = model.new_cache(B)
    logits = model(torch.zeros(B, 0, dtype=torch.long), states, cache=cache)[:, -1]
    out = torch.empty(n, N, dtype=torch.long)
    for i in range(N):
        logits = logits.float()
        if guided:
            logits = logits[n:] + cfg * (logits[:n] - logits[n:])
        tok = sample_logits(logits, temperature, top_k, top_p, generator)
        out[:, i] = tok
        if i + 1 < N:
            step_in = torch.cat([tok, tok]) if guided else tok
            logits = model(step_in[:, None], cache=cache, start_pos=i)[:, -1]
    return out.view(n, H, W)


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("kind", KINDS)
def test_decode_step_matches_full_forward(kind):
    m = tiny(kind)
    x = torch.randint(0, K, (2, H * W))
    full = m(x[:, :-1], raw_cond(kind))  # [2, N, K]: row j predicts x_j
    with torch.no_grad():
        for window in (None, "tight"):
            cache = m.new_cache(2)
            steps = [m(x[:, :0], raw_cond(kind), cache=cache)[:, 0]]  # the prefix: predicts x_0
            for i in range(H * W - 1):
                w = cache.prefix_len + i + 1 if window == "tight" else None  # the fewest positions that work
                steps.append(m.decode_step(x[:, i:i + 1], torch.tensor(i), cache, w))
            assert all(s.shape == (2, K) for s in steps)
            torch.testing.assert_close(torch.stack(steps, dim=1), full, atol=1e-5, rtol=1e-4)


def test_decode_step_guidance_at_scale_one_is_the_conditional_model():
    m = peaked("class")
    c = torch.tensor([0, 2])
    x = torch.randint(0, K, (2, 4))
    with torch.no_grad():
        both, cond_only = m.new_cache(4), m.new_cache(2)
        x2 = x.repeat(2, 1)  # conditional rows, then null rows
        m(x2[:, :0], CondStates.cat(m.cond(c, 2), m.cond.null(2)), cache=both)
        m(x[:, :0], c, cache=cond_only)
        for i in range(4):
            pos = torch.tensor(i)
            lb, lc = m.decode_step(x2[:, i:i + 1], pos, both), m.decode_step(x[:, i:i + 1], pos, cond_only)
            torch.testing.assert_close(lb[2:] + 1.0 * (lb[:2] - lb[2:]), lc, atol=1e-5, rtol=1e-5)
            assert (lb[2:] - lc).abs().max() > 1e-4  # the null rows differ: the check above means something


@pytest.mark.parametrize("kind", KINDS)
def test_an_int8_cache_holds_quantized_keys_and_the_steps_read_them_back(kind):
    """An int8 cache: layer 0's keys and values (which depend on the tokens alone) are the plain cache's quantized,
    exactly; decode steps, which write their key and value and read the cache back, give the logits of one pass
    over all positions through an int8 cache (both attend what the cache holds, with quantized queries); and
    those stay near the plain cache's (the rounding moves them a little, not nothing)."""
    m = peaked(kind)
    x = torch.randint(0, K, (2, H * W))
    with torch.no_grad():
        plain, whole = m.new_cache(2), m.new_cache(2, storage=torch.int8)
        want = m(x[:, :-1], raw_cond(kind), cache=plain)
        full = m(x[:, :-1], raw_cond(kind), cache=whole)  # [2, N, K]
        assert whole.k[0].dtype == torch.int8 and whole.dtype == torch.float32
        assert whole.nbytes == plain.nbytes * (16 + 4) // (4 * 16)  # head_dim 16: 16 int8 and a float32 scale
        for got, scale, ref in ((whole.k[0], whole.k_scale[0], plain.k[0]), (whole.v[0], whole.v_scale[0],
                                                                             plain.v[0])):
            values, s = quantize(ref)
            assert torch.equal(got, values) and torch.equal(scale, s)
        cache = m.new_cache(2, storage=torch.int8)
        steps = [m(x[:, :0], raw_cond(kind), cache=cache)[:, 0]]
        for i in range(H * W - 1):
            steps.append(m.decode_step(x[:, i:i + 1], torch.tensor(i), cache))
        # within float32 rounding, but for a query or key lying at a rounding boundary, which the two (differently
        # shaped matmuls) may round one int8 step apart: a few logits move by up to ~1e-4
        diff = (torch.stack(steps, dim=1) - full).abs()
        assert (diff <= 1e-5 + 1e-4 * full.abs()).float().mean() > 0.98 and diff.max() < 1e-3, diff.max()
        gap = (full.log_softmax(-1) - want.log_softmax(-1)).abs().max()
        assert 0 < gap < 0.2, gap


def test_quantize_rounds_each_vector_to_int8_with_its_own_scale():
    """Each vector's largest |value| becomes +-127 and the rest are within half a step of it; a zero vector stays
    zero (no division by zero); dequantize undoes it within that half step."""
    x = torch.randn(3, 5, 16) * torch.tensor([1e-3, 1.0, 300.0])[:, None, None]
    x[1, 2] = 0
    values, scale = quantize(x)
    assert values.dtype == torch.int8 and scale.shape == (3, 5) and scale.dtype == torch.float32
    assert (values.abs().amax(-1)[x.abs().amax(-1) > 0] == 127).all() and not values[1, 2].any()
    back = dequantize(values, scale, torch.float32)
    assert ((back - x).abs() <= scale[..., None] / 2 * (1 + 1e-6)).all()
    with pytest.raises(ValueError, match="floating dtype or torch.int8"):
        peaked("class").new_cache(2, storage=torch.int16)


def test_sample_ar_with_an_int8_cache():
    """kv_dtype=torch.int8 samples valid tokens, the same ones for the same seed, with guidance and without."""
    m = peaked("class")
    for opts in (dict(), dict(cfg=3.0, top_k=6)):
        a = sample_ar(m, raw_cond("class"), 2, generator=gen(0), kv_dtype=torch.int8, **opts)
        assert torch.equal(a, sample_ar(m, raw_cond("class"), 2, generator=gen(0), kv_dtype=torch.int8, **opts))
        assert a.shape == (2, H, W) and 0 <= int(a.min()) and int(a.max()) < K


OPTIONS = [dict(), dict(cfg=3.0), dict(cfg=2.0, temperature=0.8, top_k=5, top_p=0.9), dict(temperature=0.0),
           dict(cfg=4.0, temperature=0.0)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("windows", [1, 4])
def test_sample_ar_draws_the_tokens_of_the_dynamic_cache_loop(kind, windows, monkeypatch):
    if windows == 4:  # every cache counts as large: attention over 4 growing windows
        monkeypatch.setattr(sampling, "SPLIT_CACHE_BYTES", 0)
    m = peaked(kind)
    cache = m.new_cache(2)
    assert len(sampling._windows(cache)) == windows and sampling._windows(cache)[-1] == cache.max_len
    for seed, opts in enumerate(OPTIONS):
        if kind == "none" and "cfg" in opts:
            continue
        static = sample_ar(m, raw_cond(kind), 2, generator=gen(seed), **opts)
        assert torch.equal(static, dynamic_sample_ar(m, raw_cond(kind), 2, generator=gen(seed), **opts)), opts
    greedy = sample_ar(m, raw_cond(kind), 2, temperature=0.0)  # no generator needed, none consumed
    assert torch.equal(greedy, sample_ar(m, raw_cond(kind), 2, temperature=0.0, generator=gen(9)))


class NoHostReads(TorchDispatchMode):
    """Fails on what a CUDA graph cannot record: a tensor value read on the host (.item(), bool(), int() all
    dispatch `_local_scalar_dense`) or an output whose shape depends on tensor values."""

    SHAPE_FROM_VALUES = {torch.ops.aten.nonzero.default, torch.ops.aten.masked_select.default}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        bool_index = func is torch.ops.aten.index.Tensor and any(
            i is not None and i.dtype == torch.bool for i in args[1])
        if func is torch.ops.aten._local_scalar_dense.default or func in self.SHAPE_FROM_VALUES or bool_index:
            raise AssertionError(f"{func} needs tensor values on the host")
        return func(*args, **(kwargs or {}))


def test_no_host_reads_catches_syncs():
    x = torch.tensor([0.5, -1.0])
    for bad in (lambda: x.sum().item(), lambda: bool(x.max() > 0), lambda: x[x > 0], lambda: x.nonzero()):
        with pytest.raises(AssertionError, match="needs tensor values on the host"), NoHostReads():
            bad()


@pytest.mark.parametrize("kind", ["class", "text"])
def test_the_recorded_step_reads_no_values_on_the_host(kind, monkeypatch):
    """The graph path on a CPU, the prefix pass and every step (what captures record) run under NoHostReads."""
    windows = []

    class Checked(contextlib.nullcontext):
        def __init__(self, generator, device):
            super().__init__()

        def run(self, step, window):
            windows.append(window)
            with NoHostReads():
                step(window)

        def clear(self):
            pass

    monkeypatch.setattr(sampling, "_check_graphable", lambda device, generator: None)
    monkeypatch.setattr(sampling, "_GraphedStep", Checked)
    monkeypatch.setattr(sampling, "SPLIT_CACHE_BYTES", 0)
    m = peaked(kind)
    for opts in (dict(cfg=3.0, temperature=0.9, top_k=6, top_p=0.95), dict(temperature=0.0)):
        windows.clear()
        graphed = sample_ar(m, raw_cond(kind), 2, generator=gen(0), cuda_graphs=True, **opts)
        prefix, steps = windows[0], windows[1:]  # the prefix pass is recorded too
        assert prefix == "prefix" and len(steps) == H * W - 1 and len(set(steps)) >= 2 and steps == sorted(steps)
        assert torch.equal(graphed, sample_ar(m, raw_cond(kind), 2, generator=gen(0), **opts))


@contextlib.contextmanager
def no_collector():
    """The cyclic garbage collector off: what is freed inside was freed by its reference count alone."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def record_graphs(monkeypatch) -> list:
    """Stand in for the CUDA graph runner off CUDA: the real runner's choice of when to record, with every pass run
    eagerly; the returned list gets each key as it would be recorded."""
    recorded = []

    class Recorder(sampling._GraphedStep):
        def __init__(self, generator, device):
            self.graphs = {}

        def _record(self, step, key):
            recorded.append(key)
            return types.SimpleNamespace(replay=lambda: step(key))  # a replay runs the recorded pass again

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr(sampling, "_check_graphable", lambda device, generator: None)
    monkeypatch.setattr(sampling, "_GraphedStep", Recorder)
    return recorded


def other_conds(kind, model):
    """Conditions for calls one after another: the test's, another of the same kind, the first again; for text
    the second pads nothing (so its prefix is not padded, which a recorded step holds as a constant)."""
    first = raw_cond(kind)
    T = model.config.text_max_tokens
    if kind == "none":
        return [None, None, None]
    if kind == "text":
        second = TextStates(torch.randn(2, T, first.states.shape[-1], generator=gen(3)),
                            torch.ones(2, T, dtype=torch.bool))
    else:
        second = first.flip(0) if kind == "class" else (first + 1) % 3
    return [first, second, first]


@pytest.mark.parametrize("kind", KINDS)
def test_an_ar_sampler_called_again_draws_what_fresh_calls_draw(kind, monkeypatch):
    """ARSampler keeps its cache, buffers and recorded prefix pass and step between calls: each call draws what a
    fresh sample_ar call draws from the same generator state, whatever the calls before it held; it records again
    only when the condition states' shapes change, and with them the prefix's length or padding (a stand-in for
    the graphs records what a real one would)."""
    recorded = record_graphs(monkeypatch)
    monkeypatch.setattr(sampling, "SPLIT_CACHE_BYTES", 0)  # several windows, so several recordings
    m = peaked(kind)
    for graphs in (False, True):
        for opts in (dict(cfg=3.0, top_k=6), dict(temperature=0.8, top_p=0.9)):
            mine, fresh = gen(5), gen(5)
            sampler = sampling.ARSampler(m, 2, generator=mine, cuda_graphs=graphs, **opts)
            prefixes, recordings = [], []
            for i, cond in enumerate(other_conds(kind, m)):
                seen, before = [], len(recorded)
                got = sampler(cond, callback=lambda info: seen.append(info["i"]))
                assert torch.equal(got, sample_ar(m, cond, 2, generator=fresh, **opts)), (kind, graphs, opts, i)
                assert seen == list(range(H * W))
                prefixes.append((sampler.cache.prefix_len, sampler.cache.padded))
                recordings.append(recorded[before:])
            if not graphs:
                assert recorded == []
                continue
            # a pass is recorded on its second run with the same prefix (length and padding): a first call records
            # its steps, the prefix pass only a second call with the prefix of the first; all is recorded by then
            assert recordings[0] and "prefix" not in recordings[0]
            for i in (1, 2):
                second_run = prefixes[i] == prefixes[i - 1] and "prefix" not in recordings[i - 1]
                assert ("prefix" in recordings[i]) == second_run, (i, recordings)
                assert len(set(recordings[i])) == len(recordings[i])
            if prefixes[0] == prefixes[1] == prefixes[2]:
                assert recordings[2] == []
            if kind == "text":  # the unpadded second prefix and the padded third were recorded again
                assert prefixes[0] != prefixes[1] != prefixes[2] and recordings[1] and recordings[2]


def test_cuda_graphs_refused_off_cuda():
    with pytest.raises(RegvqError, match="cuda_graphs needs the model on a CUDA device"):
        sample_ar(tiny("class"), raw_cond("class"), 2, cuda_graphs=True)
    cuda0 = torch.device("cuda", 0)
    sampling._check_graphable(cuda0, None)  # the default CUDA generator
    with pytest.raises(RegvqError, match="give a torch.Generator on cuda:0"):
        sampling._check_graphable(cuda0, gen(0))  # a CPU generator cannot draw inside a CUDA graph


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["class", "text"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_replay_equals_the_eager_loop(kind, dtype, monkeypatch):
    monkeypatch.setattr(sampling, "SPLIT_CACHE_BYTES", 0)  # several windows, so several graphs
    dev = torch.device("cuda")
    m = peaked(kind).to(dev, dtype)
    cond = raw_cond(kind)
    cond = type(cond)(*(t.to(dev) for t in cond)) if kind == "text" else cond.to(dev)
    g = torch.Generator(device=dev)
    for opts in (dict(cfg=3.0, top_k=5, top_p=0.9), dict(temperature=0.7)):
        eager = sample_ar(m, cond, 2, generator=g.manual_seed(0), **opts)
        graphed = sample_ar(m, cond, 2, generator=g.manual_seed(0), cuda_graphs=True, **opts)
        assert graphed.device.type == "cuda" and torch.equal(graphed, eager), opts
        # the default CUDA generator works too
        torch.cuda.manual_seed(1)
        eager = sample_ar(m, cond, 2, **opts)
        torch.cuda.manual_seed(1)
        assert torch.equal(sample_ar(m, cond, 2, cuda_graphs=True, **opts), eager), opts
    with pytest.raises(RegvqError, match="give a torch.Generator on cuda"):
        sample_ar(m, cond, 2, generator=gen(0), cuda_graphs=True)


def test_compiled_decode_step_draws_the_same_tokens():
    """compile=True (torch.compile of the decode step, on the CPU here): the tokens of the eager loop, and the
    compiled step is made once per model."""
    m = peaked("class")
    for opts in (dict(cfg=3.0, top_k=6), dict(temperature=0.8, top_p=0.9)):
        eager = sample_ar(m, raw_cond("class"), 2, generator=gen(0), **opts)
        assert torch.equal(sample_ar(m, raw_cond("class"), 2, generator=gen(0), compile=True, **opts), eager), opts
    assert sampling.compiled(m, "decode_step") is sampling.compiled(m, "decode_step")


def test_compile_also_runs_the_draw_compiled(monkeypatch):
    """compile=True draws every token through the compiled draw (guidance and filters included), once per step."""
    calls = []

    def counted(*args):
        calls.append(args[2:])  # guided, cfg, temperature, top_k, top_p
        return sampling._draw(*args)

    monkeypatch.setattr(sampling, "_compiled_draw", lambda: counted)
    monkeypatch.setattr(sampling, "compiled", lambda model, method: getattr(model, method))  # no compile: fast
    m = peaked("class")
    eager = sample_ar(m, raw_cond("class"), 2, cfg=3.0, top_k=6, generator=gen(0))
    assert not calls
    assert torch.equal(sample_ar(m, raw_cond("class"), 2, cfg=3.0, top_k=6, generator=gen(0), compile=True), eager)
    assert calls == [(True, 3.0, 1.0, 6, 1.0)] * (H * W)


KERNEL_CHECK = """
import torch, torch.nn.functional as F
from regvq_cli.priors.decode_attention import decode_attention, rope_table
from regvq_cli.priors.sampling import sample_ar
from tests.test_priors_ar import raw_cond
from tests.test_priors_ar_static import gen, peaked

from regvq_cli.priors.layers import apply_rope, rope_cos_sin

torch.manual_seed(0)
B, H, L, D = 3, 2, 150, 32
k, v = torch.randn(B, H, L, D), torch.randn(B, H, L, D)
valid = torch.ones(B, L, dtype=torch.bool)
valid[1, :64] = False  # a whole block of keys padded
valid[2, 5:9] = False
for last, rows in ((0, None), (63, None), (64, valid), (131, valid), (L - 1, valid)):
    qkv = torch.randn(B, 1, 3 * H * D)  # the step's projections, as the qkv layer gives them
    cos, sin = rope_cos_sin(torch.tensor([last]), D)  # [1, D] each: the plain step's tables
    # the plain step: rotate q and k, write k and v at `last`, attend with a mask
    q_new, k_new, v_new = qkv.view(B, 1, 3, H, D).permute(2, 0, 3, 1, 4)  # each [B, H, 1, D]
    q_new, k_new = apply_rope(q_new, cos, sin), apply_rope(k_new, cos, sin)
    k_want, v_want = k.clone(), v.clone()
    k_want[:, :, last], v_want[:, :, last] = k_new[:, :, 0], v_new[:, :, 0]
    keep = (torch.arange(L) <= last)[None] & (valid if rows is not None else True)
    keep[:, last] = True  # the new position is never padding
    want = F.scaled_dot_product_attention(q_new, k_want, v_want, attn_mask=keep[:, None, None, :])[:, :, 0]
    got = decode_attention(qkv.view(B, 3, H, D), rope_table(L, D, 10000.0), k, v, torch.tensor([last]), rows)
    assert got.shape == (B, H, D) and (got - want).abs().max() < 1e-5, (last, (got - want).abs().max())
    assert torch.allclose(k, k_want, atol=1e-6) and torch.equal(v, v_want), last  # appended in place
    assert torch.equal(k[:, :, :last], k_want[:, :, :last])  # and nothing else written
from regvq_cli.priors.decode_attention import add_rms_norm
x, y, w = torch.randn(3, 1, 48), torch.randn(3, 1, 48), torch.rand(48) + 0.5  # 48: not a power of two
s, n = add_rms_norm(x, y, w, 1e-5)
assert torch.equal(s, x + y) and (n - F.rms_norm(x + y, (48,), w, 1e-5)).abs().max() < 1e-6
x, y, w = x.bfloat16(), y.bfloat16(), w.bfloat16()  # as when sampling on a GPU (the interpreter rounds to bf16
s, n = add_rms_norm(x, y, w, 1e-5)  # its own way, so within bf16's precision here; on a GPU, as torch rounds)
torch.testing.assert_close(s, x + y)
torch.testing.assert_close(n, F.rms_norm(x + y, (48,), w, 1e-5), atol=0.02, rtol=0.02)
# an int8 cache: the kernel quantizes the query, new key and value as ar.quantize does and attends what the
# cache holds
from regvq_cli.priors.ar import dequantize, quantize
last = 131
qkv = torch.randn(B, 1, 3 * H * D) * 3
q_new, k_new, v_new = qkv.view(B, 1, 3, H, D).permute(2, 0, 3, 1, 4)
cos, sin = rope_cos_sin(torch.tensor([last]), D)
q_new, k_new = apply_rope(q_new, cos, sin), apply_rope(k_new, cos, sin)
q_new = dequantize(*quantize(q_new), torch.float32)
(k8, ks), (v8, vs) = quantize(k), quantize(v)
k_want, v_want = dequantize(k8, ks, torch.float32), dequantize(v8, vs, torch.float32)
(kq, kqs), (vq, vqs) = quantize(k_new[:, :, 0]), quantize(v_new[:, :, 0])
k_want[:, :, last], v_want[:, :, last] = dequantize(kq, kqs, torch.float32), dequantize(vq, vqs, torch.float32)
keep = (torch.arange(L) <= last)[None] & valid
keep[:, last] = True
want = F.scaled_dot_product_attention(q_new, k_want, v_want, attn_mask=keep[:, None, None, :])[:, :, 0]
got = decode_attention(qkv.view(B, 3, H, D), rope_table(L, D, 10000.0), k8, v8, torch.tensor([last]), valid,
                       scales=(ks, vs))
assert (got - want).abs().max() < 1e-5, (got - want).abs().max()
assert torch.equal(v8[:, :, last], vq) and torch.equal(vs[:, :, last], vqs)  # v is not rotated: exactly
# the key is rotated, which the interpreter and torch round alike only to within float32's last bit: its
# quantized values may then differ by one step where the rotated value lies at a rounding boundary
assert torch.allclose(ks[:, :, last], kqs, rtol=1e-6, atol=0)
assert (k8[:, :, last].int() - kq.int()).abs().max() <= 1
# a few rows' linear layer, with the residual add and norm or SwiGLU's product before it folded in: K and N
# not multiples of the blocks, 3 rows of a block of 4, three programs (the default under the interpreter is one)
from functools import partial
from regvq_cli.priors import decode_attention
rows_linear = partial(decode_attention.rows_linear, block_n=4, block_k=32)
w, g = torch.randn(10, 48), torch.rand(48) + 0.5
for R in (1, 3):
    x, y, xx = torch.randn(R, 48), torch.randn(R, 48), torch.randn(R, 96)
    assert (rows_linear(x, w) - x @ w.t()).abs().max() < 1e-5
    s, out = rows_linear(x, w, norm=g, add=y)
    assert torch.equal(s, x + y) and (out - F.rms_norm(x + y, (48,), g, 1e-5) @ w.t()).abs().max() < 1e-5
    s, out = rows_linear(x, w, norm=g, eps=0.5)
    assert s is x and (out - F.rms_norm(x, (48,), g, 0.5) @ w.t()).abs().max() < 1e-5
    gate, up = xx.chunk(2, dim=-1)
    assert (rows_linear(xx, w, glu=True) - (F.silu(gate) * up) @ w.t()).abs().max() < 1e-5
    xb, yb, wb, gb = x.bfloat16(), y.bfloat16(), w.bfloat16(), g.bfloat16()
    s, out = rows_linear(xb, wb, norm=gb, add=yb)
    torch.testing.assert_close(s, xb + yb)
    torch.testing.assert_close(out, F.rms_norm(xb + yb, (48,), gb, 1e-5) @ wb.t(), atol=0.05, rtol=0.02)
for kind in ("class", "text"):  # text: padded prefix positions
    m = peaked(kind)
    # 2 rows (2 images, or 1 with guidance): the few rows' layers; 4 rows: the layers' own with add_rms_norm
    for n, opts in ((2, dict()), (1, dict(cfg=3.0, top_k=6)), (1, dict(cfg=3.0, kv_dtype=torch.int8)),
                    (2, dict(cfg=3.0, kv_dtype=torch.int8))):
        cond = raw_cond(kind, B=n)
        want = sample_ar(m, cond, n, generator=gen(0), **opts)
        got = sample_ar(m, cond, n, generator=gen(0), attention="triton", **opts)
        assert torch.equal(got, want), (kind, n, opts)
print("ok")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs the triton package (the test extra)")
def test_triton_decode_attention_equals_sdpa_and_draws_its_tokens():
    """The decode kernel, run by Triton's interpreter on the CPU (a process of its own: the interpreter is chosen
    when Triton compiles a kernel's definition): the new key and value appended at `last` and attention over
    positions 0..last equal to SDPA's with the mask, padded keys and a block of nothing but padding included, with an
    int8 cache too (the query, new key and value quantized exactly as ar.quantize does); and sampling through it draws
    SDPA's tokens, with either cache."""
    done = run_interpreted(KERNEL_CHECK)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_triton_attention_needs_triton_on_cuda(monkeypatch):
    monkeypatch.setattr(decode_attention, "available", lambda device: False)
    with pytest.raises(RegvqError, match="attention='triton' needs Triton installed and the model on a CUDA"):
        sample_ar(peaked("class"), raw_cond("class"), 2, attention="triton")
    with pytest.raises(RegvqError, match="unknown attention 'flash'"):
        sample_ar(peaked("class"), raw_cond("class"), 2, attention="flash")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_step_replays_in_a_cuda_graph(dtype, monkeypatch):
    """compile=True with cuda_graphs=True on a GPU: the recorded compiled step draws the tokens of the compiled
    eager loop (the compiled kernels may round differently from the plain ones, so that is the reference), with an
    int8 cache too."""
    monkeypatch.setattr(sampling, "SPLIT_CACHE_BYTES", 0)
    dev = torch.device("cuda")
    m = peaked("class").to(dev, dtype)
    cond = raw_cond("class").to(dev)
    g = torch.Generator(device=dev)
    for opts in (dict(cfg=3.0, top_k=5), dict(temperature=0.7, top_p=0.9),
                 dict(cfg=3.0, kv_dtype=torch.int8)):
        compiled = sample_ar(m, cond, 2, generator=g.manual_seed(0), compile=True, **opts)
        both = sample_ar(m, cond, 2, generator=g.manual_seed(0), compile=True, cuda_graphs=True, **opts)
        assert both.device.type == "cuda" and torch.equal(both, compiled), opts


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["class", "text"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_decode_attention_in_graphs_and_compiled_steps(kind, dtype):
    """attention="triton" on a GPU: recorded in CUDA graphs, the tokens of its eager loop; compiled (a user
    Triton kernel inside torch.compile) and graphed, those of its compiled loop; in fp32 also those of SDPA, with
    the model's cache and with an int8 one; in bf16 with an int8 cache, compiled and graphed, its compiled loop's."""
    pytest.importorskip("triton")
    dev = torch.device("cuda")
    m = peaked(kind).to(dev, dtype)
    cond = raw_cond(kind)
    cond = type(cond)(*(t.to(dev) for t in cond)) if kind == "text" else cond.to(dev)
    g = torch.Generator(device=dev)
    for opts in (dict(cfg=3.0, top_k=5), dict(temperature=0.7, top_p=0.9)):
        eager = sample_ar(m, cond, 2, generator=g.manual_seed(0), attention="triton", **opts)
        graphed = sample_ar(m, cond, 2, generator=g.manual_seed(0), attention="triton", cuda_graphs=True, **opts)
        assert torch.equal(graphed, eager), opts
        if dtype == torch.float32:
            assert torch.equal(sample_ar(m, cond, 2, generator=g.manual_seed(0), **opts), eager), opts
            # an int8 cache: the kernel quantizes as torch does, so it draws the SDPA path's tokens too
            i8 = dict(kv_dtype=torch.int8, **opts)
            assert torch.equal(sample_ar(m, cond, 2, generator=g.manual_seed(0), attention="triton", **i8),
                               sample_ar(m, cond, 2, generator=g.manual_seed(0), **i8)), opts
        else:  # bf16 with an int8 cache: recorded and compiled, the tokens of its eager loop
            i8 = dict(kv_dtype=torch.int8, attention="triton", **opts)
            want = sample_ar(m, cond, 2, generator=g.manual_seed(0), compile=True, **i8)
            assert torch.equal(sample_ar(m, cond, 2, generator=g.manual_seed(0), compile=True, cuda_graphs=True,
                                         **i8), want), opts
        compiled = sample_ar(m, cond, 2, generator=g.manual_seed(0), attention="triton", compile=True, **opts)
        both = sample_ar(m, cond, 2, generator=g.manual_seed(0), attention="triton", compile=True,
                         cuda_graphs=True, **opts)
        assert torch.equal(both, compiled) and both.max() < K, opts


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["class", "text"])
@pytest.mark.parametrize("attention", ["sdpa", "triton"])
def test_an_ar_sampler_replays_its_graphs_call_after_call(kind, attention):
    """On a GPU, an ARSampler's recorded steps replayed in later calls (compiled or not, conditions that change
    the prefix's padding between calls) draw the tokens of fresh calls."""
    if attention == "triton":
        pytest.importorskip("triton")
    dev = torch.device("cuda")
    m = peaked(kind).to(dev, torch.bfloat16)
    conds = [type(c)(*(t.to(dev) for t in c)) if kind == "text" else c.to(dev) for c in other_conds(kind, m)]
    for comp, cfg in ((False, 3.0), (False, 1.0), (True, 3.0)):
        opts = dict(cfg=cfg, top_k=5, attention=attention, compile=comp, cuda_graphs=True)
        mine, fresh = torch.Generator(device=dev).manual_seed(0), torch.Generator(device=dev).manual_seed(0)
        sampler = sampling.ARSampler(m, 2, generator=mine, **opts)
        for i, cond in enumerate(conds + conds):
            assert torch.equal(sampler(cond), sample_ar(m, cond, 2, generator=fresh, **opts)), (comp, cfg, i)
        ref = weakref.ref(sampler)
        with no_collector():  # dropped, it is freed at once with its cache and graphs (nothing refers back to it)
            del sampler
            assert ref() is None


@pytest.mark.gpu
@pytest.mark.parametrize("storage", [None, torch.int8])
def test_triton_decode_steps_in_bf16_give_the_plain_steps_logits(storage):
    """In bf16 the kernel path (the decode attention and the add + norm kernels) rounds differently from the plain
    one, so sampled tokens may part; teacher-forced, step by step, their logits stay within bf16's precision of
    each other (on the CPU in fp32, bf16 weights move these logits by up to 0.015)."""
    pytest.importorskip("triton")
    dev = torch.device("cuda")
    m = peaked("class").to(dev, torch.bfloat16).eval()
    x = torch.randint(0, K, (2, H * W), device=dev)
    cond = raw_cond("class").to(dev)
    with torch.no_grad():
        plain, fused = m.new_cache(2, storage=storage), m.new_cache(2, storage=storage)
        fused.use_kernel(m.config.rope_theta)
        a, b = m(x[:, :0], cond, cache=plain)[:, 0], m(x[:, :0], cond, cache=fused)[:, 0]
        for i in range(H * W - 1):
            torch.testing.assert_close(b.float(), a.float(), atol=0.05, rtol=0.05)
            pos = torch.tensor(i, device=dev)
            a, b = m.decode_step(x[:, i:i + 1], pos, plain), m.decode_step(x[:, i:i + 1], pos, fused)
        torch.testing.assert_close(b.float(), a.float(), atol=0.05, rtol=0.05)


@pytest.mark.gpu
@pytest.mark.parametrize("padded", [False, True])
def test_int8_decode_attention_on_a_gpu_attends_what_the_cache_holds(padded):
    """On a GPU, where the kernel unpacks an int8 cache's values by byte permutes and takes the keys' products by
    dp4a (inline PTX, which the interpreter test cannot run): its output is float32 attention over the dequantized
    cache, the query and the new key and value quantized as ar.quantize does, with every byte value cached."""
    pytest.importorskip("triton")
    import torch.nn.functional as F

    from regvq_cli.priors.decode_attention import decode_attention, rope_table
    from regvq_cli.priors.layers import apply_rope, rope_cos_sin

    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    B, H, L, D, last = 4, 3, 300, 64, 257
    qkv = torch.randn(B, 3, H, D, device=dev, generator=g) * 3
    cache, scale = quantize(torch.randn(2, B, H, L, D, device=dev, generator=g))
    cache[:, 0, 0, :4] = torch.arange(-128, 128, device=dev).view(4, D).to(torch.int8)  # every byte
    valid = torch.rand(B, L, device=dev, generator=g) > 0.3 if padded else None
    cos, sin = rope_cos_sin(torch.tensor([last], device=dev), D)
    q, k_new = (apply_rope(qkv[:, i, :, None], cos, sin) for i in (0, 1))  # [B, H, 1, D]
    keys, values = (dequantize(cache[i], scale[i], torch.float32) for i in (0, 1))
    keys[:, :, last] = dequantize(*quantize(k_new[:, :, 0]), torch.float32)
    values[:, :, last] = dequantize(*quantize(qkv[:, 2]), torch.float32)
    keep = (torch.arange(L, device=dev) <= last)[None] & (valid if padded else True)
    keep[:, last] = True
    want = F.scaled_dot_product_attention(dequantize(*quantize(q), torch.float32), keys, values,
                                          attn_mask=keep[:, None, None, :])[:, :, 0]
    got = decode_attention(qkv, rope_table(L, D, 10000.0, dev), cache[0], cache[1],
                           torch.tensor([last], device=dev), valid, scales=(scale[0], scale[1]))
    assert (got - want).abs().max() < 2e-5, (got - want).abs().max()


def test_auto_attention_is_the_kernel_on_cuda_with_triton_and_sdpa_elsewhere(monkeypatch):
    """`attention="auto"` (the default of sample_ar and `regvq sample`) picks the Triton kernel only where it can
    run; "triton" where it cannot is an error, and unknown names are refused."""
    from regvq_cli.priors.sampling import resolve_attention

    monkeypatch.setattr(decode_attention, "available", lambda device: True)
    assert resolve_attention("auto", "cuda:0") == "triton"
    assert resolve_attention("auto", "cpu") == "sdpa"  # not the interpreter, which is for tests
    assert resolve_attention("sdpa", "cuda:0") == "sdpa" and resolve_attention("triton", "cpu") == "triton"
    monkeypatch.setattr(decode_attention, "available", lambda device: False)
    assert resolve_attention("auto", "cuda:0") == "sdpa"
    with pytest.raises(RegvqError, match="needs Triton"):
        resolve_attention("triton", "cuda:0")
    with pytest.raises(RegvqError, match="unknown attention"):
        resolve_attention("flash", "cpu")
