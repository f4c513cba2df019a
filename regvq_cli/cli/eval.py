"""`regvq eval recon | gen` and `regvq codebook`: measured numbers with their protocol."""

from __future__ import annotations

import click

from regvq_cli.cli._common import (SEED, FiniteFloatRange, ModelSpec, batch_size_hint, check_png_name, counted,
                                   device_options, emit_json, explicit_options, info, json_option, load_model,
                                   make_output_folder, model_option, offline_option, plural, progress, shown, warn)


MIN_FID_IMAGES = 10  # below this regvq_cli.eval.fid refuses FID; above it, under 2048 flags it as biased


@click.group("eval")
def eval_group():
    """Measure tokenizers and generators; every result carries its protocol (--json for all of it)."""


def image_batches(data, size, resize, batch_size, workers, limit, with_classes=False, what=None, device=None):
    """uint8 [B, H, W, 3] batches of the images in DATA; unreadable files are reported and skipped. With
    with_classes, and a class for every image (sub-folders or a metadata label), (images, class names) pairs.
    `what` (an option such as --ref) prefixes the error when DATA holds no image. `device`: where the batches go (on a
    GPU the decoding workers are the limit, and by default take every core but one)."""
    import torch

    from regvq_cli.data.dataset import ImageDataset, quiet_loader_worker
    from regvq_cli.data.inputs import list_inputs
    from regvq_cli.engine.dist import default_loader_workers
    from regvq_cli.errors import RegvqError

    try:
        listing = list_inputs(list(data))
    except RegvqError as e:
        if what is None:
            raise
        raise RegvqError(f"{what} {' '.join(map(str, data))}: {e}") from None
    n = len(listing) if limit is None else min(limit, len(listing))
    dataset = ImageDataset(listing, size, resize, indices=range(n))
    names = None
    if with_classes and listing.has_labels and (listing.labels[:n] >= 0).all():
        names = [listing.label_names[v] if listing.label_names else str(v) for v in listing.labels[:n].tolist()]
    if workers is None:
        workers = default_loader_workers(device is not None and torch.device(device).type == "cuda")
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=dataset.collate,
                                         num_workers=workers, worker_init_fn=quiet_loader_worker)

    def batches():
        for batch in loader:
            for i, reason, ok in zip(batch["i"].tolist(), batch["reason"], batch["ok"].tolist()):
                if not ok:
                    warn(f"skipped {shown(listing.key(i))}: {reason}")
            if batch["ok"].any():
                images = batch["image"].permute(0, 2, 3, 1)  # the readable ones only, in order
                yield images if names is None else (images, [names[i] for i in batch["i"][batch["ok"]].tolist()])

    return batches(), n


def shared_options(f=None, *, gen=False):
    """The options `eval recon` and `eval gen` share; `eval gen` hides --no-fid, which it refuses, and its --seed
    seeds the sampling too."""
    if f is None:
        return lambda g: shared_options(g, gen=gen)
    for opt in reversed([
        click.option("--size", type=click.IntRange(8), default=None, help="Image size the metrics see (default: the tokenizer's, or 256)."),
        click.option("--resize", type=click.Choice(["crop", "shorter-crop", "pad", "stretch"]), default="shorter-crop", show_default=True, help="How images become SIZE x SIZE (see `regvq encode --help`)."),
        click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True, help="Images per batch."),
        click.option("--limit", type=click.IntRange(1), default=None, help="Use only the first N images."),
        click.option("--workers", type=click.IntRange(0), default=None, help="Image-decoding processes (default: one per CPU core, up to 8; on a GPU, every core but one, up to 32)."),
        click.option("--no-fid", is_flag=True, hidden=gen, help="Skip the Inception features (no FID/KID): fast."),
        click.option("--fid-method", type=click.Choice(["sqrtm", "eigh"]), default="sqrtm", show_default=True, help="Matrix square root of the Frechet distance (eigh: same value, faster)."),
        click.option("--seed", type=SEED, default=0, show_default=True,
                     help="Seed of the KID subsets, and of the sampling with --model." if gen else "Seed of the KID subsets."),
    ]):
        f = opt(f)
    return f


