"""Running a tokenizer fast: placement, precision, channels-last, torch.compile, CUDA graphs.

`prepare_tokenizer` wraps a loaded Tokenizer for inference. On a GPU the convolutional networks run in bf16
while the quantizer (the code choice and the codebook lookup) stays in fp32, so the chosen codes are as close
as possible to the fp32 model's. Images travel as uint8 and are normalised on the device, which moves 4x fewer
bytes from host to device than float32. On a GPU the eager networks are recorded once per batch shape as a CUDA
graph and replayed (`_Graphed`): the same kernels in one launch instead of one Python launch per layer, which
matters at small batches (the default tokenizer at the default batch of 32 on an H200: 7% more images/s from
tensors, and `regvq encode` with Pillow workers 8%; docs/performance.md).
"""

from __future__ import annotations

import torch

from regvq_cli.engine.device import triton_runs_on
from regvq_cli.errors import RegvqError


def compile_options() -> dict:
    """Inductor's exp as the hardware's approximate exp2 with subnormals flushed (its own fast-math switch, which
    changes nothing else): SiLU's sigmoid spends special-function instructions on every element of the
    activations, and the normalising pass over vqgan-f16's widest one took 12% less time with it on an H200
    (docs/performance.md). Torch releases without the switch get no options."""
    import torch._inductor.config as inductor_config

    return {"use_fast_math": True} if hasattr(inductor_config, "use_fast_math") else {}


class _Graphed:
    """fn(x) recorded as a CUDA graph for x's shape, strides and dtype, then replayed: x is copied into the graph's
    input buffer and its output copied out (the next replay overwrites the buffer). The first call of a shape runs fn
    eagerly (that call's result, and the warm-up a recording needs: Triton compiling, cuDNN's choices, workspaces),
    then records. One graph at a time: a new shape drops the old one and its memory (the runner pads smaller batches
    to the largest so far, so a run records once)."""

    def __init__(self, fn):
        self.fn = fn
        self.key = self.graph = self.input = self.output = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if (x.shape, x.stride(), x.dtype, x.device) != self.key:
            return self._record(x)
        self.input.copy_(x)
        self.graph.replay()
        return self.output.clone()

    def _record(self, x: torch.Tensor) -> torch.Tensor:
        self.key = self.graph = self.input = self.output = None  # the old graph's memory goes back first
        here = torch.cuda.current_stream(x.device)
        stream = torch.cuda.Stream(x.device)  # warm up on the stream the recording uses, as torch advises
        stream.wait_stream(here)
        with torch.cuda.stream(stream):
            result = self.fn(x)
        here.wait_stream(stream)
        result.record_stream(here)
        graph = torch.cuda.CUDAGraph()
        static_in = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)
        try:
            static_out = self._capture(graph, stream, static_in)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RegvqError(f"the tokenizer could not be recorded as a CUDA graph ({reason}); run with "
                             "--no-cuda-graphs") from e
        self.key = (x.shape, x.stride(), x.dtype, x.device)
        self.graph, self.input, self.output = graph, static_in, static_out
        return result

    def _capture(self, graph, stream, static_in: torch.Tensor) -> torch.Tensor:
        """fn(static_in) recorded into `graph` on `stream` (the warm-up's); returns the graph's output buffer.
        torch.cuda.graph empties the allocator's cache first, so the warm-up's activations are not held twice.
        "thread_local": only this thread is barred from what a recording cannot hold; the loader's pinning thread
        and the shard writer go on using CUDA meanwhile."""
        with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
            return self.fn(static_in)


