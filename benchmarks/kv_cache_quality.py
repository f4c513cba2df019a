"""How much an AR prior's next-token distributions move when its KV cache holds int8 (`regvq sample --kv-cache
int8`), next to how much they move between float32 and the compute dtype (bf16) anyway.

    python benchmarks/kv_cache_quality.py --model regvq-text2img [--prompts 16] [-n 2] [--cfg 1.5] [--json]
    python benchmarks/kv_cache_quality.py --model regvq-seg2img --scenes 16 --device cuda --attention triton

Token grids are sampled from the prior in float32 (the reference, R) with the recipe conditions of
prior_adherence.py (its fixed prompt set for text priors, its recipe scenes for segmentation-map priors, class ids
0.. for class priors). Each grid is then scored teacher-forced, all positions in one forward pass over an empty
cache, in four settings: R (float32 weights and cache), R+int8 (float32 weights, int8 cache), low (the compute
dtype for weights and cache) and low+int8 (compute-dtype weights, int8 cache: what `--kv-cache int8` runs on a
GPU). A pass over a cache attends the keys and values as the cache holds them (KVCache.store hands back what it
stored), which is what a decode step reads, so an int8 cache's rounding is in the scores. The guided logits
(pred_null + cfg * (pred_cond - pred_null), as the sampler draws from) are compared with R's: the mean KL(R || X)
per token in nats, how often their most likely code agrees, and the mean negative log-likelihood of the sampled
tokens (R's own NLL is the entropy of what was drawn). `--attention triton` also scores each setting through the
decode kernel, one step per position, on a GPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def conditions(prior, count: int, size: int):
    """(raw condition kwargs, label) for `count` conditions of the prior's kind."""
    kind = prior.config.cond
    if kind == "text":
        from prior_adherence import text_prompts

        return {"prompts": [p["prompt"] for p in text_prompts(count)]}, f"{count} prompts"
    if kind == "segmap":
        from prior_adherence import make_scenes

        return {"segmaps": make_scenes(count, size, 12345)[1]}, f"{count} recipe scenes"
    if kind == "class":
        return {"labels": [i % prior.config.num_classes for i in range(count)]}, f"{count} classes"
    return {}, "unconditional"


@torch.no_grad()
def guided_logprobs(model, cond, tokens, cfg: float, storage, attention: str):
    """log p(x_i | x_<i) [n, N, V] in float32 from the guided logits of `model` for the raw condition `cond`,
    teacher-forced, with a cache holding `storage`: one pass over the prefix and all tokens ("sdpa"), or the prefix
    and then one decode step per position through the Triton kernel ("triton")."""
    from regvq_cli.priors.sampling import _encode, guide

    n, N = tokens.shape
    states, guided = _encode(model, cond, n, cfg)
    rows = torch.cat([tokens, tokens]) if guided else tokens
    cache = model.new_cache(rows.shape[0], storage=storage)
    if attention == "sdpa":
        logits = model(rows[:, :-1], states, cache=cache).float()  # [B, N, V]
    else:
        cache.use_kernel(model.config.rope_theta)
        first = model(rows[:, :0], states, cache=cache)[:, -1]
        steps = [first]
        pos = torch.zeros((), dtype=torch.long, device=rows.device)
        for i in range(N - 1):
            steps.append(model.decode_step(rows[:, i:i + 1], pos, cache))
            pos += 1
        logits = torch.stack(steps, 1).float()
    if guided:
        logits = guide(logits, cfg)
    return logits.log_softmax(-1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="regvq-text2img", help="an AR prior (shipped name or folder)")
    p.add_argument("--prompts", "--scenes", "--classes", dest="count", type=int, default=16,
                   help="conditions (prompts, recipe scenes or classes, after the prior's kind)")
    p.add_argument("-n", type=int, default=2, help="grids sampled per condition")
    p.add_argument("--cfg", type=float, default=1.5, help="guidance scale (regvq sample's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"], help="the compute dtype compared")
    p.add_argument("--attention", default="sdpa", choices=["sdpa", "triton"])
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    from regvq_cli.cli.sample import take
    from regvq_cli.engine.resolve import PRIOR, load
    from regvq_cli.priors.conditioning import prepare_condition
    from regvq_cli.priors.sampling import sample_ar

    dev = torch.device(args.device)
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    prior = load(args.model, device=dev, expect=PRIOR).float().eval()
    if prior.model_type != "ar":
        raise SystemExit(f"{args.model} is a {prior.model_type} prior; the KV cache is the AR priors'")
    cond_kwargs, label = conditions(prior, args.count, 256)
    cond = prepare_condition(prior.config, device=dev, **cond_kwargs)
    count = len(next(iter(cond_kwargs.values()))) if cond_kwargs else 1
    idx = torch.arange(count * args.n, device=dev) // args.n
    cond = take(cond, idx)
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    n = len(idx)
    tokens = sample_ar(prior, cond, n, cfg=args.cfg, generator=gen, attention="sdpa").view(n, -1)  # [n, N]

    lowered = copy.deepcopy(prior).to(low)
    settings = {"R": (prior, None), "R+int8": (prior, torch.int8), args.dtype: (lowered, None),
                f"{args.dtype}+int8": (lowered, torch.int8)}
    ref = guided_logprobs(prior, cond, tokens, args.cfg, None, "sdpa")
    rows = []
    for name, (model, storage) in settings.items():
        for attention in ["sdpa"] + (["triton"] if args.attention == "triton" else []):
            lp = guided_logprobs(model, cond, tokens, args.cfg, storage, attention)
            kl = (ref.exp() * (ref - lp)).sum(-1)  # [n, N]
            rows.append({"setting": name, "attention": attention, "kl_nats_per_token": round(kl.mean().item(), 6),
                         "kl_p99": round(kl.flatten().quantile(0.99).item(), 6),
                         "top1_agreement": round((lp.argmax(-1) == ref.argmax(-1)).float().mean().item(), 5),
                         "nll_sampled": round(-lp.gather(-1, tokens[..., None]).mean().item(), 5)})
    result = {"model": args.model, "conditions": label, "grids": n, "cfg": args.cfg, "device": str(dev),
              "torch": torch.__version__, "command": " ".join(["python", "benchmarks/kv_cache_quality.py"] +
                                                                (argv if argv is not None else sys.argv[1:])),
              "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.model}, {n} grids ({label}, {args.n} each), cfg {args.cfg}, on {dev}; against R (float32)")
        print(f"{'setting':<12}{'attention':<11}{'KL nats/token':>15}{'KL p99':>10}{'top-1 agree':>13}{'NLL':>9}")
        for r in rows:
            print(f"{r['setting']:<12}{r['attention']:<11}{r['kl_nats_per_token']:>15.6f}{r['kl_p99']:>10.5f}"
                  f"{r['top1_agreement']:>13.4f}{r['nll_sampled']:>9.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