def show(result, as_json):
    if as_json:
        emit_json(result)
        return
    for w in result.get("warnings", []):
        warn(w)
    for name, value in result["metrics"].items():
        if isinstance(value, dict) and name == "class_agreement":
            loo = value["reference_leave_one_out"]
            click.echo(f"{name:22} {value['rate']} over {value['n']} samples (chance {value['chance']}; the "
                       f"{value['k']}-NN classifier on the references: {loo})")
        elif value is not None:
            click.echo(f"{name:22} {value:.4f}" if isinstance(value, float) else f"{name:22} {value}")
    p = result["protocol"]
    features = f", features {p['feature_network']}" if p["feature_network"] is not None else ""
    info(f"protocol: {plural(p['n_images'], 'image')} at {p['image_size']}, resize {p['resize']}{features}")


@eval_group.command()
@click.argument("data", nargs=-1, required=True, type=click.Path(exists=True))
@model_option(help_text="Tokenizer to evaluate: a shipped name, folder, .safetensors file or Hub id (default: regvq-tokenizer).")
@shared_options
@click.option("--ref-stats", type=click.Path(dir_okay=False), default=None, help="Cached Inception statistics of these images: read if present, else written.")
@device_options
@offline_option
@json_option
@batch_size_hint
def recon(data, model, size, resize, batch_size, limit, workers, no_fid, fid_method, seed, ref_stats, device, dtype, offline, as_json):
    """Reconstruction quality of a tokenizer on the images in DATA.

    rFID and KID (TF-FID Inception pool3), PSNR, SSIM, L1, and codebook usage, perplexity and dead codes.
    """
    import os

    from regvq_cli.engine.device import pick_device
    from regvq_cli.engine.resolve import DEFAULT_TOKENIZER, TOKENIZER
    from regvq_cli.eval.recon import evaluate_recon

    dev = pick_device(device)
    tokenizer = load_model(model or DEFAULT_TOKENIZER, device=dev, offline=offline, expect=TOKENIZER)
    size = size or tokenizer.config.image_size
    batches, n = image_batches(data, size, resize, batch_size, workers, limit, device=dev)
    notes = []  # said on stderr now, before the pass; the JSON result carries them too
    if n < MIN_FID_IMAGES and not no_fid:
        # n counts the inputs listed; a bad one among them is skipped later, so this says inputs, not images
        notes.append(f"{plural(n, 'input')} {'is' if n == 1 else 'are'} too few for rFID/KID (at least "
                     f"{MIN_FID_IMAGES} images); reporting the other metrics")
        no_fid = True
    if ref_stats is not None:
        notes += ref_stats_notes(ref_stats, data, no_fid)
    for note in notes:
        warn(note)
    used = ref_stats is not None and not no_fid
    have_stats = used and os.path.exists(ref_stats)
    with progress(total=n, desc="eval", unit="img") as bar:
        result = evaluate_recon(
            tokenizer, batches, device=dev, feature_fn=None if no_fid else "default", image_size=size,
            batch_size=batch_size, resize=resize, ref_stats=ref_stats if have_stats else None,
            save_ref_stats=ref_stats if used and not have_stats else None, fid_method=fid_method, seed=seed,
            data=" ".join(data), model=tokenizer.regvq_id, n_total=n, callback=counted(bar, "images"))
    if used and result["metrics"]["rfid"] is None:  # skipped files left too few images
        result["warnings"].append(unused_ref_stats(ref_stats))
    if as_json:  # said on stderr already; the JSON result says why rFID is missing too
        result["warnings"][:0] = notes
    show(result, as_json)


def unused_ref_stats(path) -> str:
    return f"--ref-stats {path} is unused: no rFID is computed, so its statistics are neither used nor written"


def ref_stats_notes(path, data, no_fid) -> list[str]:
    """Warnings about --ref-stats before the pass: unused without rFID, or statistics of other images. Other
    images are not refused: the same data set may well sit under another path now."""
    import os

    from regvq_cli.eval.fid import read_stats_protocol

    if no_fid:
        return [unused_ref_stats(path)]
    if not os.path.exists(path):
        return []  # written by this run
    made_from = read_stats_protocol(path).get("data")
    if made_from is None or same_paths(made_from, " ".join(data)):  # None: written by a caller that named no data
        return []
    return [f"the statistics in {path} were computed over {made_from}, not {' '.join(data)}: rFID compares the "
            "reconstructions with those images"]


