"""Samplers for the priors: pure functions, one batch of n samples per call, k-diffusion style.

    sample_ar(model, cond, n, *, cfg, temperature, top_k, top_p, generator, callback,
              cuda_graphs, compile, attention, kv_dtype)                                   -> [n, h, w]
    ARSampler(model, n, **the same options)(cond, callback)                                -> [n, h, w]
    sample_diffusion(model, cond, n, *, steps, cfg, temperature, top_k, top_p, sampler,
                     generator, callback, cuda_graphs, compile)                            -> [n, h, w]
    DiffusionSampler(model, n, **the same options)(cond, callback)                         -> [n, h, w]

`cond` is the raw condition (see conditioning.py; `prepare_condition` builds it from names / prompts / maps),
for 1 or n samples. Classifier-free guidance with scale `cfg` runs the conditional and the null rows in one
doubled batch and mixes pred_null + cfg * (pred_cond - pred_null): on logits for the AR prior (as LlamaGen), on
log p(x_0 | x_t) for diffusion (as Improved VQ-Diffusion, Tang et al. 2022), which is then renormalised.
`cfg == 1` is the plain conditional model and skips the null rows. Randomness only comes from `generator`
(default: torch's global one): the same seed gives the same tokens on the same device. `callback(info)` is
called after every step with {"i", "total", "tokens"}; the caller owns any progress bar.

The AR decode loop is CUDA-graph friendly: after the prefix, every step is the same fixed-shape work on
preallocated buffers (`ARPrior.decode_step` on the static KV cache, then sampling as tensor ops with no host sync;
which options are active is settled in Python before the loop). `cuda_graphs=True` records that step once as a
CUDA graph and replays it per token; on a CPU (or any non-CUDA) model it is an error. `compile=True` runs the
decode step and the draw (guidance, temperature, top-k / top-p, Gumbel-max) through `torch.compile` (fusing the
norms, rotary embedding, MLP gate and the draw's elementwise work into fewer kernels: at batch 1 a step is
launch-bound), alone or inside the recorded graph. For diffusion the same two options apply to the
denoiser's forward pass, the bulk of a step's kernels; the posterior and the draws around it stay eager.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math

import torch
import torch.nn.functional as F

from regvq_cli.errors import RegvqError
from regvq_cli.priors import decode_attention
from regvq_cli.priors.conditioning import CondStates


def filter_logits(logits, top_k: int = 0, top_p: float = 1.0):
    """Keep the top-k logits and the smallest nucleus of mass >= top_p among them; -inf elsewhere.

    One descending sort serves both filters. logits: [..., V]. top_k <= 0 / top_p >= 1 disable each.
    """
    V = logits.shape[-1]
    if (top_k <= 0 or top_k >= V) and top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    remove = torch.zeros_like(sorted_logits, dtype=torch.bool)
    if 0 < top_k < V:
        remove[..., top_k:] = True
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    if top_p < 1.0:
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # mass of the strictly better tokens; the best is always kept
        remove |= mass_before >= top_p
    sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def _uniform(shape, device, generator):
    """U[0, 1) noise drawn on the generator's device (so a CPU generator works for any model device)."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def _gumbel_from_uniform(u):
    return -torch.log(-torch.log(u.clamp(1e-20, 1.0)))


def _gumbel(shape, device, generator):
    return _gumbel_from_uniform(_uniform(shape, device, generator))


def sample_categorical(logits, generator=None):
    """One draw per row of softmax(logits) [..., V] (Gumbel-max; -inf entries are never drawn)."""
    return (logits.float() + _gumbel(logits.shape, logits.device, generator)).argmax(dim=-1)


def sample_logits(logits, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, generator=None):
    """Temperature, then top-k / top-p, then a draw. temperature 0 is greedy (argmax). logits: [..., V]."""
    u = _uniform(logits.shape, logits.device, generator) if temperature > 0 else None
    return _draw(logits, u, False, 1.0, temperature, top_k, top_p)