class TokenizerRunner:
    """encode: images -> token ids; decode: token ids -> images; all under inference mode. `cuda_graphs`: replay the
    eager networks as CUDA graphs (on a CUDA device, when not compiled)."""

    def __init__(self, model, device, dtype=torch.float32, compile: bool = False, channels_last: bool | None = None,
                 cuda_graphs: bool = True):
        self.model = model.eval().requires_grad_(False).to(device)
        self.device, self.dtype = torch.device(device), dtype
        if channels_last is None:
            channels_last = default_channels_last(self.device, compile)
        self.channels_last = channels_last
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        for net in (model.encoder, model.quant_conv, model.post_quant_conv, model.decoder):
            net.to(dtype=dtype, memory_format=self.memory_format)
        model.quantizer.float()
        self._encode, self._decode = self._encode_impl, self._decode_impl
        self.compiled, self._rows = compile, 0
        if compile:
            options = compile_options()
            self._encode = torch.compile(self._encode_impl, dynamic=False, options=options)
            self._decode = torch.compile(self._decode_impl, dynamic=False, options=options)
        # the eager networks only: compiled code is not recorded (torch.compile's own graphs gained little, and
        # recording over it is not tested); on a CPU there is nothing to record
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda" and not compile
        if self.cuda_graphs:
            self._encode, self._decode = _Graphed(self._encode), _Graphed(self._decode)

    @property
    def codebook_size(self) -> int:
        return self.model.codebook_size

    def _encode_impl(self, images: torch.Tensor) -> torch.Tensor:
        m = self.model
        z = m.quant_conv(m.encoder(images))  # [B, D, h, w] in the compute dtype
        return m.quantizer.encode(z.float())  # [B, h, w] long

    def _decode_impl(self, indices: torch.Tensor) -> torch.Tensor:
        m = self.model
        codes = m.quantizer.decode_indices(indices)  # [B, D, h, w] fp32
        codes = codes.to(self.dtype).contiguous(memory_format=self.memory_format)
        return m.decoder(m.post_quant_conv(codes)).clamp(-1, 1)

    def _call(self, fn, x: torch.Tensor) -> torch.Tensor:
        """fn(x), where a compiled or recorded fn is specialised to its batch size: a batch smaller than the largest
        so far is padded with zeros to that size and the padded rows dropped (no row depends on another), so a run's
        last short batch, or one that skipped files shortened, does not compile or record the networks again."""
        n = x.shape[0]
        if not (self.compiled or self.cuda_graphs) or n >= self._rows:
            self._rows = max(self._rows, n)
            return fn(x)
        with torch.inference_mode(x.is_inference()):  # as x is: the compiled code is specialised to that too
            padded = torch.cat([x, x.new_zeros((self._rows - n, *x.shape[1:]))])
            if x.dim() == 4:
                padded = padded.contiguous(memory_format=self.memory_format)
        return fn(padded)[:n]

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images float [B, 3, H, W] in [-1, 1] (any device) -> long [B, h, w] on the device."""
        x = images.to(self.device, non_blocking=True).to(self.dtype).contiguous(memory_format=self.memory_format)
        return self._call(self._encode, x)

    @torch.inference_mode()
    def encode_uint8(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels uint8 [B, 3, H, W] (on the host, pinned for an asynchronous copy, or on the device) -> long
        [B, h, w] on the device."""
        x = pixels.to(self.device, non_blocking=True)
        x = (x.to(self.dtype) / 127.5 - 1).contiguous(memory_format=self.memory_format)
        return self._call(self._encode, x)

    @torch.inference_mode()
    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """long [B, h, w] -> float [B, 3, H, W] in [-1, 1] on the device."""
        return self._call(self._decode, indices.to(self.device, non_blocking=True).long())

    @torch.inference_mode()
    def decode_uint8(self, indices: torch.Tensor) -> torch.Tensor:
        """long [B, h, w] -> uint8 [B, H, W, 3] on the CPU, ready for PNG writing."""
        return self._pixels(self.decode(indices)).cpu()

    @torch.inference_mode()
    def decode_png_rows(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        """long [B, h, w] -> uint8 [B, H, 1 + 3W] on the CPU: each picture's PNG scanlines, filtered on the device
        (engine.png.filter_rows). On a GPU they arrive in pinned memory by an asynchronous copy, and the event that
        comes with them marks their arrival: wait for it (`synchronize()`) before reading them, as engine.png's
        PngWriter does in its threads while the caller goes on. None on a CPU."""
        from regvq_cli.engine.png import filter_rows

        rows = filter_rows(self._pixels(self.decode(indices)))
        if self.device.type != "cuda":
            return rows.cpu(), None
        host = torch.empty(rows.shape, dtype=torch.uint8, pin_memory=True)
        host.copy_(rows, non_blocking=True)
        arrived = torch.cuda.Event()
        arrived.record()
        return host, arrived

    @staticmethod
    def _pixels(x: torch.Tensor) -> torch.Tensor:
        """A decoder's [-1, 1] output [B, 3, H, W] -> uint8 [B, H, W, 3], where x is."""
        return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def default_channels_last(device, compile: bool = False) -> bool:
    """The layout of a runner's activations when none is asked for: channels-last for eager networks on a GPU where
    Triton runs, NCHW elsewhere. On a GPU, GroupNorm + SiLU then run as kernels that keep the layout
    (nets.group_norm_channels_last) and cuDNN's convolutions read and write it without converting: on an H200 the
    default tokenizer encoded 1.7x and decoded 1.8x the images/s of NCHW, vqgan-f16 eagerly 1.8x both
    (docs/performance.md). On a CPU channels-last is faster too, but its tokens are not bit for bit the NCHW
    network's; compiled, inductor chooses its own layouts."""
    return torch.device(device).type == "cuda" and not compile and triton_runs_on(device)


def prepare_tokenizer(model, device, dtype=torch.float32, compile: bool = False, channels_last: bool | None = None,
                      cuda_graphs: bool = True):
    return TokenizerRunner(model, device, dtype, compile=compile, channels_last=channels_last,
                           cuda_graphs=cuda_graphs)
