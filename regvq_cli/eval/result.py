"""The result of `regvq eval recon` / `regvq eval gen`: a JSON object with fixed keys.

    {
      "schema": "regvq-eval/1",
      "kind": "recon" | "gen",
      "metrics": {...},            # fixed keys per kind, below; null where not computed
      "protocol": {...},           # how the numbers were made, below
      "warnings": ["...", ...]     # e.g. "FID over 500 images is biased upward ..."
    }

metrics, kind "recon" (the tokenizer reconstructs every image; images in [0, 1] after 8-bit rounding):
    psnr, psnr_std          mean / std over images of per-image PSNR in dB (data range 1, i.e. 255 on
                            8-bit values); an exact copy counts as PSNR_CAP_DB so the mean stays finite
    ssim, ssim_std          per-image SSIM (Wang et al. 2004, Gaussian 11 / 1.5), mean / std
    l1, l1_std              per-image mean absolute error on the [0, 1] scale, mean / std
    rfid, rfid_biased       FID between originals and reconstructions; biased = fewer than 2049 images (the
                            covariance rank-deficient)
    kid, kid_std            KID between originals and reconstructions (mean / std over subsets; std None when
                            both sets fit one subset)
    codebook_size           N
    codebook_usage          % of codes used at least once over all encoded images
    codebook_perplexity     exp(entropy) of the code histogram, in [1, N]
    dead_codes              number of codes never used
metrics, kind "gen" (generated samples against reference images):
    fid, fid_biased, kid, kid_std, precision, recall (improved precision/recall, k = 3)
    class_agreement         where samples and references both carry class names: how often a k-NN classifier
                            over the reference features names each sample's requested class (see
                            regvq_cli.eval.gen.knn_agreement for its keys), else null
protocol (both kinds):
    n_images                images evaluated (recon: originals; gen: samples)
    n_ref                   gen: reference images; recon: null
    image_size              [H, W] the metrics saw
    resize                  how images were brought to image_size (the loader's description), or null
    feature_network         name of the FID feature network, or null when no features were computed
    feature_weights_sha256  sha256 of its weights file, or null if unknown
    feature_input_size      the size it resizes images to (299 for Inception), or null
    feature_resize          how it resizes (e.g. "bilinear"), or null
    regvq_version, torch_version
    seed                    seed of KID subsets (and of sampling, when a model made the samples)
    data, ref, model        free-form identifiers of the inputs given by the caller, or null
    sampling                gen, when a model made the samples: how it sampled them (cfg, steps, sampler,
                            temperature, top_k, top_p, batch_size; steps null: the sampler's default), else null
    quantized_8bit          always true: model outputs are rounded to 8 bits before any metric
"""

from __future__ import annotations

import json
import math

import torch

import regvq_cli
from regvq_cli.errors import RegvqError

SCHEMA = "regvq-eval/1"
PSNR_CAP_DB = 100.0

_NUM = (int, float)
_OPT_NUM = (int, float, type(None))
_OPT_BOOL = (bool, type(None))
_OPT_INT = (int, type(None))
_OPT_STR = (str, type(None))

METRIC_TYPES = {
    "recon": {
        "psnr": _NUM,
        "psnr_std": _NUM,
        "ssim": _NUM,
        "ssim_std": _NUM,
        "l1": _NUM,
        "l1_std": _NUM,
        "rfid": _OPT_NUM,
        "rfid_biased": _OPT_BOOL,
        "kid": _OPT_NUM,
        "kid_std": _OPT_NUM,
        "codebook_size": _OPT_INT,
        "codebook_usage": _OPT_NUM,
        "codebook_perplexity": _OPT_NUM,
        "dead_codes": _OPT_INT,
    },
    "gen": {
        "fid": _OPT_NUM,
        "fid_biased": _OPT_BOOL,
        "kid": _OPT_NUM,
        "kid_std": _OPT_NUM,
        "precision": _OPT_NUM,
        "recall": _OPT_NUM,
        "class_agreement": (dict, type(None)),
    },
}

PROTOCOL_TYPES = {
    "n_images": (int,),
    "n_ref": _OPT_INT,
    "image_size": (list, type(None)),
    "resize": _OPT_STR,
    "feature_network": _OPT_STR,
    "feature_weights_sha256": _OPT_STR,
    "feature_input_size": _OPT_INT,
    "feature_resize": _OPT_STR,
    "regvq_version": (str,),
    "torch_version": (str,),
    "seed": (int,),
    "data": _OPT_STR,
    "ref": _OPT_STR,
    "model": _OPT_STR,
    "sampling": (dict, type(None)),
    "quantized_8bit": (bool,),
}


