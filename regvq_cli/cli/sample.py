"""`regvq sample`: generate images (and token grids) from a trained prior.

Conditions (prompts, classes or segmentation maps) each get -n samples, in the order given; sample i is named
`{i:06d}`. Randomness comes from one generator seeded with --seed, so the same seed, batch size and device give
the same images.
"""

from __future__ import annotations

import click

from regvq_cli.cli._common import (SEED, FiniteFloatRange, ModelSpec, OutFolder, batch_size_hint, check_png_name,
                                   check_png_to_stdout, compiling_note, counted, device_options, emit_json, human_rate,
                                   info, json_option, load_model, make_output_folder, model_option, offline_option,
                                   plural, progress, warn)

SHARD_SIZE = 4096  # samples per shard of --tokens-out


@click.command()
@model_option(help_text="Prior: a shipped name, a folder (e.g. runs/x/model), a .safetensors file or a Hub id "
                        "(default: regvq-text2img with --prompt, regvq-seg2img with --seg-map).")
@click.option("-p", "--prompt", "prompts", multiple=True, metavar="TEXT", help="A text prompt (repeatable).")
@click.option("--prompts-from", type=click.Path(exists=True, allow_dash=True, dir_okay=False), help="Read prompts from FILE, one per line ('-' for stdin).")
@click.option("--class", "classes", multiple=True, metavar="NAME|ID", help="A class name or id (repeatable).")
@click.option("--seg-map", "seg_maps", multiple=True, type=click.Path(exists=True, dir_okay=False), metavar="PNG",
              help="A segmentation map: a PNG of label ids, mode L, P or I;16 (repeatable).")
