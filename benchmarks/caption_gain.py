"""Does a text prior use its captions on pictures it was not trained on? Per-token cross-entropy of recipe pictures'
token grids under their own caption, under the null condition and under another picture's caption.

    python benchmarks/caption_gain.py --model regvq-text2img [-n 64] [--seeds 0 4242] [--json]

Pictures come from recipes/text2img.py at each seed, at the tokenizer's image size, with the recipe's defaults:
seed 0 (with n below the set's size) gives pictures of the shipped prior's training set, another seed new ones.
Each picture is encoded by the prior's tokenizer and scored teacher-forced (eval mode, fp32 on the CPU). A prior
that learned what captions say scores its own caption well below the null condition on new pictures as on trained
ones; one that memorised its pictures gains from the caption on the training seed only. Another picture's caption
scores worse than the null one when the caption is used at all.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import prior_adherence as pa  # noqa: E402


def caption_ce(prior, tokens, captions: list[str], device, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Per-grid mean cross-entropy (nats per token) of token grids [n, h, w] under their own captions ("own"), the
    null condition ("null") and the next grid's caption ("other", the last taking the first's)."""
    import torch
    import torch.nn.functional as F

    from regvq_cli.priors.conditioning import TextStates, prepare_condition

    x = tokens.flatten(1).long().to(device)
    own = prepare_condition(prior.config, prompts=captions, device=device)  # each caption encoded once
    other = TextStates(own.states.roll(-1, 0), own.mask.roll(-1, 0))  # row i: caption i + 1
    out = {}
    prior.eval()
    with torch.no_grad():
        for name, states, drop in (("own", own, False), ("null", own, True), ("other", other, False)):
            scores = []
            for s in range(0, len(x), batch_size):
                xb = x[s:s + batch_size]
                cond = TextStates(states.states[s:s + batch_size], states.mask[s:s + batch_size])
                logits = prior(xb[:, :-1], cond, cond_drop=torch.full((len(xb),), drop, device=device)).float()
                scores.append(F.cross_entropy(logits.transpose(1, 2), xb, reduction="none").mean(1).cpu())
            out[name] = torch.cat(scores).numpy()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="regvq-text2img", help="a text-conditioned AR prior")
    ap.add_argument("--tokenizer", default=None, help="default: the one the prior records")
    ap.add_argument("-n", type=int, default=64, help="pictures per seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 4242], help="recipes/text2img.py seeds")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)

    import torch

    from regvq_cli.engine.runtime import prepare_tokenizer

    t0 = time.perf_counter()
    prior, tok, dev = pa.load_models(a.model, a.tokenizer, a.device)
    if prior.model_type != "ar" or prior.config.cond != "text":
        raise SystemExit(f"{a.model} is not a text-conditioned AR prior")
    runner = prepare_tokenizer(tok, dev, torch.float32)
    size = tok.config.image_size
    rows = {}
    for seed in a.seeds:
        builder = pa.text2img.Builder(pa.recipe_sprites(), size, seed)
        made = [builder(i) for i in range(a.n)]
        images = np.stack([m[0] for m in made])
        tokens = torch.cat([runner.encode_uint8(torch.from_numpy(np.ascontiguousarray(images[s:s + a.batch_size]))
                                                .permute(0, 3, 1, 2)) for s in range(0, a.n, a.batch_size)])
        ce = caption_ce(prior, tokens, [m[2]["text"] for m in made], dev, a.batch_size)
        rows[seed] = {**{k: float(v.mean()) for k, v in ce.items()},
                      "own_below_null": float((ce["own"] < ce["null"]).mean())}
    result = {"model": a.model, "pictures_per_seed": a.n, "nats_per_token": rows,
              "seconds": round(time.perf_counter() - t0, 1), "command": " ".join(["python", *sys.argv])}
    if a.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{a.model}: cross-entropy per token of {a.n} recipe pictures per seed")
    print("| seed | own caption | null | another's caption | own below null |")
    print("|---|---:|---:|---:|---:|")
    for seed, r in rows.items():
        print(f"| {seed} | {r['own']:.3f} | {r['null']:.3f} | {r['other']:.3f} | {r['own_below_null']:.2f} |")


if __name__ == "__main__":
    main()
