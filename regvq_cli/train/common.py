"""Training machinery shared by the tokenizer and prior trainers.

- ``setup_distributed`` / ``cleanup_distributed``: torch.distributed from torchrun's environment variables
  (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); NCCL on CUDA, gloo on CPU. Without those
  variables (plain ``python``), or with WORLD_SIZE=1, it runs as a single process and never initialises a
  process group.
- ``seed_everything``, ``rng_state`` / ``set_rng_state``: per-rank seeding and capturable RNG state.
- ``EMA``: exponential moving average of a model's weights (the exported weights).
- ``save_state`` / ``load_state``: the resume state (``state.pt``), written atomically with ``torch.save``
  and read back ONLY with ``torch.load(weights_only=True)``; it holds tensors, dicts, lists, numbers and
  strings, nothing that needs unpickling code.
- ``MetricsWriter``: ``metrics.jsonl``, one JSON object per line, written by rank 0 only.
- ``autocast``: bf16 autocast on CUDA, a no-op elsewhere; ``training_precision``: TF32 matmuls and cuDNN
  autotuning on CUDA for the length of a training run; ``maybe_compile``: optional ``torch.compile``.
- ``lr_at``: linear warmup, then constant or cosine; ``Throughput``: images and FLOPs per second;
  ``flop_counter`` / ``peak_flops``: a step's FLOPs and the GPU's peak, for MFU.
- ``any_rank``, ``all_reduce_mean``: small collectives that are identities with one process (objects gather
  through ``engine.dist.all_gather``).
- ``StopRequest``: SIGTERM or a first Ctrl-C asks a training loop to stop after its step and checkpoint.
- ``plain_value``: config values read from JSON (lists) in the form dataclasses hold them (tuples).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn as nn

from ..engine.device import pick_device
from ..engine.dist import join, shutdown
from ..errors import RegvqError

STATE_NAME = "state.pt"
METRICS_NAME = "metrics.jsonl"


# ---- distributed ------------------------------------------------------------------------------------------

@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    initialized_here: bool  # we created the process group, so cleanup_distributed destroys it

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_training_device(device: str | None, local_rank: int = 0) -> torch.device:
    """The device to train on: an explicit one (a RegvqError for one torch does not know or this machine lacks,
    rather than torch's failure when the first tensor moves), or cuda:LOCAL_RANK when CUDA exists, else the CPU."""
    if device not in (None, "", "auto"):
        dev = pick_device(device)
        count = torch.cuda.device_count() if dev.type == "cuda" else 0
        if dev.type == "cuda" and dev.index >= count:
            last = f" to cuda:{count - 1}" if count > 1 else ""
            raise RegvqError(f"--device {device}: this machine has {count} CUDA device{'s' * (count != 1)} "
                             f"(cuda:0{last})")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup_distributed(device: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by torchrun's environment, or run alone.

    ``device``: None/"auto" (cuda:LOCAL_RANK when CUDA exists, else CPU) or an explicit device string.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_training_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    rank, world, created = join(dev, timeout_s)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev, initialized_here=created)


def cleanup_distributed(info: DistInfo) -> None:
    """Leave the process group if setup_distributed created it (as engine.dist.group does for encode/decode)."""
    if info.initialized_here:
        shutdown()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


class StopRequest:
    """While entered: SIGTERM (a scheduler's pre-emption notice, ``timeout``, torchrun passing one on) or a first
    Ctrl-C sets ``requested`` instead of killing the process, so the loop can finish its step and checkpoint.
    A second Ctrl-C interrupts at once. Outside the main thread signals cannot be caught; it does nothing there."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        self.requested, self.signum = True, signum
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the next Ctrl-C raises KeyboardInterrupt

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any rank (e.g. a time limit reached)."""
    if not is_distributed():
        return flag
    t = torch.tensor(1.0 if flag else 0.0, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average a dict of floats over ranks (same keys on every rank)."""
    if not is_distributed() or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], device=device, dtype=torch.float64)
    dist.all_reduce(t)
    t /= get_world_size()
    return dict(zip(keys, t.tolist()))


def plain_value(value):
    """Lists (from JSON) as tuples, so configs read back from files compare equal to dataclass values."""
    return tuple(plain_value(v) for v in value) if isinstance(value, (list, tuple)) else value


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


# ---- seeding and RNG state --------------------------------------------------------------------------------

def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python and torch (CPU and CUDA); ranks get different streams (seed + rank), so that masks,
    Gumbel noise and dropout differ between ranks while runs stay reproducible."""
    s = int(seed) + int(rank)
    random.seed(s)
    torch.manual_seed(s)  # also seeds every CUDA device


def rng_state() -> dict:
    """This process's RNG state in a form ``torch.load(weights_only=True)`` accepts."""
    version, internal, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


# ---- EMA of weights ---------------------------------------------------------------------------------------

class EMA:
    """Exponential moving average of a model's floating-point parameters and buffers.

    decay_t = min(decay, (1 + t) / (10 + t)): early updates follow the weights closely, so the average is
    not dominated by the random initialisation. Non-float buffers are copied. ``decay=0`` tracks the model
    exactly.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        self.decay = decay
        self.model = copy.deepcopy(unwrap(model)).eval()
        self.model.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        model = unwrap(model)
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema_state = self.model.state_dict()
        targets, values = [], []
        for name, value in model.state_dict().items():
            target = ema_state[name]
            if value.is_floating_point():
                targets.append(target)
                values.append(value.to(target.dtype))
            else:
                target.copy_(value)
        if targets:  # one fused launch per group of tensors instead of one per tensor (the same lerp)
            torch._foreach_lerp_(targets, values, 1.0 - d)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])


# ---- resume state -----------------------------------------------------------------------------------------

def save_state(path: str | Path, state: dict) -> None:
    """torch.save to a temporary name, fsync, then rename: a killed run leaves the old state or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_state(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict:
    """Read a resume state; only tensors and plain containers (weights_only=True), never arbitrary pickles.
    mmap=True maps the tensors instead of reading them (for a look at its settings)."""
    try:
        return torch.load(str(path), map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:
        first = (str(e).splitlines() or ["an empty or cut-short file"])[0][:200]  # some errors have no message
        raise RegvqError(f"cannot read the resume state {path} ({type(e).__name__}: {first}); "
                         "delete it to start over") from e


def check_resume_settings(run_dir: str | Path, values: dict, recorded: Callable[[dict, str], object]) -> None:
    """Refuse settings given explicitly on a rerun (``values``) that the run in ``run_dir`` was not started with;
    ``recorded(state, key)`` reads a setting from its resume state (read memory-mapped: only its settings are
    looked at). The trainers compare their settings with the state themselves, but a run fine-tuned with --init
    takes its architecture from the state, where an option given at its default value cannot be told from one
    not given."""
    if not values:
        return
    state = load_state(Path(run_dir) / STATE_NAME, mmap=True)
    for key, value in values.items():
        have = recorded(state, key)
        if plain_value(have) != plain_value(value):
            raise started_otherwise(run_dir, key, have, value)


def started_otherwise(run_dir, key: str, have, want) -> RegvqError:
    """The error for a rerun whose option `key` is `want` where the run in `run_dir` was started with `have`."""
    return RegvqError(f"{run_dir} was started with --{key.replace('_', '-')} {plain_value(have)}, not "
                      f"{plain_value(want)}: rerun with the same settings to resume it, or use a new run directory")


# ---- logging ----------------------------------------------------------------------------------------------

class MetricsWriter:
    """Appends one JSON object per line to ``metrics.jsonl`` (only where ``enabled``, i.e. on rank 0)."""

    def __init__(self, path: str | Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=True, allow_nan=True) + "\n")

    def keep_until(self, step: int) -> None:
        """Drop the records past ``step`` (and a line cut short): what a run killed after its last checkpoint
        logged, which the rerun from that checkpoint trains and logs again. Written atomically."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("step", 0) <= step:
                kept.append(line + "\n")
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, self.path)


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Throughput:
    """Items (images, token grids) and model FLOPs per second over the span since the last ``rate()`` call."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.count = 0
        self.flops = 0.0

    def add(self, n: int, flops: float = 0.0) -> None:
        self.count += n
        self.flops += flops

    def rate(self) -> tuple[float, float]:
        """(items per second, FLOP per second) since the last call."""
        now = time.perf_counter()
        seconds = max(now - self.t0, 1e-9)
        rates = self.count / seconds, self.flops / seconds
        self.t0, self.count, self.flops = now, 0, 0.0
        return rates


# ---- FLOPs and the hardware's peak -----------------------------------------------------------------------

# dense bf16 FLOP/s a GPU reaches on large matmuls, by a substring of its name: what MFU is a fraction of.
# H200: measured there with torch 2.11 (docs/performance.md). Others: set REGVQ_PEAK_TFLOPS.
PEAK_BF16_FLOPS = {"H200": 790e12}


def peak_flops(device: torch.device) -> float | None:
    """The peak that MFU divides by: REGVQ_PEAK_TFLOPS (in TFLOP/s) when set, else a known GPU's dense bf16 peak,
    else None (no MFU is reported, only the achieved TFLOP/s)."""
    env = os.environ.get("REGVQ_PEAK_TFLOPS")
    if env:
        try:
            peak = float(env)
        except ValueError:
            peak = math.nan
        if not (math.isfinite(peak) and peak > 0):
            raise RegvqError(f"REGVQ_PEAK_TFLOPS={env!r} is not a positive number: set it to the GPU's peak in "
                             "TFLOP/s (e.g. 790)")
        return peak * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    return None


@contextlib.contextmanager
def flop_counter():
    """A context that counts the matmul, convolution and attention FLOPs of everything run inside it, forward and
    backward, from the shapes (torch's FLOP formulas); ``.total`` after. Unlike torch's FlopCounterMode it puts
    no hooks on modules: those reorder gradient accumulation, and a counted step must give the same bits as an
    uncounted one (a resumed run matches an uninterrupted one).

    Compiled modules run eagerly inside it (so with --compile the counted step has the eager step's bits): a
    compiled function called under a dispatch mode is not compiled, and torch.compile then ran it eagerly for good,
    every later step of a `--compile` run included."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    aten = torch.ops.aten
    # the CPU's flash attention has no formula of its own; it takes (grad_out,) query, key, value first, as the
    # CUDA flash kernels do, so theirs apply
    formulas = {**flop_registry,
                aten._scaled_dot_product_flash_attention_for_cpu:
                    flop_registry[aten._scaled_dot_product_flash_attention],
                aten._scaled_dot_product_flash_attention_for_cpu_backward:
                    flop_registry[aten._scaled_dot_product_flash_attention_backward]}

    class FlopCount(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = formulas.get(func._overloadpacket)
            if formula is not None:
                self.total += formula(*args, **kwargs, out_val=out)
            return out

    counter = FlopCount()
    stance = getattr(torch.compiler, "set_stance", None)  # torch 2.6 and newer
    with stance("force_eager") if stance else contextlib.nullcontext(), counter:
        yield counter


# ---- precision, compile, schedule -------------------------------------------------------------------------

def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on CUDA when asked; a no-op context otherwise (CPU training stays fp32)."""
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def training_precision(device: torch.device):
    """For a training run on CUDA: TF32 for fp32 matmuls and convolutions, and cuDNN autotuning; the previous
    settings are restored on exit (the flags are process-wide). Elsewhere it does nothing.

    Why TF32 is fine for training: most of a step already runs in bf16 (autocast, and the feature network of
    the perceptual/contrastive losses), which is coarser than TF32. What runs in fp32 — the quantizer (logits,
    softmax, code lookup, autocast off), the contrastive similarities, the fp32 parts of the losses — tolerates
    TF32's rounded inputs (10-bit mantissa, fp32 accumulation): it perturbs the logits far less than the Gumbel
    noise and the stochastic masking do. Evaluation (regvq_cli.eval, FID) does not set these flags, and FID's
    Inception features turn cuDNN's TF32 off (PyTorch's default allows it) while they are computed. cuDNN
    autotuning pays off because every training batch has the same shape (full batches at the training
    resolution).
    """
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = saved


def maybe_compile(module: nn.Module, enabled: bool, **options) -> nn.Module:
    """Compile ``module`` in place with ``nn.Module.compile(**options)`` (its state-dict keys stay the same, unlike
    a ``torch.compile`` wrapper's ``_orig_mod.`` prefix) and return it."""
    if enabled:
        if not hasattr(module, "compile"):
            raise RegvqError("compiling needs PyTorch 2.2 or newer: drop --compile")
        module.compile(**options)
    return module


def lr_at(step: int, base_lr: float, warmup_steps: int = 0, schedule: str = "constant", max_steps: int = 0,
          min_ratio: float = 0.1) -> float:
    """Linear warmup over ``warmup_steps``, then constant, or cosine decay to ``min_ratio * base_lr`` at
    ``max_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        span = max(1, max_steps - warmup_steps)
        t = min(1.0, (step - warmup_steps) / span)
        return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t)))
    raise RegvqError(f"unknown learning-rate schedule {schedule!r}: choose constant or cosine")


def adamw(params, device: torch.device, **kwargs) -> torch.optim.AdamW:
    """AdamW, fused on CUDA (one kernel for all parameters per step instead of a handful per group of tensors; the
    same update up to rounding)."""
    return torch.optim.AdamW(params, fused=device.type == "cuda", **kwargs)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)``, then every state tensor shaped like its parameter is given the
    parameter's strides. Fused AdamW walks a parameter and its moments as flat arrays in memory order, so moments
    restored with other strides (a resume state of a channels-last compiled run, resumed eagerly, or the reverse)
    would get silently wrong updates."""
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        for p in group["params"]:
            moments = optimizer.state.get(p, {})
            for k, v in moments.items():
                if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                    moments[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