def same_paths(a: str, b: str) -> bool:
    """Whether two recorded input lists name the same paths, up to spelling (imgs, ./imgs, imgs/)."""
    import os

    return [os.path.normpath(p) for p in a.split(" ")] == [os.path.normpath(p) for p in b.split(" ")]


@eval_group.command()
@click.option("--samples", type=click.Path(exists=True, file_okay=False), help="Folder of generated images.")
@click.option("-m", "--model", "prior_spec", type=ModelSpec(), default=None, help="A prior to sample from instead of --samples (unconditional or class-conditional; classes in turn).")
@click.option("-n", "--num-samples", type=click.IntRange(1), default=1000, show_default=True, help="With --model: how many images to generate.")
@click.option("--cfg", "guidance", type=FiniteFloatRange(0), default=1.5, show_default=True, help="With --model: classifier-free guidance scale.")
@click.option("--steps", type=click.IntRange(1), default=None, help="With a diffusion --model: denoising steps.")
@click.option("--sampler", type=click.Choice(["vq", "maskgit"]), default=None, help="With a diffusion --model: the sampler.")
@click.option("--ref", "ref", required=True, type=click.Path(exists=True), help="Reference images (a folder) or cached statistics (.safetensors).")
@shared_options(gen=True)
@click.option("--save-ref-stats", type=click.Path(dir_okay=False), default=None, help="Write the reference statistics here for later runs.")
@device_options
@offline_option
@json_option
@batch_size_hint
def gen(samples, prior_spec, num_samples, guidance, steps, sampler, ref, size, resize, batch_size, limit, workers, no_fid,
        fid_method, seed, save_ref_stats, device, dtype, offline, as_json):
    """FID, KID and precision/recall of generated images against reference images.

    The images are a folder (--samples) or are sampled here from a prior (--model, decoded with its tokenizer).
    Where both the samples and the reference images have classes (class sub-folders; a class-conditional
    --model), it also reports class agreement: how often a 5-NN classifier over the reference images' features
    names each sample's class, beside that classifier's leave-one-out accuracy on the references.

    With --save-ref-stats and neither --samples nor --model it only computes the reference statistics, once for
    many comparisons:

    \b
    regvq eval gen --ref train/ --save-ref-stats train-stats.safetensors
    regvq eval gen --model runs/a/model --ref train-stats.safetensors
    """
    from regvq_cli.engine.device import pick_device, pick_dtype
    from regvq_cli.eval.gen import evaluate_gen, is_stats_file, save_reference_stats

    if no_fid:
        raise click.UsageError("`eval gen` measures features; --no-fid leaves nothing to measure")
    ref_is_stats = is_stats_file(ref)  # --save-ref-stats writes whatever name it is given
    if samples is None and prior_spec is None and save_ref_stats is not None:  # only cache the reference's
        if ref_is_stats:
            raise click.UsageError("--ref is already statistics; give the reference images to compute them from")
        dev = pick_device(device)
        batches, n = image_batches([ref], size or 256, resize, batch_size, workers, limit, what="--ref", device=dev)
        with progress(total=n, desc="reference", unit="img") as bar:
            saved = save_reference_stats(batches, save_ref_stats, device=dev, batch_size=batch_size, resize=resize,
                                         seed=seed, ref_name=ref, callback=counted(bar, "images"))
        if as_json:
            emit_json(saved)
        else:
            kept = "with" if saved["features_kept"] else "without (too many for KID and precision/recall)"
            info(f"{saved['path']}: statistics of {saved['n_images']} reference images, {kept} their features; "
                 f"pass it as --ref")
        return
    if (samples is None) == (prior_spec is None):
        raise click.UsageError("give either --samples DIR or --model PRIOR (or --save-ref-stats alone, to cache "
                               "the reference's statistics)")
    flags = {"num_samples": "--num-samples", "guidance": "--cfg", "steps": "--steps", "sampler": "--sampler"}
    sampling_given = explicit_options(flags, {"num_samples": num_samples, "guidance": guidance, "steps": steps,
                                              "sampler": sampler})
    if samples is not None and sampling_given:  # they would be ignored: the images are made already
        raise click.UsageError(f"{', '.join(flags[k] for k in sampling_given)} sample from --model; with --samples "
                               "the images are given: drop them")
    dev = pick_device(device)
    sampling = None
    if samples is not None:
        size = size or 256
        sample_batches, n = image_batches([samples], size, resize, batch_size, workers, limit, with_classes=True,
                                          what="--samples", device=dev)
    else:
        sample_batches, n, size, sampling = prior_batches(prior_spec, num_samples, guidance, steps, sampler,
                                                          batch_size, seed, dev, pick_dtype(dtype, dev), offline)
    ref_source = (ref if ref_is_stats else
                  image_batches([ref], size, resize, batch_size, workers, None, with_classes=True, what="--ref",
                                device=dev)[0])
    with progress(total=n, desc="eval", unit="img") as bar:
        result = evaluate_gen(sample_batches, ref_source, device=dev, image_size=size, batch_size=batch_size,
                              resize=resize, save_ref_stats=save_ref_stats, fid_method=fid_method, seed=seed,
                              data=samples, ref_name=ref, model=prior_spec, sampling=sampling, n_samples=n,
                              callback=counted(bar, "images"))
    show(result, as_json)


