"""Early training dynamics of the quantizers on a CPU: does a small tokenizer start to learn, and do its code
distributions sharpen? A minutes-long probe, not a benchmark of record.

    python benchmarks/regvq_dynamics.py --steps 600 '{"quantizer": "vq"}' '{"quantizer": "regvq"}' \
        '{"quantizer": "regvq", "use_prior": false}' '{"quantizer": "regvq", "prior_weight": 0.01, "logit_init": 30}'

Each JSON argument is one run: TokenizerConfig fields (e.g. `use_prior`, `mask_ratio`, `logit_init`), plus the
prior's schedule as train-tokenizer has it: `prior_weight` (default 0.1), `prior_start`, `prior_ramp` (default 0). Every run: the same seed, a 64 px
f8 network (16 channels, 1,024 codes of dimension 32), Adam 2e-4 (betas 0.5, 0.9), batch 8, L1 plus the
quantizer's own terms (no perceptual, contrastive or GAN loss), on 600 one-object pictures of recipes/text2img.py
(seed 7) resized to 64 px. Every 200 steps on 48 held-out recipe pictures (seed 12345): L1 of the argmax
reconstruction, the share whose object and background colour the recipe's classifier still names right
(benchmarks/prior_adherence.py's measurement), codes used, and max_prob (mean top-1 probability of the code
distributions, from the last training batch). Needs the Debian packages fonts-noto-color-emoji and openclipart-png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from regvq_cli.tokenizer.model import Tokenizer, TokenizerConfig
from regvq_cli.train.tokenizer import TrainTokenizerConfig, prior_weight_at

SIZE = 64


def as_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def as_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def run(spec: dict, steps: int, train: np.ndarray, val: np.ndarray, facts: list, pa, seed: int = 0) -> list[dict]:
    spec = dict(spec)
    schedule = TrainTokenizerConfig(**{k: spec.pop(k) for k in ("prior_weight", "prior_start", "prior_ramp") if k in spec})
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = TokenizerConfig(image_size=SIZE, ch=16, ch_mult=(1, 2, 2, 4), num_res_blocks=1, attn_resolutions=(),
                          z_channels=64, embed_dim=32, codebook_size=1024, **spec)
    model = Tokenizer(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.5, 0.9))
    val_x, rows = as_tensor(val), []
    for step in range(1, steps + 1):
        x = as_tensor(train[rng.integers(0, len(train), 8)])
        recon, q = model(x, step=step)
        loss = (recon - x).abs().mean()
        for name, value in q.losses.items():
            weight = prior_weight_at(schedule, step - 1) if name == "prior_kl" else 1.0  # the trainer counts from 0
            loss = loss + weight * value
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 200 == 0:
            model.eval()
            with torch.no_grad():
                idx = model.encode(val_x)
                back = model.decode(idx)
            model.train()
            score = pa.score_recipe(as_uint8(back), facts)
            rows.append({"step": step, "val_l1": round((back - val_x).abs().mean().item(), 4),
                         "object_color": score["object_color"], "background": score["background"],
                         "codes_used": int(idx.unique().numel()),
                         "max_prob": round(float(q.stats.get("max_prob", float("nan"))), 3)})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="one JSON object per run (see the module docstring)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0, help="seed of the weights and the batch order")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import prior_adherence as pa  # the recipes' colour measurement

    torch.set_num_threads(2)
    train, _ = pa.recipe_pictures(600, SIZE, seed=7)
    val, facts = pa.recipe_pictures(48, SIZE, seed=pa.RECIPE_SEED)
    for text in a.runs:
        t0 = time.perf_counter()
        rows = run(json.loads(text), a.steps, train, val, facts, pa, a.seed)
        print(json.dumps({"run": json.loads(text), "seed": a.seed, "rows": rows, "seconds": round(time.perf_counter() - t0)}), flush=True)


if __name__ == "__main__":
    main()
