"""`regvq decode`: token shards -> images."""

from __future__ import annotations

import os
import sys

import click

from regvq_cli.cli._common import CHANNELS_LAST_HELP, CUDA_GRAPHS_HELP, batch_size_hint, check_png_name, check_png_to_stdout, compiling_note, counted, device_options, emit_json, human_rate, info, json_option, load_model, make_output_folder, model_option, offline_option, plural, progress, rank, shown, warn


@click.command()
@click.argument("tokens", type=click.Path(allow_dash=True))
@click.option("-o", "--out", required=True, type=click.Path(allow_dash=True), help="Output folder for PNGs (with --grid: a .png file, or '-' for the sheet on stdout).")
@model_option(help_text="Tokenizer to decode with (default: the one recorded in the manifest; needed for tokens on stdin, which record none).")
@click.option("--grid", "grid_sheet", is_flag=True, help="Write one contact sheet PNG to OUT instead of one PNG per grid.")
@click.option("--cols", type=click.IntRange(1), default=None, help="Columns of the contact sheet (default: square; at most the number of images).")
@click.option("--limit", type=click.IntRange(1), default=None, help="Decode only the first N grids.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True, help="Grids per device batch.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the decoder.")
@click.option("--channels-last/--no-channels-last", default=None, help=CHANNELS_LAST_HELP)
@click.option("--cuda-graphs/--no-cuda-graphs", default=True, show_default=True, help=CUDA_GRAPHS_HELP)
@device_options
@offline_option
@json_option
@batch_size_hint
def decode(tokens, out, model, grid_sheet, cols, limit, batch_size, compile_, channels_last, cuda_graphs, device, dtype, offline,
           as_json):
    """Decode TOKENS back into images.

    TOKENS is a token folder (from `regvq encode`), a single shard file, or '-' for JSON lines of token grids
    on stdin (`[[...], ...]` or `{"tokens": [[...]], "key": "name"}`). PNGs are named after the source keys.

    \b
    regvq decode tokens/ -o recon/
    regvq decode tokens/ --limit 64 --grid -o sheet.png
    regvq decode tokens/ --limit 16 --grid -o - | display
    """
    from regvq_cli.engine.checkpoint import file_sha256, weights_path
    from regvq_cli.engine.decode import decode_source, open_tokens, recorded_tokenizer, rows_for_rank
    from regvq_cli.engine.device import pick_device, pick_dtype
    from regvq_cli.engine.dist import world_from_env
    from regvq_cli.engine.resolve import TOKENIZER
    from regvq_cli.errors import RegvqError

    if out == "-":
        if not grid_sheet:
            raise click.BadParameter("'-' writes one PNG to stdout: pass --grid for a contact sheet of the grids, or "
                                     "give a folder for one PNG each", param_hint="--out")
        check_png_to_stdout(as_json)
    elif grid_sheet and not out.lower().endswith(".png"):
        raise click.BadParameter("with --grid, OUT is the contact sheet's file name and must end in .png", param_hint="--out")
    elif grid_sheet and os.path.isdir(out):
        raise click.BadParameter(f"{out} is a folder; with --grid give the contact sheet's file name, e.g. "
                                 f"{os.path.join(out, 'sheet.png')}", param_hint="--out")
    elif not grid_sheet and os.path.exists(out) and not os.path.isdir(out):
        raise click.BadParameter(f"{out} is a file; give a folder for the PNGs, or --grid for one contact sheet",
                                 param_hint="--out")
    else:
        check_png_name(out, folder_of_pngs=not grid_sheet)
    if cols is not None and not grid_sheet:
        raise click.BadParameter("--cols lays out the contact sheet: pass --grid too", param_hint="--cols")
    source = open_tokens(tokens)  # its manifest read once, here
    rec_id, rec_sha, rec_grid, rec_codes, rec_size = recorded_tokenizer(source)
    if model is None and rec_id is None:
        raise click.UsageError("tokens on stdin carry no tokenizer: pass --model")
    try:
        tokenizer = load_model(model or rec_id, offline=offline, expect=TOKENIZER)
    except RegvqError as e:
        if model is None:
            raise RegvqError(f"the tokenizer recorded with the tokens ({rec_id}) cannot be loaded: {e}; pass --model") from None
        raise
    name = model or rec_id
    if rec_codes is not None and rec_codes != tokenizer.codebook_size:
        raise RegvqError(f"the tokens use a codebook of {rec_codes} codes but {name} has {tokenizer.codebook_size}; "
                         "decode with the tokenizer that made them")
    if rec_grid is not None:  # the grid the tokenizer makes of pictures of the size the tokens were encoded at
        size = rec_size or (tokenizer.config.image_size,) * 2
        try:
            made = tokenizer.grid_size(size)
        except RegvqError:
            made = None
        if made is None or tuple(rec_grid) != made:
            raise RegvqError(f"the tokens are {rec_grid[0]}x{rec_grid[1]} grids of {size[0]}x{size[1]} px pictures but "
                             f"{name} makes {'no whole grid' if made is None else '{}x{}'.format(*made)} of those; "
                             "decode with the tokenizer that made them")
    if rec_sha and rec_sha != file_sha256(weights_path(tokenizer.regvq_path)):
        what = (f"{model} is not the tokenizer recorded with these tokens ({rec_id})" if model is not None else
                f"{rec_id}, the tokenizer recorded with these tokens, has other weights now than when it made them")
        warn(f"{what}; images may look wrong")
    if out != "-":  # before decoding anything: a path below a file, or a folder that cannot be made, fails now
        make_output_folder(os.path.dirname(os.path.abspath(out)) if grid_sheet else out)
    dev = pick_device(device)
    if compile_:
        compiling_note("the tokenizer's decoder")
    total = rows_for_rank(source, limit, *world_from_env())  # this process's grids (None on stdin)
    with progress(desc="decode", unit="img", total=total if total is not None else limit) as bar:
        count = counted(bar, "grids")
        summary = decode_source(source, out, tokenizer, dev, pick_dtype(dtype, dev), batch_size=batch_size,
                                limit=limit, grid_sheet=grid_sheet, grid_cols=cols, stdin=sys.stdin,
                                compile=compile_, channels_last=channels_last, cuda_graphs=cuda_graphs,
                                callback=lambda n: count(n, total), grid=rec_grid)
    own = tokenizer.grid_size(tokenizer.config.image_size)
    if rec_grid is None and summary["grid"] and tuple(summary["grid"]) != own:  # stdin: grids of another size
        h, w = summary["grid"]
        f = tokenizer.downsample_factor
        warn(f"the grids were {h}x{w}, so the pictures {h * f}x{w * f} px: this tokenizer makes {own[0]}x{own[1]} "
             f"grids of its {own[0] * f} px pictures (grids from another tokenizer decode to noise)")
    renamed = summary["renamed"] if rank() == 0 else []  # every rank's, gathered: rank 0 says them once
    for item in renamed[:20]:
        warn(f"{shown(item['key'])} was written as {shown(item['file'])}: an earlier grid had its file name")
    if len(renamed) > 20:
        warn(f"... and {len(renamed) - 20} more grids written under another name (see --json)")
    if as_json:
        emit_json(summary)
    else:
        where = "stdout" if out == "-" else summary["out"]
        info(f"{where}: {plural(summary['decoded'], 'image')} decoded ({human_rate(summary['images_per_s'])})")
