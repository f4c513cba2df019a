"""Which class builds which model type.

A checkpoint names its `model_type`; this table maps it to the class, imported only when needed so that
listing models never imports torch. Every class follows one convention: class attributes `model_type` and
`config_class` (a dataclass), a constructor that takes that config, and `self.config`.
"""

from __future__ import annotations

import importlib

MODEL_TYPES = {
    "tokenizer": "regvq_cli.tokenizer.model:Tokenizer",
    "ar": "regvq_cli.priors.ar:ARPrior",
    "diffusion": "regvq_cli.priors.diffusion:DiffusionPrior",
}


def model_class(model_type: str):
    """The class for `model_type`, e.g. "tokenizer" -> Tokenizer."""
    from regvq_cli.errors import RegvqError

    target = MODEL_TYPES.get(model_type)
    if target is None:
        known = ", ".join(sorted(MODEL_TYPES))
        raise RegvqError(f"unknown model type {model_type!r} (known: {known}); is this checkpoint from a newer regvq?")
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)