def guide(pred, cfg: float):
    """Classifier-free guidance of predictions [2n, ...] (n conditional rows, then n null rows): pred_null + cfg *
    (pred_cond - pred_null), [n, ...]."""
    n = pred.shape[0] // 2
    return pred[n:] + cfg * (pred[:n] - pred[n:])


def tempered(logits, temperature: float):
    """logits [..., V] / temperature with each row's maximum moved to 0 first (the same distribution): near 0 the
    others then go to -inf instead of all positive entries overflowing to +inf, so the limit is the greedy draw."""
    if temperature == 1.0:
        return logits
    return (logits - logits.amax(dim=-1, keepdim=True)) / temperature


def _draw(logits, u, guided: bool, cfg: float, temperature: float, top_k: int, top_p: float):
    """`sample_logits` with its uniform noise u given (None at temperature 0). guided: logits [2n, V] are n
    conditional rows, then n null rows, mixed by cfg first. Tensor work only, so the AR sampler can compile it (a
    generator cannot be compiled: the noise is drawn outside), a few kernels where it takes a dozen eagerly."""
    logits = logits.float()
    if guided:
        logits = guide(logits, cfg)  # [n, V]
    if temperature <= 0:
        return logits.argmax(dim=-1)
    return (filter_logits(tempered(logits, temperature), top_k, top_p) + _gumbel_from_uniform(u)).argmax(dim=-1)


def _check_common(n: int, cfg: float, temperature: float, top_k: int, top_p: float):
    if n < 1:
        raise RegvqError(f"number of samples must be at least 1, got {n}")
    if cfg < 0:
        raise RegvqError(f"guidance scale must be >= 0, got {cfg}")
    if temperature < 0:
        raise RegvqError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise RegvqError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise RegvqError(f"top_k must be >= 0, got {top_k}")


def _guided(model, cfg: float) -> bool:
    """Whether sampling guides: a conditional prior at a scale other than 1 (n null rows then follow the n
    conditional ones)."""
    return cfg != 1.0 and model.config.cond != "none"


def _encode(model, cond, n: int, cfg: float):
    """Condition states for n samples, with n null rows appended when guiding; returns (states, guided)."""
    states = model.cond(cond, n)
    guided = _guided(model, cfg)
    if guided:
        states = CondStates.cat(states, model.cond.null(n))
    return states, guided