def prior_batches(spec, n, guidance, steps, sampler, batch_size, seed, device, dtype, offline):
    """uint8 [B, H, W, 3] batches sampled from a prior (classes in turn) and decoded; also n, the image size and
    the sampling settings for the protocol."""
    import numpy as np
    import torch

    from regvq_cli.cli.sample import check_sampler_options, load_tokenizer, token_batches
    from regvq_cli.engine.resolve import PRIOR
    from regvq_cli.engine.runtime import prepare_tokenizer
    from regvq_cli.priors.conditioning import prepare_condition

    prior = load_model(spec, device=device, offline=offline, expect=PRIOR)
    check_sampler_options(prior, steps, sampler)
    pc = prior.config
    if pc.cond not in ("none", "class"):
        raise click.UsageError(f"{spec} is {pc.cond}-conditioned: generate with `regvq sample ... -o DIR` and pass --samples DIR")
    tokenizer, _ = load_tokenizer(prior, None, offline)
    runner = prepare_tokenizer(tokenizer, device, dtype)
    cond = prepare_condition(pc, device=device, labels=list(range(pc.num_classes))) if pc.cond == "class" else None
    rows = np.arange(n) % (pc.num_classes if pc.cond == "class" else 1)
    # eval gen offers no temperature, top-k or top-p: the samplers' defaults, named so the protocol records them
    options = dict(cfg=guidance, temperature=1.0, top_k=0, top_p=1.0)
    if prior.model_type == "diffusion":
        options.update(steps=steps, sampler=sampler or "vq")
    # what `regvq sample` needs to make the same tokens again (with the protocol's seed); batches draw in turn
    sampling = dict(options, steps=options.get("steps"), sampler=options.get("sampler"), batch_size=batch_size)
    if prior.model_type != "diffusion":
        options.update(cuda_graphs=device.type == "cuda")  # as `regvq sample` does; the same tokens either way
    generator = torch.Generator(device=device if device.type == "cuda" else "cpu").manual_seed(seed)
    tokens = token_batches(prior, cond, rows, batch_size, generator, dtype, options)
    if pc.cond != "class":
        return (runner.decode_uint8(t) for t in tokens), n, tokenizer.config.image_size, sampling
    names = [pc.class_names[r] if pc.class_names else str(r) for r in rows.tolist()]  # the class of each sample
    batches = ((runner.decode_uint8(t), names[i * batch_size:i * batch_size + len(t)]) for i, t in enumerate(tokens))
    return batches, n, tokenizer.config.image_size, sampling