def feature_info(feature_fn) -> dict:
    """The protocol keys that describe a feature network, read from its attributes when it has them
    (`name`, `weights_sha256`, `input_size`, `resize`); all None when feature_fn is None."""
    if feature_fn is None:
        return {"feature_network": None, "feature_weights_sha256": None, "feature_input_size": None, "feature_resize": None}
    name = getattr(feature_fn, "name", None) or getattr(feature_fn, "__name__", None) or type(feature_fn).__name__
    size = getattr(feature_fn, "input_size", None)
    if isinstance(size, (tuple, list)):  # (299, 299) -> 299 when square
        size = size[0] if len(set(size)) == 1 else None
    return {
        "feature_network": str(name),
        "feature_weights_sha256": getattr(feature_fn, "weights_sha256", None),
        "feature_input_size": None if size is None else int(size),
        "feature_resize": getattr(feature_fn, "resize", None),
    }


def make_protocol(
    *,
    n_images: int,
    image_size,
    feature_fn=None,
    resize: str | None = None,
    seed: int = 0,
    n_ref: int | None = None,
    data: str | None = None,
    ref: str | None = None,
    model: str | None = None,
    sampling: dict | None = None,
) -> dict:
    """Build the protocol block of a result (and of cached feature statistics)."""
    if image_size is not None:
        image_size = [int(image_size), int(image_size)] if isinstance(image_size, int) else [int(s) for s in image_size]
    return {
        "n_images": int(n_images),
        "n_ref": None if n_ref is None else int(n_ref),
        "image_size": image_size,
        "resize": resize,
        **feature_info(feature_fn),
        "regvq_version": regvq_cli.__version__,
        "torch_version": torch.__version__.split("+")[0],
        "seed": int(seed),
        "data": None if data is None else str(data),
        "ref": None if ref is None else str(ref),
        "model": None if model is None else str(model),
        "sampling": None if sampling is None else dict(sampling),
        "quantized_8bit": True,
    }


def make_result(kind: str, metrics: dict, protocol: dict, warnings: list[str]) -> dict:
    """Assemble and validate a result."""
    result = {"schema": SCHEMA, "kind": kind, "metrics": metrics, "protocol": protocol, "warnings": list(warnings)}
    validate_result(result)
    return result


def _check_block(block, types: dict, where: str) -> None:
    if not isinstance(block, dict):
        raise RegvqError(f"{where} must be an object, got {type(block).__name__}")
    missing, extra = set(types) - set(block), set(block) - set(types)
    if missing or extra:
        raise RegvqError(f"{where} keys differ from the schema: missing {sorted(missing)}, unexpected {sorted(extra)}")
    for key, allowed in types.items():
        value = block[key]
        # bool is an int in Python; a number field must not hold a bool, nor a bool field a number
        ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
        if not ok:
            raise RegvqError(f"{where}.{key} has type {type(value).__name__}, expected {'/'.join(t.__name__ for t in allowed)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise RegvqError(f"{where}.{key} is {value}, which JSON cannot hold")


def validate_result(result: dict) -> None:
    """Raise RegvqError unless `result` follows the schema above exactly (and survives JSON)."""
    if not isinstance(result, dict):
        raise RegvqError(f"an evaluation result must be an object, got {type(result).__name__}")
    top = {"schema", "kind", "metrics", "protocol", "warnings"}
    if set(result) != top:
        raise RegvqError(f"result keys {sorted(result)} differ from the schema {sorted(top)}")
    if result["schema"] != SCHEMA:
        raise RegvqError(f"result schema {result['schema']!r}, expected {SCHEMA!r}")
    if result["kind"] not in METRIC_TYPES:
        raise RegvqError(f"result kind {result['kind']!r}, expected one of {sorted(METRIC_TYPES)}")
    _check_block(result["metrics"], METRIC_TYPES[result["kind"]], "metrics")
    _check_block(result["protocol"], PROTOCOL_TYPES, "protocol")
    size = result["protocol"]["image_size"]
    if size is not None and (len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in size)):
        raise RegvqError(f"protocol.image_size must be [H, W], got {size}")
    if not isinstance(result["warnings"], list) or not all(isinstance(w, str) for w in result["warnings"]):
        raise RegvqError("result warnings must be a list of strings")
    json.dumps(result, allow_nan=False)
