"""torch.distributed from torchrun's environment, or a single process when there is none. Encode and decode
split their work by rank with it; training (`regvq_cli.train.common.setup_distributed`) joins through it too."""

from __future__ import annotations

import collections
import contextlib
import os
import threading


def world_from_env() -> tuple[int, int]:
    """(rank, world size) as torchrun sets them; (0, 1) when run alone."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def local_cores() -> int:
    """The CPU cores this process may use, shared with the other torchrun processes of its host (LOCAL_WORLD_SIZE):
    what its worker processes and threads divide."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def default_loader_workers(pillow_on_gpu_host: bool = False) -> int:
    """Image-decoding workers when none are asked for: one a CPU core of this process's share of the host
    (local_cores), up to 8. With `pillow_on_gpu_host` (the workers decode and resize with Pillow for a GPU: the
    default path of encode and eval, and tokenizer training's crops) they are the limit, so every core of that
    share but one, which the main process keeps, up to 32. Elsewhere
    the limit is the tokenizer on a CPU, which wants the cores itself, or on the device paths the main process's
    own thread (8 and 15 workers within each other's spread on a 16-core H200 host; docs/performance.md)."""
    cores = local_cores()
    return max(1, min(32, cores - 1)) if pillow_on_gpu_host else min(8, cores)


def _group():
    """torch.distributed when a process group is up in this process; None otherwise."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def join(device, timeout_s: float = 1800.0) -> tuple[int, int, bool]:
    """Join torchrun's process group if there is one (nccl on CUDA, gloo otherwise).

    Returns (rank, world size, whether this call created the group: then its caller destroys it)."""
    from datetime import timedelta

    import torch.distributed as dist

    from regvq_cli.errors import RegvqError

    if _group() is not None:
        return dist.get_rank(), dist.get_world_size(), False
    rank, world = world_from_env()
    if world == 1:
        return rank, world, False
    if not dist.is_available():
        raise RegvqError("this PyTorch build has no torch.distributed: run a single process")
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    if device.type == "cuda":  # this rank's GPU as the current one: object collectives put their tensors there
        import torch

        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s), **kwargs)
    return rank, world, True


@contextlib.contextmanager
def group(device, timeout_s: float = 1800.0):
    """join() for the length of a with block, yielding (rank, world size). A group this call created is destroyed
    when the block ends: a gloo group left to the interpreter's exit can abort the process after the work is done."""
    rank, world, created = join(device, timeout_s)
    try:
        yield rank, world
    finally:
        if created:
            shutdown()


def barrier() -> None:
    if (dist := _group()) is not None:
        dist.barrier()


def all_sum(values: list[float], device) -> list[float]:
    """Sum a few numbers over ranks (counts for the summary)."""
    import torch

    if (dist := _group()) is None:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_gather(obj) -> list:
    """Every rank's `obj` (picklable), in rank order; [obj] when run alone."""
    if (dist := _group()) is None:
        return [obj]
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, obj)  # through the current CUDA device under NCCL: join() set it to this rank's
    return parts


_counters_made: collections.Counter = collections.Counter()


class SharedCounter:
    """An integer every rank adds to, kept in the process group's key-value store (torchrun's rendezvous store):
    `add(n)` returns the total after this addition, so `add(1) - 1` hands each value 0, 1, 2, ... to exactly one
    caller of all ranks, whichever asks first. One round trip to the store per call (tens of microseconds on one
    host). Safe to call from several threads of a rank (encode's loader draws shards in one, its progress adds in
    another): the calls of a process take turns."""

    _lock = threading.Lock()  # one store client a process; its calls one at a time

    def __init__(self, store, key: str):
        self.store, self.key = store, key

    def add(self, n: int = 1) -> int:
        with self._lock:
            return int(self.store.add(self.key, n))


def shared_counter(name: str) -> SharedCounter | None:
    """A fresh SharedCounter of the process group, or None when there is none. Every rank must make the same
    counters in the same order: the n-th `shared_counter(name)` of each rank is the same counter."""
    if (dist := _group()) is None:
        return None
    _counters_made[name] += 1
    return SharedCounter(dist.distributed_c10d._get_default_store(), f"regvq/{name}/{_counters_made[name]}")


def shutdown() -> None:
    if (dist := _group()) is not None:
        dist.destroy_process_group()
