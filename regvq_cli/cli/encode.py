"""`regvq encode`: images -> token shards."""

from __future__ import annotations

import sys

import click

from regvq_cli.cli._common import (CHANNELS_LAST_HELP, CUDA_GRAPHS_HELP, OutFolder, batch_size_hint, compiling_note, detail, device_options, emit_json, human_rate, info, json_option, load_model, model_option, offline_option, rank,
                                   plural, progress, shown, tenths, warn)

RESIZE_HELP = ("How images become SIZE x SIZE: crop = center square crop, then resize; shorter-crop = resize the "
               "shorter side to SIZE, then center crop; pad = fit inside, letterbox on --background; stretch = "
               "resize ignoring aspect ratio.")
JPEG_DECODER_HELP = ("Who decodes JPEGs: pillow = the CPU decoding workers, like every other format; nvjpeg = "
                     "the GPU (needs torchvision), for hosts where the CPU decoding is the limit (on an H200 with "
                     "16 cores, about 8,000 images/s of 256-512 px JPEGs against about 3,000 with Pillow). nvjpeg "
                     "pixels are not bit-identical to Pillow's, so tokens mostly but not always agree. Other "
                     "formats, CMYK and truncated JPEGs always go to Pillow.")

RESIZE_ON_HELP = ("Where pictures are resized to SIZE: workers = Pillow in the CPU decoding workers (the reference "
                  "pixels); device = the workers only decode, and each batch is resized at once on the device with "
                  "Pillow's bicubic weights (resizing is most of a worker's time, so on a GPU host the same workers "
                  "feed more images per second). Close to Pillow, not bit-identical. JPEGs decoded by nvjpeg are "
                  "always resized on the device.")


def parse_color(ctx, param, value):
    try:
        parts = tuple(int(v) for v in value.split(","))
        if len(parts) != 3 or not all(0 <= v <= 255 for v in parts):
            raise ValueError
        return parts
    except ValueError:
        raise click.BadParameter("expected R,G,B with values 0-255, e.g. 255,255,255") from None


