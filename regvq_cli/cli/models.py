"""`regvq models list | show | push`: the model zoo and publishing to the Hugging Face Hub."""

from __future__ import annotations

import json
from pathlib import Path

import click

from regvq_cli.cli._common import complete_model, emit_json, human_count, human_size, info, json_option, offline_option


@click.group()
def models():
    """List, show and publish models.

    A model is a folder with config.json, model.safetensors and a README.md model card.
    """


def describe_model(name: str, path: Path) -> dict:
    """One row of `models list`: read from the config and the safetensors header only (no torch)."""
    from regvq_cli.engine.checkpoint import count_parameters, read_record, weights_path

    record = read_record(path)
    cfg, extra = record["config"], record.get("info", {})
    files = [path] if path.is_file() else [p for p in path.iterdir() if p.is_file()]
    return {
        "name": name,
        "kind": record["model_type"],
        "size_bytes": sum(p.stat().st_size for p in files),
        "parameters": count_parameters(weights_path(path)),
        "codebook_size": cfg.get("codebook_size", extra.get("codebook_size")),
        "resolution": cfg.get("image_size", extra.get("image_size")),
        "grid": token_grid(cfg),
        "condition": cfg.get("cond", extra.get("cond")),
        "path": str(path),
    }


def token_grid(cfg: dict) -> list[int] | None:
    """[h, w] of the token grids a model makes (a tokenizer at its image size: a factor 2 per level after the
    first) or takes (a prior); None when its config does not say."""
    if cfg.get("grid_size"):
        return list(cfg["grid_size"])
    if cfg.get("image_size") and cfg.get("ch_mult"):
        side = cfg["image_size"] // 2 ** (len(cfg["ch_mult"]) - 1)
        return [side, side]
    return None


@models.command("list")
@json_option
def list_models(as_json):
    """List the shipped models: name, kind, size on disk, parameters, codebook size, resolution, token grid."""
    from regvq_cli.engine.resolve import shipped_model_names, shipped_models_dir

    rows = [describe_model(name, shipped_models_dir() / name) for name in shipped_model_names()]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        info("no shipped models are installed")
        return
    header = ("NAME", "KIND", "SIZE", "PARAMS", "CODES", "RES", "GRID", "COND")
    table = [header] + [
        (r["name"], r["kind"], human_size(r["size_bytes"]), human_count(r["parameters"]),
         str(r["codebook_size"] or "-"), str(r["resolution"] or "-"), "x".join(map(str, r["grid"] or [])) or "-",
         str(r["condition"] or "-"))
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


@models.command("show")
@click.argument("model", shell_complete=complete_model)
@json_option
@offline_option
def show(model, as_json, offline):
    """Print a model's config and its model card.

    MODEL is a shipped name, a folder, a .safetensors file, or a Hub id org/name[@rev].
    """
    from regvq_cli.engine.checkpoint import CARD_NAME, read_record
    from regvq_cli.engine.resolve import resolve_model

    if not model.strip():  # "" would resolve to the current folder
        raise click.BadParameter("the name is empty; give a shipped name, a folder, a .safetensors file or a Hub id",
                                 param_hint="MODEL")
    ref = resolve_model(model, offline=offline)
    record = read_record(ref.path)
    card_path = ref.path / CARD_NAME if ref.path.is_dir() else None
    card = card_path.read_text() if card_path and card_path.is_file() else None
    if as_json:
        emit_json({"id": ref.id, "path": str(ref.path), "record": record, "card": card})
        return
    click.echo(f"# {ref.id}  ({ref.path})\n")
    click.echo(json.dumps(record, indent=2, sort_keys=True))
    click.echo()
    click.echo(card if card is not None else "(no model card)")


@models.command("push")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("repo_id")
@click.option("--private", is_flag=True, help="Create the Hub repo as private.")
@click.option("--revision", default=None, help="Branch to push to (default: main).")
@click.option("--message", default=None, help="Commit message.")
@click.option("--token", envvar="HF_TOKEN", default=None, help="Hub token (default: HF_TOKEN or your saved login).")
def push(folder, repo_id, private, revision, message, token):
    """Publish a model FOLDER to the Hugging Face Hub as REPO_ID (org/name).

    Uploads config.json, model.safetensors and README.md; writes a model card first if the folder has none.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError
    from huggingface_hub.utils import validate_repo_id

    from regvq_cli.engine.checkpoint import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, default_card, read_record, read_weights
    from regvq_cli.engine.resolve import HUB_ID, network_error
    from regvq_cli.errors import RegvqError

    if not HUB_ID.match(repo_id) or "@" in repo_id:
        raise click.BadParameter("expected a Hub id like org/name", param_hint="REPO_ID")
    try:  # the Hub's own rules beside the shape ("a..b", "x--y", over 96 characters)
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise click.BadParameter(f"expected a Hub id like org/name ({str(e).splitlines()[0]})",
                                 param_hint="REPO_ID") from None
    record = read_record(folder)
    if not (folder / WEIGHTS_NAME).is_file():
        raise RegvqError(f"{folder} has no {WEIGHTS_NAME}; export the model first")
    read_weights(folder)  # every byte, not only the header: a cut-short file is no model to publish
    if not (folder / CARD_NAME).is_file():
        (folder / CARD_NAME).write_text(default_card(record, repo_id.split("/")[-1]))
        info(f"wrote a model card to {folder / CARD_NAME}")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(
            folder_path=str(folder), repo_id=repo_id, revision=revision,
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME],
            commit_message=message or f"Upload regvq {record['model_type']} model",
        )
    except HfHubHTTPError as e:
        raise RegvqError(f"push to {repo_id} failed: {str(e).splitlines()[0]} (check HF_TOKEN and that you may write to it)") from None
    except Exception as e:
        if not network_error(e):
            raise
        raise RegvqError(f"push to {repo_id} failed: cannot reach the Hugging Face Hub ({str(e).splitlines()[0]}); "
                         "check your network and HF_ENDPOINT") from None
    click.echo(getattr(commit, "commit_url", None) or str(commit))
