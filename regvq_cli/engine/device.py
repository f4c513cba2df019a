"""Device and dtype choice, shared by every command: cuda > mps > cpu, bf16 on GPU, fp32 on CPU."""

from __future__ import annotations

import importlib.util
import os

from regvq_cli.errors import RegvqError

# Read once, so that code torch.compile traces reads only constants: whether Triton is installed (not imported
# here) and whether its interpreter is on (tests run the Triton kernels on the CPU through it)
HAS_TRITON = importlib.util.find_spec("triton") is not None
TRITON_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

DTYPES = {"auto": None, "fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
          "fp16": "float16", "float16": "float16"}


def pick_device(name: str | None = "auto"):
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", _local_rank() % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RegvqError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RegvqError(f"--device {name}: CUDA is not available here; use --device cpu or auto")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", _local_rank() % torch.cuda.device_count())
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RegvqError(f"--device {name}: MPS is not available here; use --device cpu or auto")
    return device


def to_device(t, device):
    """A host tensor on `device` without making the host wait: to a CUDA device through pinned memory (a copy from
    pageable memory waits for all the work queued before it), asynchronously."""
    import torch

    if torch.device(device).type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def pick_dtype(name: str | None, device):
    """The compute dtype: `auto` means bf16 on CUDA, fp32 elsewhere."""
    import torch

    key = (name or "auto").lower()
    if key not in DTYPES:
        raise RegvqError(f"unknown dtype {name!r}; use auto, fp32, bf16 or fp16")
    if DTYPES[key] is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, DTYPES[key])


def triton_runs_on(device) -> bool:
    """Whether regvq's Triton kernels (the AR decode attention, the encoder's image convolution) can run for tensors
    on `device` (a torch.device or its name): Triton is installed and the device is CUDA, or Triton's interpreter
    is on, which runs them on the CPU, for tests."""
    import torch

    return HAS_TRITON and (torch.device(device).type == "cuda" or TRITON_INTERPRETED)


def next_power_of_two(n: int) -> int:
    """The smallest power of two >= n (n >= 1): a Triton block size covering n values, the rest masked."""
    return 1 << (n - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    """a / b rounded up: the programs a launch needs for a items, b a program."""
    return -(-a // b)


def stored_channels_last(t) -> bool:
    """Whether a 4-d tensor is laid out channels-last and not NCHW-contiguous as well (a tensor with one channel,
    or one pixel, is both): what a channels-last network's weights and activations are."""
    import torch

    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def needs_grad(*tensors) -> bool:
    """Whether autograd is recording and any of the tensors requires a gradient: training, where regvq's
    inference-only forms (kernels without a backward, the compiled tokenizer's rewritten layers) are not taken."""
    import torch

    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))