class _EvalMode:
    """Run a model in eval mode and restore its previous mode afterwards."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


# KV caches of at least this many bytes are attended in growing windows (see _windows)
SPLIT_CACHE_BYTES = 2 ** 30


def _windows(cache) -> list[int]:
    """Attention windows of the decode steps (how many cache positions a step reads): the whole cache, or, for a
    large one, 4 growing windows so that early steps do not read the part not written yet (attention reads
    dominate at large batches). Each window is one CUDA graph; a step takes the smallest that covers it."""
    parts = 4 if cache.nbytes >= SPLIT_CACHE_BYTES else 1
    return [-(-cache.max_len * k // parts) for k in range(1, parts + 1)]


class _GraphedStep:
    """`run(step, key)`: `step(key)` recorded once per key as a CUDA graph, then replayed; `with` it around a loop.

    A key's first run executes the step eagerly (a real step, and the warm-up a capture needs on its stream); its
    second run records it and replays the recording, as do the later ones. A pass run once per call (the AR prefix
    pass) is then recorded by a sampler's second call, not by a single call that would never replay it (at batch
    1 its recording was about as long as running it). Recording executes nothing and leaves the generator's offset
    alone; each replay advances it as the eager step would, so the tokens are those of the eager loop. The random
    draws use `generator`, registered with every graph, or the default CUDA generator, which graphs always
    register. The graphs stay recorded between `with` blocks (the kept samplers replay them call after call);
    `clear` drops them. The step is an argument, not kept: a sampler that keeps this object and whose method is
    the step is then freed as soon as it is dropped (no reference cycle holding its cache until the garbage
    collector runs).
    """

    def __init__(self, generator, device):
        self.generator, self.device = generator, device
        self.stream, self.pool = torch.cuda.Stream(device), torch.cuda.graph_pool_handle()
        self.graphs = {}  # key -> its recording, or None after its first (eager) run

    def clear(self) -> None:
        self.graphs.clear()

    def run(self, step, key) -> None:
        if key not in self.graphs:
            self.graphs[key] = None
            step(key)
            return
        if self.graphs[key] is None:
            self.graphs[key] = self._record(step, key)
        self.graphs[key].replay()

    def _record(self, step, key) -> torch.cuda.CUDAGraph:
        graph = torch.cuda.CUDAGraph()
        if self.generator is not None:
            graph.register_generator_state(self.generator)
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
            step(key)
        return graph

    def __enter__(self):
        # captures cannot use the default stream: the whole loop runs on this one, after what was queued before
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        self._on_stream = torch.cuda.stream(self.stream)
        self._on_stream.__enter__()
        return self

    def __exit__(self, *exc):
        self._on_stream.__exit__(*exc)
        torch.cuda.current_stream(self.device).wait_stream(self.stream)


def _check_graphable(device, generator):
    if device.type != "cuda":
        raise RegvqError(f"cuda_graphs needs the model on a CUDA device; it is on {device} (leave cuda_graphs off)")
    gen = None if generator is None else generator.device  # one made for plain "cuda" may carry no index
    if gen is not None and (gen.type != "cuda" or gen.index not in (None, device.index)):
        raise RegvqError(f"cuda_graphs draws random numbers inside the graph: give a torch.Generator on {device} "
                         f"(or none, for the default one), not one on {gen}")


def _compile(fn):
    # Dynamo counts compilations per code object, across models: a few models, dtypes and batch sizes in one
    # process, times the attention windows of each (or the sampling options of the draw), pass its default limit
    # of 8 (then fullgraph fails).
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(fn, fullgraph=True, dynamic=False)


def compiled(model, method: str):
    """`getattr(model, method)` through torch.compile, made once per model and method and kept on the model
    (sampling has fixed shapes: each batch size, and for AR each attention window, compiles once)."""
    key = f"_compiled_{method}"
    fn = model.__dict__.get(key)
    if fn is None:
        fn = model.__dict__[key] = _compile(getattr(model, method))
    return fn


@functools.cache
def _compiled_draw():
    """`_draw` through torch.compile, made once (it compiles once per batch size and set of sampling options)."""
    return _compile(_draw)


def resolve_attention(attention: str, device) -> str:
    """The attention `sample_ar` runs, "sdpa" or "triton", for its `attention` argument: "auto" is the Triton
    kernel on a CUDA device with Triton installed (on an H200 11-18% faster than SDPA at batch 1, 1.7-1.9x the
    images/s at batch 256) and SDPA elsewhere; "triton" where the kernel cannot run is an error."""
    if attention not in ("auto", "sdpa", "triton"):
        raise RegvqError(f"unknown attention {attention!r}; use auto, sdpa or triton")
    on_cuda = torch.device(device).type == "cuda"
    if attention == "auto":
        return "triton" if on_cuda and decode_attention.available(device) else "sdpa"
    if attention == "triton" and not decode_attention.available(device):
        raise RegvqError(f"attention='triton' needs Triton installed and the model on a CUDA device (it is on "
                         f"{device}); use attention='sdpa'")
    return attention


def _hold(held: CondStates | None, states: CondStates, graphs) -> CondStates:
    """The condition states a sampler's passes read. Recorded passes (`graphs`) read fixed buffers: `held`, the
    last call's, with `states` copied in where every part has the held one's shape; otherwise clones of `states`,
    and every pass recorded again (shapes a recorded pass holds as constants: the prefix's length, its padding)."""
    if graphs is None:
        return states

    def parts(s: CondStates) -> list:
        return [getattr(s, f.name) for f in dataclasses.fields(s)]

    def shapes(s: CondStates) -> list:
        return [None if t is None else (t.shape, t.dtype) for t in parts(s)]

    if held is not None and shapes(held) == shapes(states):
        for buffer, value in zip(parts(held), parts(states)):
            if buffer is not None:
                buffer.copy_(value)
        return held
    graphs.clear()
    return CondStates(*(None if t is None else t.clone() for t in parts(states)))


def _replayed(graphs, fn, key) -> None:
    """fn(key): through `graphs` (recorded on its first run, then replayed) where the sampler has them."""
    if graphs is None:
        fn(key)
    else:
        graphs.run(fn, key)


class ARSampler:
    """AR sampling of batches of n samples with one set of options, the state kept from call to call.

    `ARSampler(model, n, **options)(cond)` draws what `sample_ar(model, cond, n, **options)` draws. It makes the
    KV cache and the loop's buffers once; with cuda_graphs its first call records the step (its prefix pass runs
    eagerly), its second records the prefix pass, and later calls replay both (a single call pays for making the
    cache, an eager prefix pass and step and the step's recording). `regvq sample` keeps one for all its batches. It
    holds the cache's memory (and the graphs') until it is dropped; condition states of other shapes (a prefix of
    another length or padding) are recorded again.
    """

    def __init__(self, model, n: int, *, cfg: float = 1.0, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, generator=None, cuda_graphs: bool = False, compile: bool = False,
                 attention: str = "auto", kv_dtype: torch.dtype | None = None):
        _check_common(n, cfg, temperature, top_k, top_p)
        self.model, self.n, self.generator = model, n, generator
        self.cfg, self.temperature, self.top_k, self.top_p = cfg, temperature, top_k, top_p
        self.device = next(model.parameters()).device
        if cuda_graphs:
            _check_graphable(self.device, generator)
        self.attention = resolve_attention(attention, self.device)
        self.guided = _guided(model, cfg)
        self.decode_step = compiled(model, "decode_step") if compile else model.decode_step
        self.draw_tokens = _compiled_draw() if compile else _draw
        # the KV cache and the loop's buffers: logits [B, V] (conditional rows, then null rows), out [n, N], pos []
        # = the position of the next token
        device = self.device
        B = 2 * n if self.guided else n
        self.cache = model.new_cache(B, storage=kv_dtype)
        if self.attention == "triton":
            self.cache.use_kernel(model.config.rope_theta)
            decode_attention.kernel()  # imported now, not while torch.compile traces a step
        h, w = model.config.grid_size
        self.logits = torch.empty(B, model.config.codebook_size, dtype=torch.float32, device=device)
        self.out = torch.empty(n, h * w, dtype=torch.long, device=device)
        self.pos = torch.zeros((), dtype=torch.long, device=device)
        self.windows = [self.cache.max_len] if self.cache.kernel else _windows(self.cache)  # the kernel: no windows
        self.graphs = _GraphedStep(generator, device) if cuda_graphs else None
        self.states = None  # the condition states the prefix pass reads (`_hold`)

    def _prefix(self, key=None) -> None:
        """The prefix pass on an emptied cache: the logits of x_0 in `logits`, pos = 0 (buffers only; `key` is the
        graph runner's)."""
        self.cache.reset()
        tokens = torch.zeros(self.cache.valid.shape[0], 0, dtype=torch.long, device=self.device)
        self.logits.copy_(self.model(tokens, self.states, cache=self.cache)[:, -1])
        self.pos.zero_()

    def _draw(self):
        """x_pos [n] from the logits, written to out[:, pos]."""
        u = _uniform((self.n, self.logits.shape[-1]), self.device, self.generator) if self.temperature > 0 else None
        tok = self.draw_tokens(self.logits, u, self.guided, self.cfg, self.temperature, self.top_k, self.top_p)
        self.out.index_copy_(1, self.pos[None], tok[:, None])
        return tok

    def _step(self, window: int) -> None:
        """Draw x_pos, put the logits of x_{pos+1} in `logits`, advance pos: buffers only, no host sync."""
        tok = self._draw()
        tok_in = torch.cat([tok, tok]) if self.guided else tok  # [B]
        self.logits.copy_(self.decode_step(tok_in[:, None], self.pos, self.cache, window))
        self.pos.add_(1)

    @torch.no_grad()
    def __call__(self, cond, callback=None) -> torch.Tensor:
        """n token grids [n, h, w] for the raw condition `cond` (for 1 or n samples); `callback` as sample_ar's."""
        model = self.model
        h, w = model.config.grid_size
        N = h * w
        with _EvalMode(model):
            self.states = _hold(self.states, _encode(model, cond, self.n, self.cfg)[0], self.graphs)
            graphs = self.graphs
            with graphs or contextlib.nullcontext():
                # with graphs, the prefix pass (several hundred small kernels launched one by one, about 13 ms at
                # batch 1) is recorded too, by the second call; a recorded pass sets the cache's host-side fields
                # only when it is recorded, to what they are after every pass of the same shapes
                _replayed(graphs, self._prefix, "prefix")
                for i in range(N):
                    if i + 1 < N:
                        # x_i sits at cache position prefix_len + i
                        window = next(w for w in self.windows if w > self.cache.prefix_len + i)
                        _replayed(graphs, self._step, window)
                    else:
                        self._draw()
                    if callback is not None:
                        callback({"i": i, "total": N, "tokens": self.out[:, :i + 1]})
        return self.out.view(self.n, h, w).clone()


@torch.no_grad()
def sample_ar(model, cond, n: int, *, cfg: float = 1.0, temperature: float = 1.0, top_k: int = 0,
              top_p: float = 1.0, generator=None, callback=None, cuda_graphs: bool = False,
              compile: bool = False, attention: str = "auto", kv_dtype: torch.dtype | None = None):
    """Sample n token grids [n, h, w] from an ARPrior, one raster position per step with a static KV cache.

    One forward pass over the prefix, then N - 1 identical steps on preallocated buffers (draw x_i, then
    `decode_step` for the logits of x_{i+1}), then a last draw. cuda_graphs=True (CUDA only) replays each step as
    a recorded CUDA graph: the same tokens as the default eager loop for the same generator state, which must
    then be None (the default CUDA generator) or a CUDA generator on the model's device. compile=True compiles
    the decode step (once per model) and the draw (once); the first call pays for it. attention="triton" (CUDA,
    with Triton installed) runs the decode steps' attention through decode_attention.py's kernel, which reads
    exactly the cache positions written, instead of SDPA over a masked window ("sdpa"); "auto" picks the kernel
    where it can run (`resolve_attention`). kv_dtype: what the KV cache holds, by default the model's dtype;
    torch.int8 about halves the bytes the Triton kernel reads per step, which bound large batches (keys and values
    quantized per vector: nearly the same next-token distributions, not the same tokens; see KVCache). For batch
    after batch with the same options, `ARSampler` keeps the cache and the recorded passes between calls.
    """
    return ARSampler(model, n, cfg=cfg, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator,
                     cuda_graphs=cuda_graphs, compile=compile, attention=attention, kv_dtype=kv_dtype)(cond, callback)


def _timesteps(T: int, steps: int) -> list[int]:
    """steps + 1 decreasing timesteps from T to 0, evenly spaced (all of them when steps == T)."""
    return [round(T - k * T / steps) for k in range(steps + 1)]


class DiffusionSampler:
    """Diffusion sampling of batches of n samples with one set of options, the state kept from call to call.

    `DiffusionSampler(model, n, **options)(cond)` draws what `sample_diffusion(model, cond, n, **options)` draws.
    The denoiser's input and output buffers are made once and, with cuda_graphs, its pass is recorded by the first
    call and replayed by the later ones (a fresh call runs it eagerly once and records it). Condition states of
    other shapes are recorded again. `regvq sample` keeps one for all its batches.
    """

    def __init__(self, model, n: int, *, steps: int | None = None, cfg: float = 1.0, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, sampler: str = "vq", choice_temperature: float = 4.5,
                 generator=None, cuda_graphs: bool = False, compile: bool = False):
        _check_common(n, cfg, temperature, top_k, top_p)
        T = model.num_timesteps
        if sampler not in ("vq", "maskgit"):
            raise RegvqError(f"unknown diffusion sampler {sampler!r}; use vq or maskgit")
        h, w = model.config.grid_size
        N, K = h * w, model.config.codebook_size
        steps = steps or (T if sampler == "vq" else min(16, N))
        if sampler == "vq" and not 1 <= steps <= T:
            raise RegvqError(f"steps must be in 1..{T} (the prior's number of timesteps), got {steps}")
        if sampler == "maskgit" and not 1 <= steps <= N:
            raise RegvqError(f"maskgit steps must be in 1..{N} (the number of tokens), got {steps}")
        device = next(model.parameters()).device
        if cuda_graphs:
            _check_graphable(device, None)  # the draws stay outside the graph: any generator will do
        self.model, self.n, self.steps, self.sampler, self.generator = model, n, steps, sampler, generator
        self.cfg, self.temperature, self.top_k, self.top_p = cfg, temperature, top_k, top_p
        self.choice_temperature, self.device = choice_temperature, device
        self.guided = _guided(model, cfg)
        self.net = compiled(model, "forward") if compile else model
        # the denoiser's inputs and output live in fixed buffers, so that a CUDA graph can replay it
        B = 2 * n if self.guided else n
        self.x_in = torch.empty(B, N, dtype=torch.long, device=device)
        self.t_in = torch.empty(B, dtype=torch.long, device=device)
        self.logits = torch.empty(B, N, K, dtype=torch.float32, device=device)
        self.graphs = _GraphedStep(None, device) if cuda_graphs else None
        self.states = None

    def _denoise(self, key=None) -> None:
        """logits <- the denoiser on (x_in, t_in): buffers only (`key` is _GraphedStep's graph key)."""
        self.logits.copy_(self.net(self.x_in, self.t_in, self.states))

    def _predict(self, x, t: int):
        """log p(x_0 | x_t) [n, N, K]: guided, tempered and filtered."""
        n, K = self.n, self.logits.shape[-1]
        self.x_in[:n].copy_(x)
        if self.guided:
            self.x_in[n:].copy_(x)
        self.t_in.fill_(t)
        _replayed(self.graphs, self._denoise, 0)
        logp = F.log_softmax(self.logits, dim=-1)
        if self.guided:
            logp = F.log_softmax(guide(logp, self.cfg), dim=-1)
        if self.temperature <= 0:
            return torch.where(F.one_hot(logp.argmax(-1), K).bool(), 0.0, float("-inf"))
        return F.log_softmax(filter_logits(tempered(logp, self.temperature), self.top_k, self.top_p), dim=-1)

    @torch.no_grad()
    def __call__(self, cond, callback=None) -> torch.Tensor:
        """n token grids [n, h, w] for the raw condition `cond`; `callback` as sample_diffusion's."""
        model, n, steps, device, generator = self.model, self.n, self.steps, self.device, self.generator
        h, w = model.config.grid_size
        N, K, T = h * w, model.config.codebook_size, model.num_timesteps
        with _EvalMode(model):
            self.states = _hold(self.states, _encode(model, cond, n, self.cfg)[0], self.graphs)
            with self.graphs or contextlib.nullcontext():
                x = torch.full((n, N), K, dtype=torch.long, device=device)  # x_T: all [MASK]
                if self.sampler == "vq":
                    ts = _timesteps(T, steps)
                    pairs = list(zip(ts[:-1], ts[1:]))  # (t, s): each step goes from t to s
                    # every step's posterior coefficients [steps, 10], on the device before the loop: built per step
                    # on the host, each step's copy would wait for the GPU to finish the step before (a sync per step)
                    coefs = torch.cat([model.coefs(t, s) for t, s in pairs]).to(device)
                    for i, (t, s) in enumerate(pairs):
                        log_post = model.q_posterior(self._predict(x, t), x, coefs[i:i + 1])  # [n, N, K+1]
                        if s == 0:
                            log_post[..., K] = float("-inf")  # x_0 is never [MASK]
                        x = sample_categorical(log_post, generator)
                        if callback is not None:
                            callback({"i": i, "total": steps, "tokens": x})
                else:
                    n_masked = N  # the same in every row, and known on the host: no device sync per step
                    for i in range(steps):
                        is_mask = x == K
                        t = model.t_for_mask_ratio(n_masked / N)
                        logp = self._predict(x, t)
                        drawn = sample_categorical(logp, generator)  # [n, N]
                        conf = logp.gather(-1, drawn[..., None])[..., 0]
                        drawn = torch.where(is_mask, drawn, x)
                        conf = torch.where(is_mask, conf, torch.full_like(conf, float("inf")))  # decided tokens stay
                        # tokens still masked after this step: cosine schedule, at least one fewer each step
                        keep_masked = min(math.floor(N * math.cos(math.pi / 2 * (i + 1) / steps)), n_masked - 1)
                        if keep_masked > 0:
                            noise = self.choice_temperature * (1 - (i + 1) / steps)
                            conf = conf + noise * _gumbel(conf.shape, device, generator)
                            remask = conf.topk(keep_masked, dim=-1, largest=False).indices
                            drawn = drawn.scatter(-1, remask, K)  # decided tokens have conf inf: only masked ones
                        x = drawn
                        n_masked = max(keep_masked, 0)
                        if callback is not None:
                            callback({"i": i, "total": steps, "tokens": x})
        return x.view(n, h, w)


@torch.no_grad()
def sample_diffusion(model, cond, n: int, *, steps: int | None = None, cfg: float = 1.0, temperature: float = 1.0,
                     top_k: int = 0, top_p: float = 1.0, sampler: str = "vq", choice_temperature: float = 4.5,
                     generator=None, callback=None, cuda_graphs: bool = False, compile: bool = False):
    """Sample n token grids [n, h, w] from a DiffusionPrior.

    sampler "vq": the reverse process from x_T = all [MASK] in `steps` (<= T, default T) evenly spaced steps,
    each x_s ~ p(x_s | x_t) = sum_{x_0} q(x_s | x_t, x_0) p(x_0 | x_t). top_p < 1 truncates p(x_0 | x_t) to its
    top-probability mass (VQ-Diffusion's truncation sampling), top_k to its k best codes.
    sampler "maskgit": confidence-ordered parallel decoding (Chang et al. 2022, arXiv 2202.04200): every step
    draws all masked tokens from p(x_0 | x_t), keeps the most confident ones and re-masks the rest, with a
    cosine schedule of the masked count over `steps` (default 16, at most h*w) and Gumbel noise on the
    confidence annealed from `choice_temperature` to 0. The denoiser sees the t whose mask ratio matches the
    current one.
    At small batches a step is bound by launching the denoiser's several hundred kernels one by one:
    cuda_graphs=True (CUDA only) records the denoiser's forward pass once per call as a CUDA graph and replays it
    every step (the same tokens as without); compile=True runs it through torch.compile (once per model and batch
    size; the first call pays for it). Both together replay the compiled kernels. For batch after batch with the
    same options, `DiffusionSampler` keeps the buffers and the recorded pass between calls.
    """
    return DiffusionSampler(model, n, steps=steps, cfg=cfg, temperature=temperature, top_k=top_k, top_p=top_p,
                            sampler=sampler, choice_temperature=choice_temperature, generator=generator,
                            cuda_graphs=cuda_graphs, compile=compile)(cond, callback)
