"""`regvq shards info | verify | merge`: inspect, check and finish token folders."""

from __future__ import annotations

import json

import click

from regvq_cli.cli._common import emit_json, info, json_option


@click.group()
def shards():
    """Inspect, check and finish token folders written by `regvq encode`."""


@shards.command("info")
@click.argument("tokens", type=click.Path(exists=True))
@click.option("--top", type=click.IntRange(0), default=10, show_default=True, help="How many of the most used codes to list.")
@json_option
def info_cmd(tokens, top, as_json):
    """Counts, grid, codebook, tokenizer and code usage of a token folder or shard file."""
    from regvq_cli.data.shards import info as shard_info

    data = shard_info(tokens, top=top)
    if as_json:
        emit_json(data)
        return
    tok = data.get("tokenizer", {})
    rows = [
        ("rows", f"{data['rows']} in {data['shards']} shard(s)" + (f", {data['skipped']} inputs skipped" if "skipped" in data else "")),
        ("grid", "x".join(map(str, data["grid"]))),
        ("codebook", f"{data['codebook_size']} codes, {data['used_codes']} used ({100 * data['usage']:.1f}%), perplexity {data['perplexity']:.1f}"),
        ("fields", ", ".join(data["fields"])),
    ]
    if data["label_names"]:
        names = data["label_names"]
        rows.append(("labels", f"{len(names)} classes: " + ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")))
    if data.get("preprocessing"):
        rows.append(("pictures", ", ".join(f"{k} {json.dumps(v)}" for k, v in data["preprocessing"].items())))
    if tok:
        rows.append(("tokenizer", f"{tok.get('id')} (sha256 {str(tok.get('sha256'))[:12]}...)"))
    if data["top_codes"]:
        rows.append(("top codes", ", ".join(f"{c}:{n}" for c, n in data["top_codes"])))
    for name, value in rows:
        click.echo(f"{name:10} {value}")


@shards.command()
@click.argument("tokens", type=click.Path(exists=True, file_okay=False))
@click.option("--no-tokens", is_flag=True, help="Skip the token-range check (faster on huge folders).")
@json_option
def verify(tokens, no_tokens, as_json):
    """Check every shard's sha256, count and tokens against the manifest; exit 1 on any problem."""
    from regvq_cli.data.shards import read_manifest, verify as verify_folder
    from regvq_cli.errors import RegvqError

    try:
        read_manifest(tokens)
    except RegvqError:  # no manifest to check against: its message says what to run
        if not as_json:
            raise
    problems = verify_folder(tokens, check_tokens=not no_tokens)
    if as_json:
        emit_json({"ok": not problems, "problems": problems})
        if problems:
            raise click.exceptions.Exit(1)
        return
    for p in problems:  # the result: one problem a line on stdout
        click.echo(p)
    if not problems:
        info(f"{tokens}: ok")
        return
    raise RegvqError(f"{len(problems)} problem{'s' if len(problems) > 1 else ''} in {tokens} (listed above): the "
                     "`regvq encode` command that wrote it, run again, encodes the shards that are missing or differ "
                     "from the manifest again")


@shards.command()
@click.argument("tokens", type=click.Path(exists=True, file_okay=False))
@json_option
def merge(tokens, as_json):
    """Write the manifest of a token folder from its shards (after `encode --num-workers` jobs)."""
    from regvq_cli.data.shards import merge as merge_folder

    manifest = merge_folder(tokens)
    if as_json:
        emit_json({k: manifest[k] for k in ("count", "num_skipped", "num_inputs", "grid", "codebook_size")} | {"shards": len(manifest["shards"])})
    else:
        info(f"{tokens}: manifest written: {manifest['count']} rows in {len(manifest['shards'])} shards, {manifest['num_skipped']} skipped")
