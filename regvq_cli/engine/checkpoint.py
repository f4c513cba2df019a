"""The model format: one save/load pair for every model type.

A model is a folder:

    config.json          {"format": "regvq-model", "format_version": 1, "model_type": ..., "config": {...},
                          "info": {...}, "regvq_version": ...}
    model.safetensors    the weights; the same JSON is stored in its metadata under "regvq"
    README.md            the model card

so a lone `.safetensors` file is self-describing. Weights only ever come from safetensors. Loading is strict:
a missing or unexpected tensor is an error that names it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import types
import typing
from pathlib import Path

from regvq_cli import __version__
from regvq_cli.errors import RegvqError

FORMAT = "regvq-model"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"


def model_record(model, info: dict | None = None) -> dict:
    """The JSON record that describes `model`: type, every constructor argument, and free-form info."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_type": model.model_type,
        "config": dataclasses.asdict(model.config),
        "info": dict(info or {}),
        "regvq_version": __version__,
    }


def save_model(model, folder, card: str | None = None, info: dict | None = None, dtype=None) -> Path:
    """Write `model` as a model folder (config.json, model.safetensors, README.md) and return the folder.

    `dtype` (e.g. torch.bfloat16) stores floating-point weights in that type; they are cast back on load.
    """
    import torch
    from safetensors.torch import save_model as st_save_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record = model_record(model, info)
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    if dtype is not None:
        model = copy.deepcopy(model).to("cpu")
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                t.data = t.data.to(dtype)
    _atomic_write(folder / CONFIG_NAME, text.encode())
    tmp = folder / f".{WEIGHTS_NAME}.tmp"
    with torch.no_grad():
        st_save_model(model, str(tmp), metadata={"regvq": json.dumps(record, sort_keys=True)},
                      force_contiguous=True)  # e.g. a model trained with channels-last weights
    usual_permissions(tmp)
    os.replace(tmp, folder / WEIGHTS_NAME)
    if card is None and not (folder / CARD_NAME).exists():
        card = default_card(record, folder.name)
    if card is not None:
        _atomic_write(folder / CARD_NAME, card.encode())
    return folder


def default_card(record: dict, name: str) -> str:
    """A minimal model card, used when none is given: what the model is and its full config."""
    lines = [
        "---",
        "library_name: regvq",
        f"tags: [regvq, {record['model_type']}]",
        "---",
        "",
        f"# {name}",
        "",
        f"A regvq `{record['model_type']}` model (regvq {record.get('regvq_version', '?')}).",
        "",
        "## Config",
        "",
        "```json",
        json.dumps(record["config"], indent=2, sort_keys=True),
        "```",
    ]
    if record.get("info"):
        lines += ["", "## Info", "", "```json", json.dumps(record["info"], indent=2, sort_keys=True), "```"]
    return "\n".join(lines) + "\n"


def read_record(path) -> dict:
    """The model record of a model folder or a `.safetensors` file, checked; no torch needed."""
    path = Path(path)
    if path.is_dir():
        cfg = path / CONFIG_NAME
        if cfg.is_file():
            try:
                record = json.loads(cfg.read_text())
            except (OSError, ValueError) as e:
                raise RegvqError(f"{cfg}: not valid JSON ({e}); re-export the model or restore the file") from None
        elif (path / WEIGHTS_NAME).is_file():
            record = _record_from_safetensors(path / WEIGHTS_NAME)
        else:
            raise RegvqError(f"{path} is not a model folder: it has no {CONFIG_NAME} and no {WEIGHTS_NAME}"
                             f"{_run_folder_hint(path)}")
    else:
        record = _record_from_safetensors(path)
    return check_record(record, str(path))


def _run_folder_hint(path: Path) -> str:
    """For a training run's folder given where a model is wanted: where the run's model is, or that it has none yet
    (the training commands export it to RUN/model when they finish; RUN/state.pt is their resume state)."""
    model = path / "model"
    if (model / CONFIG_NAME).is_file() or (model / WEIGHTS_NAME).is_file():
        return f"; it is a training run's folder: its model is {model}"
    if (path / "state.pt").is_file():
        return "; it is a training run's folder, and the run has not exported its model yet (it does when it finishes)"
    return ""


def check_record(record, where: str) -> dict:
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise RegvqError(f"{where}: not a regvq model (its config has no \"format\": \"{FORMAT}\")")
    version = record.get("format_version")
    if not isinstance(version, int):
        raise RegvqError(f"{where}: the config has no integer format_version")
    if version > FORMAT_VERSION:
        raise RegvqError(
            f"{where}: model format version {version} is newer than this regvq understands ({FORMAT_VERSION}); "
            "upgrade regvq (pip install -U regvq)"
        )
    for key, kind in (("model_type", str), ("config", dict)):
        if not isinstance(record.get(key), kind):
            raise RegvqError(f"{where}: the config lacks a valid {key!r}")
    record.setdefault("info", {})
    return record


def _record_from_safetensors(path: Path) -> dict:
    meta = safetensors_header(path).get("__metadata__") or {}
    if "regvq" not in meta:
        raise RegvqError(f"{path}: this safetensors file carries no regvq config; pass its model folder instead")
    try:
        return json.loads(meta["regvq"])
    except ValueError as e:
        raise RegvqError(f"{path}: the regvq config in its metadata is not valid JSON ({e})") from None


