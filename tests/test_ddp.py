"""Two gloo processes on the CPU: the global RegVQ prior, EMA codebooks and DDP training stay exact and in sync."""

import json
import socket
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from regvq_cli.tokenizer.quantizers import RegVQuantizer, VectorQuantizer

WORLD = 2


def free_ports(n: int) -> list[int]:
    """n distinct ports that are free now (all held open together while they are chosen)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def full_batch():
    return torch.randn(4, 4, 3, 3, generator=torch.Generator().manual_seed(1))


def make_quantizers():
    torch.manual_seed(0)
    regvq = RegVQuantizer(8, 4, logits="distance", use_mask=False).train()
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 4, use_ema=True, ema_decay=0.5).train()
    return regvq, vq


def objective(out):
    # a per-rank term (mean over the local batch) plus the global prior KL
    return (out.codes ** 2).mean() + out.losses["prior_kl"]


def _worker(rank, ports, tmp, data):
    import os

    from regvq_cli.train.tokenizer import TokenizerTrainer, TrainTokenizerConfig

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(ports[0]), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=120))
    results = {}
    z = full_batch()[rank * 2 : (rank + 1) * 2]  # each rank holds half of the batch
    regvq, vq = make_quantizers()
    ddp = torch.nn.parallel.DistributedDataParallel(regvq)
    out = ddp(z)
    objective(out).backward()
    results["kl"] = out.losses["prior_kl"].detach()
    results["kl_grad"] = regvq.embedding.weight.grad.clone()
    vq(z)  # EMA update from the global batch
    results["ema_codebook"] = vq.embedding.weight.detach().clone()
    dist.destroy_process_group()

    # the trainer joins a new group from the environment, as under torchrun; a fresh port, since re-creating
    # the rendezvous store on the port just released can hang
    os.environ["MASTER_PORT"] = str(ports[1])
    cfg = TrainTokenizerConfig(preset="tok-test", batch_size=2, num_workers=0, perceptual_weight=0.0,
                               contrastive_weight=0.0, gan_weight=0.5, gan_start=1, max_steps=3, log_every=1,
                               sample_every=2, checkpoint_every=2, lr=1e-3)
    trainer = TokenizerTrainer([data], tmp / "run", cfg)
    trainer.run()
    results["model"] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    results["disc"] = {k: v.clone() for k, v in trainer.disc.named_parameters()}
    results["ema"] = {k: v.clone() for k, v in trainer.ema.model.state_dict().items()}
    results["batches"] = trainer.batches
    torch.save(results, tmp / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    data = tmp / "imgs"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (32, 36, 3), dtype=np.uint8)).save(data / f"{i}.png")
    mp.spawn(_worker, args=(free_ports(2), tmp, data), nprocs=WORLD, join=True)
    return tmp, [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def test_prior_kl_and_its_gradient_are_the_global_batchs(ranks):
    _, res = ranks
    regvq, _ = make_quantizers()
    out = regvq(full_batch())  # one process, the whole batch
    objective(out).backward()
    for r in res:
        assert torch.allclose(r["kl"], out.losses["prior_kl"].detach(), atol=1e-6)
        assert torch.allclose(r["kl_grad"], regvq.embedding.weight.grad, atol=1e-6)


def test_ema_codebook_updates_from_the_global_batch(ranks):
    _, res = ranks
    _, vq = make_quantizers()
    vq(full_batch())
    for r in res:
        assert torch.allclose(r["ema_codebook"], vq.embedding.weight, atol=1e-6)


def test_ddp_training_keeps_ranks_in_sync(ranks):
    tmp, (r0, r1) = ranks
    for part in ("model", "disc", "ema"):
        assert r0[part].keys() == r1[part].keys()
        for k in r0[part]:
            assert torch.equal(r0[part][k], r1[part][k]), (part, k)
    assert r0["batches"] == r1["batches"] == 3
    run = tmp / "run"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # rank 0 alone writes
    assert (run / "model" / "model.safetensors").exists() and (run / "samples" / "step-000002.png").exists()
    state = torch.load(run / "state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and state["step"] == 3