@click.option("-n", "--num-samples", type=click.IntRange(1), default=1, show_default=True, help="Samples per condition.")
@click.option("--seed", type=SEED, default=None, help="Random seed (default: a fresh one, reported in the output).")
@click.option("--cfg", "guidance", type=FiniteFloatRange(0), default=1.5, show_default=True, help="Classifier-free guidance scale (1: off).")
@click.option("--temperature", type=FiniteFloatRange(0), default=1.0, show_default=True, help="Sampling temperature (0: greedy).")
@click.option("--top-k", type=click.IntRange(0), default=0, show_default=True, help="Keep the k most likely codes (0: all).")
@click.option("--top-p", type=FiniteFloatRange(0, 1, min_open=True), default=1.0, show_default=True, help="Keep the smallest set of codes with this much probability.")
@click.option("--steps", type=click.IntRange(1), default=None, help="diffusion: denoising steps (default: all timesteps for vq, 16 for maskgit).")
@click.option("--sampler", type=click.Choice(["vq", "maskgit"]), default=None, help="diffusion: the reverse process (vq, the default) or MaskGIT confidence decoding.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True, help="Samples per device batch.")
@click.option("--tokenizer", "tokenizer_spec", type=ModelSpec(), default=None, help="Tokenizer to decode with (default: the one recorded in the prior).")
@click.option("-o", "--out", default=None, type=click.Path(allow_dash=True), help="A folder for the PNGs, a .png file (one image, or the sheet with --grid), or '-' for one PNG on stdout.")
@click.option("--grid", "grid_sheet", is_flag=True, help="Write all samples as one contact sheet PNG (OUT is a .png file or '-').")
@click.option("--cols", type=click.IntRange(1), default=None, help="Columns of the contact sheet (default: square; at most the number of images).")
@click.option("--tokens-out", type=OutFolder(), default=None, help="Also (or instead) write the token grids as a token folder, readable by `regvq decode`.")
@click.option("--compile", "compile_", is_flag=True, help="Compile the prior's step with torch.compile after a one-off compilation: AR, the decode step and the draw (on an H200, with the CUDA graphs sampling records anyway and the Triton attention, 1.1-1.3x faster at batch 1, 1.1x at batch 256); diffusion, the denoiser. Slower on a CPU.")
@click.option("--attention", type=click.Choice(["auto", "sdpa", "triton"]), default="auto", show_default=True, help="AR priors: the decode steps' attention by PyTorch's SDPA, or by regvq's Triton kernel, which rotates the step's query and key, appends them to the cache and reads only its written part, all in one kernel (CUDA, needs triton; on an H200 11-18% faster than SDPA at batch 1, 1.7-1.9x the images/s at batch 256). auto: the kernel where it can run, SDPA elsewhere.")
@click.option("--kv-cache", type=click.Choice(["model", "int8"]), default="model", show_default=True, help="AR priors: what the decode steps' key/value cache holds: the model's dtype, or int8 with a scale per key and value vector (the queries rounded alike), about half the bytes that the steps read, which bound large batches with the Triton attention. int8 moves the next-token distributions slightly (on its own less than bf16 weights do against float32, on the shipped priors), so not the same tokens as --kv-cache model.")
@device_options
@offline_option
@json_option
@batch_size_hint
def sample(model, prompts, prompts_from, classes, seg_maps, num_samples, seed, guidance, temperature, top_k, top_p,
           steps, sampler, batch_size, tokenizer_spec, out, grid_sheet, cols, tokens_out, compile_, attention, kv_cache,
           device, dtype, offline, as_json):
    """Generate images from a prior trained with `regvq train-prior`.

    \b
    regvq sample --prompt "a red bird" -o bird.png
    regvq sample --prompts-from prompts.txt -n 4 -o out/
    regvq sample -m runs/ar/model --class 3 --class dog -n 8 --grid -o sheet.png
    regvq sample --seg-map map.png --seed 1 -o - > scene.png
    regvq sample -m runs/ar/model --class 0 -n 50000 --tokens-out gen-tokens/   # decode later

    Files are named by sample number and condition (000003-dog.png, 000000-a-red-bird.png). The same --seed,
    --batch-size and device give the same images. On a GPU, priors run in the compute dtype and each step (an AR
    decode step, a diffusion denoising step) replays as a recorded CUDA graph, recorded by the first batch and
    replayed by the next ones of its size.
    """
    import os
    import secrets
    import time

    if any(not p.strip() for p in prompts):  # training drops empty captions: "" is no condition the prior learned
        raise click.BadParameter("an empty prompt is no caption the prior was trained on: give some text",
                                 param_hint="--prompt")
    prompts = list(prompts) + (read_prompts(prompts_from) if prompts_from else [])
    given = [(name, list(v)) for name, v in (("prompts", prompts), ("labels", classes), ("segmaps", seg_maps)) if v]
    if len(given) > 1:
        raise click.UsageError("give prompts, classes or segmentation maps, not several kinds at once")
    kind, values = given[0] if given else (None, [])
    total = max(1, len(values)) * num_samples
    check_outputs(out, tokens_out, grid_sheet, cols, as_json, total)

    import numpy as np
    import torch

    from regvq_cli.engine.decode import contact_sheet
    from regvq_cli.engine.device import pick_device, pick_dtype
    from regvq_cli.engine.png import PngWriter, save_png, write_png_to_stdout
    from regvq_cli.engine.resolve import PRIOR
    from regvq_cli.engine.runtime import prepare_tokenizer
    from regvq_cli.priors.conditioning import class_id, prepare_condition

    dev = pick_device(device)
    compute_dtype = pick_dtype(dtype, dev)
    prior = load_model(model or default_prior(kind), device=dev, offline=offline, expect=PRIOR)
    pc = prior.config
    check_sampler_options(prior, steps, sampler)
    if prior.model_type == "diffusion" and (attention == "triton" or kv_cache != "model"):
        raise click.UsageError("--attention and --kv-cache apply to AR priors only")
    if prior.model_type != "diffusion":
        from regvq_cli.errors import RegvqError
        from regvq_cli.priors.sampling import resolve_attention

        try:  # here, before the tokenizer loads, as a usage error that names the flag
            attention = resolve_attention(attention, dev)
        except RegvqError:
            raise click.UsageError(f"--attention triton needs a CUDA device and triton installed (the prior is on "
                                   f"{dev}); leave --attention at auto") from None
    tokenizer = tok_sha = None
    if out is not None or kind == "segmaps":
        tokenizer, tok_sha = load_tokenizer(prior, tokenizer_spec, offline)
    maps = load_maps(values, tokenizer.config.image_size) if kind == "segmaps" else None
    cond = prepare_condition(pc, device=dev, offline=offline,
                             **({kind: maps if kind == "segmaps" else values} if kind else {}))

    seed = secrets.randbelow(2**31) if seed is None else seed
    generator = torch.Generator(device=dev if dev.type == "cuda" else "cpu").manual_seed(seed)
    rows = np.arange(total) // num_samples  # the condition of each sample
    # a class as the prior names it: "2" is the class named "2" where there is one (as the condition read it), else id 2
    ids = [class_id(pc, v) for v in values] if kind == "labels" else []
    named = [pc.class_names[i] if i < len(pc.class_names) else values[r] for r, i in enumerate(ids)] or values
    names = [f"{i:06d}" + (f"-{slug(named[r])}" if kind else "") for i, r in enumerate(rows)]
    writer = None
    if tokens_out is not None:
        fields = {"labels": cond.cpu().numpy()[rows] if kind == "labels" else None,
                  "captions": [values[r] for r in rows] if kind == "prompts" else None,
                  "segmaps": maps[rows] if kind == "segmaps" else None}
        tok_id = tokenizer.regvq_id if tokenizer is not None else pc.tokenizer
        settings = {"prior": prior.regvq_id, "seed": seed, "cfg": guidance, "temperature": temperature, "top_k": top_k,
                    "top_p": top_p, "steps": steps, "sampler": sampler, "batch_size": batch_size,
                    "kv_cache": kv_cache}
        writer = TokenWriter(tokens_out, pc, tok_id, tok_sha or pc.tokenizer_sha256, names, fields, settings)
    runner = prepare_tokenizer(tokenizer, dev, compute_dtype) if out is not None else None
    single = out is not None and (out == "-" or out.lower().endswith(".png"))
    # on a GPU each step is replayed as a recorded CUDA graph (the same tokens, far fewer launches at small batches)
    options = dict(cfg=guidance, temperature=temperature, top_k=top_k, top_p=top_p, compile=compile_,
                   cuda_graphs=dev.type == "cuda")
    if prior.model_type == "diffusion":
        options.update(steps=steps, sampler=sampler or "vq")
    else:
        options.update(attention=attention, kv_dtype=torch.int8 if kv_cache == "int8" else None)
    if compile_:
        compiling_note("the prior's step")
    files, sheet, done = [], [], 0
    if runner is not None and out != "-":  # now, before sampling: a path below a file fails at once
        make_output_folder(os.path.dirname(os.path.abspath(out)) if single else out)
    t0 = time.perf_counter()
    try:
        with progress(total=total, desc="sample", unit="img") as bar, PngWriter() as pngs:
            count = counted(bar, "samples")
            for tokens in token_batches(prior, cond, rows, batch_size, generator, compute_dtype, options):
                if writer is not None:
                    writer.add(tokens.cpu().numpy())
                if runner is not None and single:
                    sheet.append(runner.decode_uint8(tokens).numpy())  # [b, H, W, 3]
                elif runner is not None:  # threads write the files while the next batch is sampled
                    pictures, arrived = runner.decode_png_rows(tokens)  # [b, H, 1 + 3W]
                    paths = [os.path.join(out, f"{name}.png") for name in names[done:done + len(tokens)]]
                    pngs.write(pictures.numpy(), paths, arrived)
                    files += paths
                done += len(tokens)
                count(done, total)
        if writer is not None:
            writer.finish()
    finally:
        if writer is not None:
            writer.close()
    if single:
        image = contact_sheet(np.concatenate(sheet), cols) if grid_sheet else sheet[0][0]
        if out == "-":
            write_png_to_stdout(image)
        else:
            save_png(image, out)
            files.append(out)
    elapsed = time.perf_counter() - t0
    summary = {"model": prior.regvq_id, "tokenizer": tokenizer.regvq_id if tokenizer is not None else pc.tokenizer,
               "seed": seed, "images": total, "files": files, "tokens_out": tokens_out, "seconds": round(elapsed, 3),
               "images_per_s": round(total / max(elapsed, 1e-9), 2), "device": str(dev)}
    if as_json:
        emit_json(summary)
    else:
        where = ", ".join(w for w in (out if out != "-" else "stdout", tokens_out) if w)
        info(f"{where}: {plural(total, 'sample')} with seed {seed} ({human_rate(summary['images_per_s'])})")


def slug(condition) -> str:
    """A file-name part naming a condition: "a red bird" -> "a-red-bird", a map path -> its stem, a class as given."""
    import os
    import re

    text = os.path.splitext(os.path.basename(condition))[0] if str(condition).lower().endswith(".png") else str(condition)
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:48] or "x"


