"""torch.distributed for work split by rank (encode, decode): set up from torchrun's environment, or a single
process when there is none. Training has its own setup in `regvq_cli.train.common`, with the same rules."""

from __future__ import annotations

import os


def world_from_env() -> tuple[int, int]:
    """(rank, world size) as torchrun sets them; (0, 1) when run alone."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def init(device) -> tuple[int, int]:
    """Join torchrun's process group if there is one (nccl on CUDA, gloo otherwise); return (rank, world)."""
    import torch.distributed as dist

    rank, world = world_from_env()
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, **kwargs)
    return rank, world


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_sum(values: list[float], device) -> list[float]:
    """Sum a few numbers over ranks (counts for the summary)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