@click.command()
@click.argument("model", type=ModelSpec(), required=False)
@click.argument("data", nargs=-1, type=click.Path(exists=True))
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write the usage histogram as a PNG.")
@click.option("--top", type=click.IntRange(1), default=10, show_default=True, help="How many most/least used codes to list.")
@click.option("--size", type=click.IntRange(8), default=None, help="Image size (default: the tokenizer's).")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True, help="Images per batch.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Use only the first N images (token rows).")
@device_options
@offline_option
@json_option
@batch_size_hint
def codebook(model, data, plot, top, size, batch_size, limit, device, dtype, offline, as_json):
    """Codebook health of tokenizer MODEL over DATA: usage histogram, dead codes, most and least used codes.

    DATA is image folders/files (encoded with MODEL) or a token folder from `regvq encode`. MODEL defaults to
    the embedded default tokenizer: `regvq codebook imgs/` takes its one argument as DATA. A token folder alone
    needs no model: `regvq codebook tokens/` counts its codes against the codebook size recorded with them.
    """
    import os

    import torch

    from regvq_cli.engine.device import pick_device, pick_dtype
    from regvq_cli.engine.resolve import DEFAULT_TOKENIZER, TOKENIZER
    from regvq_cli.engine.runtime import prepare_tokenizer
    from regvq_cli.errors import RegvqError
    from regvq_cli.eval import metrics
    from regvq_cli.eval.codebook import codebook_report, save_usage_plot

    if not data and model is not None and os.path.exists(model) and not looks_like_model(model):
        data, model = (model,), None  # one argument that is data: DATA, with the default tokenizer for images
    if not data:
        raise click.UsageError("give DATA: image folders, or a token folder written by `regvq encode`")
    if plot:
        check_png_name(plot, folder_of_pngs=False, option="--plot")  # the plot is written as a PNG
        # its folder now, not after the whole pass: one below a file, or one that cannot be made, fails at once
        make_output_folder(os.path.dirname(os.path.abspath(plot)), option="--plot")
    dev = pick_device(device)
    reader = None
    if len(data) == 1 and os.path.isfile(os.path.join(data[0], "manifest.json")):
        from regvq_cli.data.shards import ShardReader

        reader = ShardReader(data[0])
    if reader is not None and model is None:
        # counting codes needs the tokens alone, and they record their codebook size: no model to load or match
        from regvq_cli.engine.decode import recorded_tokenizer

        n_codes, made_by = reader.codebook_size, recorded_tokenizer(reader)[0] or data[0]
    else:
        tokenizer = load_model(model or DEFAULT_TOKENIZER, offline=offline, expect=TOKENIZER)
        n_codes, made_by = tokenizer.codebook_size, tokenizer.regvq_id
    hist = torch.zeros(n_codes, dtype=torch.long)
    if reader is not None:
        if reader.codebook_size != n_codes:
            raise click.UsageError(f"the tokens use {reader.codebook_size} codes, the model {n_codes}")
        from regvq_cli.engine.decode import shard_batches

        for rows in shard_batches(reader, batch_size, limit):  # the first --limit rows, as `regvq decode` takes them
            hist += metrics.code_histogram(torch.from_numpy(rows.tokens), n_codes)
    else:
        runner = prepare_tokenizer(tokenizer, dev, pick_dtype(dtype, dev))
        batches, n = image_batches(data, size or tokenizer.config.image_size, "shorter-crop", batch_size, None, limit,
                                   device=dev)
        with progress(total=n, desc="codebook", unit="img") as bar:
            for batch in batches:
                idx = runner.encode_uint8(batch.permute(0, 3, 1, 2))
                hist += torch.bincount(idx.flatten().cpu(), minlength=n_codes)
                bar.update(len(batch))
    if int(hist.sum()) == 0:
        raise RegvqError("no tokens to count: DATA held no usable image or token row")
    report = codebook_report(hist, top_k=top)
    if plot:
        save_usage_plot(hist, plot, title=f"{made_by}: code usage")
    if as_json:
        emit_json(report)
        return
    for name, value in report.items():
        if name == "dead_code_indices" and len(value) > 20:  # the whole list is in --json
            value = f"{value[:20]} ... ({len(value)} in all; --json lists them)"
        elif isinstance(value, float):
            value = f"{value:.4f}"  # --json has every digit
        click.echo(f"{name:20} {value}")


def looks_like_model(path: str) -> bool:
    """A model folder (config.json or model.safetensors) or a .safetensors file, as the model resolver takes them."""
    import os

    from regvq_cli.engine.checkpoint import CONFIG_NAME, WEIGHTS_NAME

    if os.path.isdir(path):
        return any(os.path.exists(os.path.join(path, name)) for name in (CONFIG_NAME, WEIGHTS_NAME))
    return path.lower().endswith(".safetensors")