@click.command()
@click.argument("inputs", nargs=-1, type=click.Path())
@click.option("-o", "--out", "out_dir", required=True, type=OutFolder(), help="Output token folder.")
@click.option("--files-from", type=click.Path(allow_dash=True), metavar="FILE", help="Read input paths from FILE, one per line or NUL-separated as `find -print0` writes them ('-' for stdin).")
@model_option(help_text="Tokenizer: a shipped name, folder, .safetensors file or Hub id (default: the embedded default tokenizer).")
@click.option("--size", type=click.IntRange(8), help="Input resolution (default: the tokenizer's training size).")
@click.option("--resize", type=click.Choice(["crop", "shorter-crop", "pad", "stretch"]), default="shorter-crop", show_default=True, help=RESIZE_HELP)
@click.option("--background", default="255,255,255", show_default=True, callback=parse_color, help="R,G,B under transparent pixels and around padded images.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Encode only the first N inputs of the listing (to try settings on a large folder; a rerun with another limit is another run).")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True, help="Images per device batch.")
@click.option("--shard-size", type=click.IntRange(1), default=4096, show_default=True, help="Inputs per shard file: the unit that torchrun ranks and job-array workers take, and that a rerun resumes from.")
@click.option("--workers", type=click.IntRange(0), default=None, help="Image-decoding processes (default: one per CPU core, up to 8; for a GPU, with Pillow decoding and resizing: every core but one, up to 32).")
@click.option("--maps", "maps_dir", type=click.Path(exists=True, file_okay=False), help="Folder of segmentation-map PNGs parallel to the inputs, carried into the shards.")
@click.option("--max-pixels", type=click.IntRange(1), default=178_956_970, show_default=True, help="Skip images with more pixels than this (decompression bombs).")
@click.option("--num-workers", type=click.IntRange(1), default=1, show_default=True, help="Split the work over this many independent jobs (job arrays; the decoding processes are --workers); then run `regvq shards merge`.")
@click.option("--worker-id", type=click.IntRange(0), default=0, show_default=True, help="Which job of --num-workers this is.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the tokenizer (pays off on large runs on a GPU).")
@click.option("--channels-last/--no-channels-last", default=None, help=CHANNELS_LAST_HELP)
@click.option("--cuda-graphs/--no-cuda-graphs", default=True, show_default=True, help=CUDA_GRAPHS_HELP)
@click.option("--jpeg-decoder", type=click.Choice(["pillow", "nvjpeg"]), default="pillow", show_default=True, help=JPEG_DECODER_HELP)
@click.option("--resize-on", type=click.Choice(["workers", "device"]), default="workers", show_default=True, help=RESIZE_ON_HELP)
@device_options
@offline_option
@json_option
@batch_size_hint
def encode(inputs, out_dir, files_from, model, size, resize, background, limit, batch_size, shard_size, workers, maps_dir,
           max_pixels, num_workers, worker_id, compile_, channels_last, cuda_graphs, jpeg_decoder, resize_on, device, dtype, offline,
           as_json):
    """Encode images into token shards in OUT.

    INPUTS are image folders (walked recursively, in sorted order) and image files. Bad images are skipped and
    listed in the manifest with the reason; the run goes on. Rerunning the same command resumes: complete
    shards are kept.

    \b
    regvq encode ./imgs -o tokens/
    find /data -name '*.jpg' | regvq encode --files-from - -o tokens/
    torchrun --nproc-per-node 8 -m regvq_cli encode /data -o tokens/
    """
    if not inputs and not files_from:
        raise click.UsageError("give at least one input folder or file, or --files-from")
    if worker_id >= num_workers:
        raise click.BadParameter(f"must be below --num-workers ({num_workers})", param_hint="--worker-id")
    from regvq_cli.engine.device import pick_device, pick_dtype
    from regvq_cli.engine.encode import EncodeOptions, encode_images
    from regvq_cli.engine.resolve import DEFAULT_TOKENIZER, TOKENIZER

    dev = pick_device(device)
    tokenizer = load_model(model or DEFAULT_TOKENIZER, offline=offline, expect=TOKENIZER)
    detail(f"encoding on {dev} in {str(pick_dtype(dtype, dev)).removeprefix('torch.')}")
    opts = EncodeOptions(size=size, resize=resize, background=background, max_pixels=max_pixels,
                         batch_size=batch_size, shard_size=shard_size, workers=workers, maps_dir=maps_dir,
                         num_workers=num_workers, worker_id=worker_id, compile=compile_, channels_last=channels_last,
                         cuda_graphs=cuda_graphs, jpeg_decoder=jpeg_decoder, resize_on=resize_on, limit=limit)
    if compile_:
        compiling_note("the tokenizer's encoder")
    with progress(desc="encode", unit="img") as bar:
        note = tenths(bar, "inputs")

        def callback(done, skipped, total):  # this run's inputs (all ranks' under torchrun)
            bar.total = total
            bar.n = done
            bar.set_postfix(skipped=skipped, refresh=False)
            bar.refresh()
            note(done, total, f", {skipped:,} skipped")

        try:
            summary = encode_images(list(inputs), out_dir, tokenizer, dev, pick_dtype(dtype, dev), opts,
                                    files_from=files_from, stdin=sys.stdin, callback=callback)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the complete shards are on disk
            if rank() == 0:  # under torchrun once, not from every rank
                warn(f"stopped: the complete shards in {out_dir} are kept; run the same command again to resume")
            raise
    detail("seconds: " + ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in summary["timings"].items()))
    detail(f"of {summary['timings']['encoding']:.2f} s encoding, {summary['input_wait']:.2f} s waiting for the next "
           "batch's pixels (when that is most of it, the decoding sets the pace, not the tokenizer)")
    if summary["shards_changed"]:
        warn(f"{', '.join(summary['shards_changed'])} differed from the manifest of the finished run (sha256): "
             "encoded again")
    if summary["shards_changed_for_other_workers"]:
        warn(f"{', '.join(summary['shards_changed_for_other_workers'])} differ from the manifest of the finished run "
             f"(sha256) and belong to other workers (shard k is worker k mod {summary['workers']}'s): rerun those "
             "workers to encode them again")
    for item in summary.get("skipped", [])[:20]:
        warn(f"skipped {shown(item['key'])}: {item['reason']}")
    if len(summary.get("skipped", [])) > 20:
        where = summary["manifest"] or "--json"
        warn(f"... and {len(summary['skipped']) - 20} more skipped inputs (see {where})")
    if as_json:
        emit_json(summary)
    else:
        done = f"{summary['total_encoded']} encoded, {summary['total_skipped']} skipped" if summary["manifest"] else \
            "this worker's shards are done; run `regvq shards merge` once all workers finish"
        info(f"{summary['out_dir']}: {done} ({summary['encoded_this_run']} this run at "
             f"{human_rate(summary['images_per_s'])}; {plural(summary['shards_reused'], 'shard')} reused)")
    if summary["manifest"] and summary["total_encoded"] == 0:
        from regvq_cli.errors import RegvqError

        raise RegvqError(f"no input could be encoded ({summary['total_skipped']} skipped; the reasons are above "
                         f"and in {summary['manifest']}); check that they are images")