def read_prompts(path: str) -> list[str]:
    """Non-empty lines of FILE (or stdin for '-'), stripped; a usage error when there are none."""
    name = "stdin" if path == "-" else path
    try:
        with click.open_file(path, "r", encoding="utf-8-sig") as f:  # -sig: without a leading byte-order mark
            prompts = [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError:
        raise click.BadParameter(f"{name} is not UTF-8 text: save it as UTF-8", param_hint="--prompts-from") from None
    if not prompts:
        raise click.BadParameter(f"{name} holds no prompts: give one prompt per line", param_hint="--prompts-from")
    return prompts


def check_sampler_options(prior, steps, sampler) -> None:
    """--steps and --sampler against the loaded prior, as usage errors before any output is made (sample, eval gen)."""
    if prior.model_type != "diffusion" and (steps is not None or sampler is not None):
        raise click.UsageError("--steps and --sampler apply to diffusion priors only")
    if prior.model_type == "diffusion" and steps is not None:
        grid = prior.config.grid_size
        most, what = ((prior.num_timesteps, "timesteps") if (sampler or "vq") == "vq" else
                      (grid[0] * grid[1], "tokens, maskgit's most"))
        if steps > most:
            raise click.BadParameter(f"{steps} is more than this prior's {most} ({what})", param_hint="--steps")


def check_outputs(out, tokens_out, grid_sheet, cols, as_json, total) -> None:
    """Refuse output combinations that cannot work, before any model is loaded."""
    if out is None and tokens_out is None:
        raise click.UsageError("give -o (images) and/or --tokens-out (token grids)")
    single = out is not None and (out == "-" or out.lower().endswith(".png"))
    if grid_sheet and not single:
        raise click.BadParameter("with --grid, OUT is the contact sheet: a .png file or '-'", param_hint="--out")
    if cols is not None and not grid_sheet:
        raise click.BadParameter("--cols lays out the contact sheet: pass --grid too", param_hint="--cols")
    if out is not None and out != "-":
        import os

        if not single:
            check_png_name(out, folder_of_pngs=True)  # bird.jpg would be a folder
        if single and os.path.isdir(out):
            raise click.BadParameter(f"{out} is a folder: give a .png file name, or a folder name without .png",
                                     param_hint="--out")
        if not single and os.path.exists(out) and not os.path.isdir(out):
            raise click.BadParameter(f"{out} is a file, not a folder for the PNGs: give a folder, or a .png file "
                                     "(one image, or the sheet with --grid)", param_hint="--out")
    if single and not grid_sheet and total > 1:
        raise click.UsageError(f"-o {out} takes one image but {total} samples are asked for: pass --grid for a "
                               "contact sheet, or give a folder")
    if out == "-":
        check_png_to_stdout(as_json)


def default_prior(kind) -> str:
    """The shipped prior for prompts or maps; a one-line error when it is not installed."""
    from regvq_cli.engine.resolve import DEFAULT_SEGMAP_PRIOR, DEFAULT_TEXT_PRIOR, shipped_model_names
    from regvq_cli.errors import RegvqError

    name = {"prompts": DEFAULT_TEXT_PRIOR, "segmaps": DEFAULT_SEGMAP_PRIOR}.get(kind)
    if name is None:
        raise click.UsageError("pass --model: there is no default prior for classes or unconditional sampling")
    if name not in shipped_model_names():
        what = "text-to-image" if kind == "prompts" else "segmentation-map"
        raise RegvqError(f"the default {what} prior {name} is not installed; pass --model (a prior from `regvq train-prior`)")
    return name


def load_tokenizer(prior, spec, offline):
    """The tokenizer to decode with (--tokenizer, else the prior's recorded one) and its weights' sha256."""
    from regvq_cli.engine.checkpoint import file_sha256, weights_path
    from regvq_cli.engine.resolve import TOKENIZER
    from regvq_cli.errors import RegvqError

    pc = prior.config
    if spec is None:
        if not pc.tokenizer:
            raise RegvqError("the prior records no tokenizer: pass --tokenizer")
        try:
            tok = load_model(pc.tokenizer, offline=offline, expect=TOKENIZER)
        except RegvqError as e:
            raise RegvqError(f"the tokenizer recorded in the prior ({pc.tokenizer}) cannot be loaded: {e}; "
                             "pass --tokenizer") from None
    else:
        tok = load_model(spec, offline=offline, expect=TOKENIZER)
    sha = file_sha256(weights_path(tok.regvq_path))
    if pc.tokenizer_sha256 and sha != pc.tokenizer_sha256:
        warn(f"{tok.regvq_id} is not the tokenizer the prior was trained on ({pc.tokenizer}); images may look wrong")
    grid = tuple(tok.grid_size(tok.config.image_size))
    if tok.codebook_size != pc.codebook_size or grid != tuple(pc.grid_size):
        raise RegvqError(f"the prior models {pc.grid_size[0]}x{pc.grid_size[1]} grids of {pc.codebook_size} codes but "
                         f"{tok.regvq_id} makes {grid[0]}x{grid[1]} grids of {tok.codebook_size}; pass the tokenizer "
                         "the prior was trained on")
    return tok, sha


def load_maps(paths, size):
    """Segmentation-map PNGs -> label ids [k, size, size] (uint8, or int16 for 16-bit maps), cropped like encode."""
    import numpy as np

    from regvq_cli.data.images import ImageSkip, load_segmap
    from regvq_cli.errors import RegvqError

    maps = []
    for path in paths:
        try:
            maps.append(load_segmap(path, size, resize="shorter-crop"))
        except ImageSkip as e:
            raise RegvqError(f"{path}: {e.reason}") from None
        if str(path).lower().endswith((".jpg", ".jpeg")):
            warn(f"{path} is a JPEG: lossy compression changes class ids along region edges; save maps as PNG")
    dtype = np.int16 if any(m.dtype == np.int16 for m in maps) else np.uint8
    return np.stack(maps).astype(dtype)


def token_batches(prior, cond, rows, batch_size, generator, dtype, options):
    """Sampled token grids [b, h, w] on the device, batch by batch; sample i has condition cond[rows[i]]."""
    import torch

    from regvq_cli.priors import sampling

    device = next(prior.parameters()).device
    make = sampling.DiffusionSampler if prior.model_type == "diffusion" else sampling.ARSampler
    kept = None  # one batch size's sampler: its buffers (AR: the KV cache) and recorded passes serve every batch

    def sample_fn(cond, n):
        nonlocal kept
        if kept is None or kept.n != n:
            kept = None  # the last short batch: the full batches' buffers are freed first
            kept = make(prior, n, generator=generator, **options)
        return kept(cond)

    low = dtype != torch.float32 and device.type in ("cuda", "cpu")
    if options.get("cuda_graphs"):
        # a recorded step must not depend on autocast's cast cache: the weights themselves take the dtype
        prior.to(dtype)
        low = False
    # otherwise weights stay fp32; bf16 / fp16 only through autocast (the samplers keep their logits in fp32)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=low)
    for start in range(0, len(rows), batch_size):
        idx = torch.from_numpy(rows[start:start + batch_size]).to(device)
        n = len(idx)
        if options.get("compile") and start > 0 and n < batch_size:
            # a compiled step is specialised to its batch size: the last, short batch repeats its last row up to
            # the full size and the extra samples are dropped (no row depends on another), instead of compiling
            # again for about a minute
            idx = torch.cat([idx, idx[-1:].expand(batch_size - n)])
        with autocast:
            yield sample_fn(take(cond, idx), len(idx))[:n]


def take(cond, rows):
    """The rows of a raw condition (None, ids / maps, or TextStates) for one batch."""
    from regvq_cli.priors.conditioning import TextStates

    if cond is None:
        return None
    if isinstance(cond, TextStates):
        return TextStates(cond.states[rows], cond.mask[rows])
    return cond[rows]


class TokenWriter:
    """Sampled token grids -> a token folder (shards of SHARD_SIZE rows, each written as soon as it is full).

    `fields` holds the per-sample labels / captions / segmaps (None where the samples have none). The folder is
    locked while it is written, and one with shards of another run is refused before any sampling.
    """

    def __init__(self, folder, prior_config, tokenizer_id, tokenizer_sha256, keys, fields, settings):
        import numpy as np

        from regvq_cli.data.shards import OutputLock, RunInfo, completed_shards, inputs_fingerprint, plan_shards
        from regvq_cli.errors import RegvqError

        pc = prior_config
        self.fields = {k: v for k, v in fields.items() if v is not None}
        maps = self.fields.get("segmaps")
        self.run = RunInfo(tokenizer_id=tokenizer_id or "", tokenizer_sha256=tokenizer_sha256 or "",
                           grid=pc.grid_size, codebook_size=pc.codebook_size, num_inputs=len(keys),
                           shard_size=SHARD_SIZE, labels="labels" in self.fields,
                           label_names=(pc.class_names or None) if "labels" in self.fields else None,
                           captions="captions" in self.fields,
                           segmap_size=None if maps is None else maps.shape[1:],
                           inputs_sha256=inputs_fingerprint(keys), extra={"sampled": settings})
        self.folder, self.keys = folder, keys
        self.plan = plan_shards(len(keys), SHARD_SIZE)
        self.k = 0
        self.buffer = np.zeros((0, *pc.grid_size), dtype=np.int64)
        import os

        self.made = not os.path.exists(folder)  # a folder this run makes is removed again if it stays empty
        self.lock = OutputLock(folder).acquire()
        try:
            completed_shards(folder, self.run)
        except RegvqError:
            self.lock.release()
            raise RegvqError(f"{folder} holds token shards of another run; choose another --tokens-out or delete "
                             "them") from None

    def add(self, tokens) -> None:
        import numpy as np

        from regvq_cli.data.shards import write_shard

        self.buffer = np.concatenate([self.buffer, tokens])
        while self.k < len(self.plan) and len(self.buffer) >= self.plan[self.k][2] - self.plan[self.k][1]:
            _, start, stop = self.plan[self.k]
            extra = {name: value[start:stop] for name, value in self.fields.items()}
            write_shard(self.folder, self.k, self.run, self.buffer[:stop - start], self.keys[start:stop], **extra)
            self.buffer = self.buffer[stop - start:]
            self.k += 1

    def finish(self) -> dict:
        from regvq_cli.data.shards import write_manifest

        return write_manifest(self.folder, self.run)

    def close(self) -> None:
        import os

        self.lock.release()
        if self.made and self.k == 0:  # an error before the first shard: no folder holding only the lock file
            try:
                os.remove(os.path.join(self.folder, ".lock"))
                os.rmdir(self.folder)
            except OSError:
                pass