def safetensors_header(path) -> dict:
    """The JSON header of a safetensors file (tensor names, dtypes, shapes, metadata), read without torch."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size_bytes = f.read(8)
            if len(size_bytes) < 8:
                raise ValueError("file too short")
            n = int.from_bytes(size_bytes, "little")
            if n > 100_000_000:
                raise ValueError("header too large")
            header = json.loads(f.read(n))
    except OSError as e:
        raise RegvqError(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise RegvqError(f"{path} is not a valid safetensors file ({e})") from None
    if not isinstance(header, dict):
        raise RegvqError(f"{path} is not a valid safetensors file (bad header)")
    return header


def count_parameters(path) -> int:
    """Number of values stored in a safetensors file (parameters and buffers), from its header alone."""
    total = 0
    for name, entry in safetensors_header(path).items():
        if name != "__metadata__":
            n = 1
            for d in entry["shape"]:
                n *= d
            total += n
    return total


def weights_path(path) -> Path:
    path = Path(path)
    return path / WEIGHTS_NAME if path.is_dir() else path


def build_model(record: dict):
    """An untrained model of the record's type and config (random weights)."""
    cls = _class_for(record)
    config = config_from_dict(cls.config_class, record["config"], record["model_type"])
    try:
        return cls(config)
    except (TypeError, ValueError, RuntimeError) as e:  # values of the right types that make no model (sizes < 0)
        raise RegvqError(f"invalid {record['model_type']} config: {str(e).splitlines()[0] if str(e) else e!r}") from None


def config_from_dict(config_class, data: dict, what: str = "model"):
    names = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise RegvqError(
            f"the {what} config has unknown fields {', '.join(unknown)}; it was written by a newer regvq: upgrade regvq"
        )
    hints = typing.get_type_hints(config_class)
    for name, value in data.items():
        if not _of_type(value, hints[name]):
            raise RegvqError(f"invalid {what} config: {name} is {value!r} ({type(value).__name__}), where it takes "
                             f"{_type_name(hints[name])}")
    try:
        return config_class(**data)
    except (TypeError, ValueError) as e:
        raise RegvqError(f"invalid {what} config: {e}") from None


def _of_type(value, hint) -> bool:
    """Whether a config.json value fits a config field's annotation (JSON arrays stand for tuples, ints for floats);
    annotations of other kinds are not checked."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_of_type(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_of_type(v, args[0]) for v in value)
        return len(value) == len(args) and all(_of_type(v, a) for v, a in zip(value, args))
    return True


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) if typing.get_origin(hint) is None else str(hint).replace("typing.", "")


def _class_for(record: dict):
    from regvq_cli.engine.registry import model_class

    return model_class(record["model_type"])


def read_weights(path) -> dict:
    """The tensors of a model folder's or file's weights, every byte read: a RegvqError for a missing, cut-short
    or corrupt file."""
    from safetensors.torch import load_file

    wpath = weights_path(path)
    try:
        return load_file(str(wpath))
    except FileNotFoundError:
        raise RegvqError(f"{path}: weights file {wpath.name} is missing") from None
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise RegvqError(f"{wpath}: cannot read the weights ({e}); the file may be truncated or corrupt") from None


def load_model(path, device=None, dtype=None):
    """Load a model folder or `.safetensors` file: build it from its config, then load the weights strictly.

    Returns the model in eval mode on `device` (default cpu), floating-point weights in `dtype` if given.
    """
    path = Path(path)
    record = read_record(path)
    model = build_model(record)
    state = read_weights(path)
    load_state_strict(model, state, str(weights_path(path)))
    model.eval()
    if dtype is not None:
        model.to(dtype=dtype)
    if device is not None:
        model.to(device)
    model.requires_grad_(False)
    model.regvq_record = record
    return model


def load_state_strict(model, state: dict, where: str) -> None:
    """Copy `state` into `model`, refusing any missing, unexpected or mis-shaped tensor by name.

    Tensors that the model shares (tied weights) are stored once by safetensors; any one name of a tied group
    counts for all of them.
    """
    expected = model.state_dict()
    tied = _tied_groups(expected)
    missing = [k for k in expected if k not in state and not any(o in state for o in tied.get(k, ()))]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else ""))
        if unexpected:
            parts.append("unexpected " + ", ".join(unexpected[:8]) + (" ..." if len(unexpected) > 8 else ""))
        raise RegvqError(f"{where}: weights do not match the model config: {'; '.join(parts)}")
    for k, t in state.items():
        if tuple(t.shape) != tuple(expected[k].shape):
            raise RegvqError(
                f"{where}: tensor {k} has shape {tuple(t.shape)}, the config expects {tuple(expected[k].shape)}"
            )
    full = dict(state)
    for k in expected:
        if k not in full:
            full[k] = next(state[o] for o in tied[k] if o in state)
    model.load_state_dict(full, strict=True)


def _tied_groups(state: dict) -> dict:
    by_ptr: dict = {}
    for k, t in state.items():
        if t.numel():
            by_ptr.setdefault((t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)), []).append(k)
    return {k: [o for o in names if o != k] for names in by_ptr.values() if len(names) > 1 for k in names}


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def usual_permissions(path) -> None:
    """Give a file written by safetensors, which makes it readable by its owner alone (0600), the permissions
    of any file this process makes (0644 under the usual umask 022): an exported model is for others to load."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
