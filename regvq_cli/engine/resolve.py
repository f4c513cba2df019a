"""One resolver for every `--model`: a shipped model name, a local folder, a `.safetensors` file, or a
Hugging Face Hub id `org/name[@revision]`.

Resolution never imports torch; it returns where the files are, and `checkpoint.load_model` loads them.
Pickle checkpoints (`.pt`, `.ckpt`, ...) are refused: weights only ever come from safetensors.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from regvq_cli.engine.checkpoint import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, read_record
from regvq_cli.errors import RegvqError

# The embedded default models, used when a command gets no --model.
DEFAULT_TOKENIZER = "regvq-tokenizer"
DEFAULT_TEXT_PRIOR = "regvq-text2img"
DEFAULT_SEGMAP_PRIOR = "regvq-seg2img"

PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


@dataclass(frozen=True)
class ResolvedModel:
    id: str  # how to name it in manifests and cards: the shipped name, the Hub id@revision, or the path
    path: Path  # a model folder or a .safetensors file
    source: str  # "shipped", "local" or "hub"


def shipped_models_dir() -> Path | None:
    """Where the shipped model folders are: inside the installed package, or `models/` of a source checkout."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "_models", package.parent / "models"):
        if candidate.is_dir():
            return candidate
    return None


def shipped_model_names() -> list[str]:
    root = shipped_models_dir()
    if root is None:
        return []
    return sorted(p.name for p in root.iterdir() if (p / CONFIG_NAME).is_file() and (p / WEIGHTS_NAME).is_file())


def resolve_model(spec: str, offline: bool = False) -> ResolvedModel:
    """Find the model that `spec` names; raise RegvqError with what to do when it cannot be found."""
    spec = str(spec)
    if not spec.strip():
        raise RegvqError("an empty model name: give a shipped model's name, a model folder, a .safetensors file or "
                         "a Hub id org/name[@revision]")
    path = Path(spec).expanduser()
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise RegvqError(
            f"{spec}: refusing a pickle checkpoint ({path.suffix}): pickle files can run code when loaded; "
            "regvq loads weights only from safetensors model folders"
        )
    shipped = spec in shipped_model_names()
    if path.exists():
        try:  # fail early and clearly on a folder or file that is not a regvq model
            if not (path.is_dir() or path.suffix == ".safetensors"):
                raise RegvqError(f"{spec}: not a model folder or a .safetensors file")
            read_record(path)
            return ResolvedModel(str(path.resolve()), path, "local")
        except RegvqError:
            if not shipped:  # else a folder or file here that only bears a shipped model's name (the default's)
                raise
    if shipped:
        return ResolvedModel(spec, shipped_models_dir() / spec, "shipped")
    if HUB_ID.match(spec):
        try:
            return _resolve_hub(spec, offline)
        except RegvqError as e:
            if path.parent != Path(".") and path.parent.is_dir():  # "runs/model" with a runs/ here: meant as a path?
                raise RegvqError(f"{e}; nor is there a file or folder {spec} (check the path)") from None
            raise
    if spec in (DEFAULT_TOKENIZER, DEFAULT_TEXT_PRIOR, DEFAULT_SEGMAP_PRIOR):
        raise RegvqError(
            f"this regvq has no embedded default model {spec!r}: pass --model (a model folder, a .safetensors "
            "file or a Hub id), e.g. one exported by `regvq train-tokenizer` / `regvq train-prior`"
        )
    names = ", ".join(shipped_model_names()) or "none installed"
    raise RegvqError(
        f"no model {spec!r}: not a shipped model ({names}), an existing folder or .safetensors file, "
        "or a Hub id org/name[@revision]"
    )


# the HTTP stacks huggingface_hub has used; an exception of theirs that is not an HTTP status (those are
# HfHubHTTPError) means the Hub could not be reached
TRANSPORTS = {"httpx", "httpx2", "httpcore", "httpcore2", "requests", "urllib3"}


def network_error(e: BaseException) -> bool:
    """Whether `e` says the network failed (refused, unresolved, timed out), in whichever HTTP stack raised it."""
    return isinstance(e, (ConnectionError, TimeoutError)) or any(
        cls.__module__.split(".")[0] in TRANSPORTS for cls in type(e).__mro__)


def _resolve_hub(spec: str, offline: bool) -> ResolvedModel:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (HfHubHTTPError, HFValidationError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    repo_id, _, revision = spec.partition("@")
    offline = offline or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision or None,
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME],
            local_files_only=offline,
        )
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise RegvqError(f"{spec}: no such model on the Hub (check the id and revision, and your HF token)") from None
    except HFValidationError as e:  # a name the Hub does not allow ("a..b", "x--y", over 96 characters)
        raise RegvqError(f"{spec}: not a valid Hub id ({str(e).splitlines()[0]})") from None
    except LocalEntryNotFoundError:
        if offline:
            raise RegvqError(
                f"{spec} is not in the Hugging Face cache and offline mode is on; run once online "
                "(without --offline / HF_HUB_OFFLINE) to download it"
            ) from None
        raise RegvqError(f"{spec}: cannot reach the Hugging Face Hub and the model is not cached; check your network") from None
    except HfHubHTTPError as e:
        raise RegvqError(f"{spec}: the Hub refused the download ({e.__class__.__name__}: {str(e).splitlines()[0]})") from None
    folder = Path(folder)
    if not (folder / WEIGHTS_NAME).is_file():
        raise RegvqError(f"{spec}: the Hub repo has no {WEIGHTS_NAME}; is it a regvq model?")
    read_record(folder)
    return ResolvedModel(spec, folder, "hub")


TOKENIZER = ("tokenizer",)
PRIOR = ("ar", "diffusion")


def load(spec: str, device=None, dtype=None, offline: bool = False, expect: tuple[str, ...] | None = None):
    """Resolve and load in one step; the model carries `.regvq_id` and `.regvq_path`.

    `expect`: the model types the caller can use (e.g. TOKENIZER or PRIOR); another type is a clear error.
    """
    from regvq_cli.engine.checkpoint import load_model

    ref = resolve_model(spec, offline=offline)
    if expect is not None:
        kind = read_record(ref.path)["model_type"]
        if kind not in expect:
            want = "a tokenizer (from `regvq train-tokenizer`)" if expect == TOKENIZER else \
                "a prior (from `regvq train-prior`)" if expect == PRIOR else " or ".join(expect)
            kind = kind or "untyped"
            raise RegvqError(f"{spec} is {'an' if kind[0] in 'aeiou' else 'a'} {kind} model; this command needs {want}")
    model = load_model(ref.path, device=device, dtype=dtype)
    model.regvq_id = ref.id
    model.regvq_path = ref.path
    return model
